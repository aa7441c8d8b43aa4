"""The command line: exit codes, no heavy imports on the fast commands, the shipped JSON Schema."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from aws_support import tiny_onnx
from conftest import ROOT, deployc_env, run_deployc

SPECS = Path(__file__).parent / "specs"
HEAVY = ("tensorflow", "onnxruntime", "keras", "tf2onnx", "boto3", "onnx", "openvino", "nncf")


@pytest.mark.parametrize("argv", [
    ["--help"], ["schema"], ["validate", str(SPECS / "good" / "full.yaml")],
    ["plan", str(SPECS / "good" / "full.yaml")], ["validate", str(SPECS / "bad" / "wrong-type.yaml")],
])
def test_fast_commands_import_no_heavy_library(argv: list[str], tmp_path: Path) -> None:
    code = (f"import sys, runpy\nsys.argv = ['deployc'] + {argv!r}\n"
            "try:\n    runpy.run_module('deployc', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\nprint('HEAVY', heavy, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], env=deployc_env(tmp_path / "cache"), capture_output=True,
                       text=True, timeout=120)
    assert "HEAVY []" in r.stderr, r.stderr[-2000:]


def test_exit_codes() -> None:
    assert run_deployc("validate", str(SPECS / "good" / "minimal.yaml")).returncode == 0
    assert run_deployc("validate", str(SPECS / "bad" / "unknown-field.yaml")).returncode == 1
    assert run_deployc("validate", "no/such/deploy.yaml").returncode == 1
    usage = run_deployc("frobnicate")
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
    assert run_deployc("validate").returncode == 2


def test_version() -> None:
    r = run_deployc("--version")
    assert r.returncode == 0 and r.stdout.strip().startswith("deployc 0.")


def test_missing_file_message() -> None:
    r = run_deployc("validate", "nowhere/deploy.yaml")
    assert r.stderr == "nowhere/deploy.yaml:1:1: no such file\n"


def test_validate_json_format() -> None:
    ok = run_deployc("validate", str(SPECS / "good" / "minimal.yaml"), "--format", "json")
    assert json.loads(ok.stdout) == {"ok": True, "name": "minimal", "version": "0.0.0"}
    bad = run_deployc("validate", "unknown-field.yaml", "--format", "json", cwd=SPECS / "bad")
    doc = json.loads(bad.stdout)
    assert bad.returncode == 1 and doc["ok"] is False and doc["error"] == "SpecError"
    assert doc["messages"][0] == "unknown-field.yaml:5:3: model.weights: unknown field"


def test_shipped_schema_is_current() -> None:
    r = run_deployc("schema")
    shipped = (ROOT / "deployc" / "schema" / "deploy.schema.json").read_text()
    assert r.stdout == shipped, "deploy.schema.json is stale: run `make schema`"
    doc = json.loads(shipped)
    assert doc["additionalProperties"] is False and {"apiVersion", "name", "model"} <= set(doc["required"])
    assert "description" in doc["$defs"]["Gates"]["properties"]["min_agreement"]


def test_plan_lists_steps_with_keys(tmp_path: Path) -> None:
    r = run_deployc("plan", str(SPECS / "good" / "full.yaml"), "--format", "json", cache_dir=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    ids = [s["id"] for s in doc["steps"]]
    assert ids[:3] == ["source", "reference", "optimize[0].distill"]
    assert ids.index("optimize[1].prune") < ids.index("convert") < ids.index("optimize[2].quantize")
    assert all(len(s["key"]) == 64 and s["cached"] is False for s in doc["steps"])
    assert len({s["key"] for s in doc["steps"]}) == len(ids)


def test_plan_key_changes_with_content(tmp_path: Path) -> None:
    spec = tmp_path / "deploy.yaml"
    tiny_onnx(tmp_path / "model.onnx")
    spec.write_text("apiVersion: deployc/v1\nname: k\nmodel: {path: model.onnx}\n"
                    "optimize: [{quantize: {mode: float16}}]\n")

    def keys() -> dict[str, str]:
        out = run_deployc("plan", str(spec), "--format", "json", cache_dir=tmp_path / "c")
        return {s["id"]: s["key"] for s in json.loads(out.stdout)["steps"]}

    first = keys()
    tiny_onnx(tmp_path / "model.onnx", scale=2.0)
    second = keys()
    assert first["source"] != second["source"] and first["optimize[0].quantize"] != second["optimize[0].quantize"]
    spec.write_text(spec.read_text().replace("float16", "int8-dynamic"))
    third = keys()
    assert third["source"] == second["source"] and third["optimize[0].quantize"] != second["optimize[0].quantize"]
