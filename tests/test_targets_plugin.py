"""A target from a plugin distribution (tests/plugins/target_plugin: a module and its .dist-info on PYTHONPATH),
run through the real command line: its schema, its located check, its cached step and its emitted files."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from aws_support import tiny_onnx
from conftest import ROOT, run_deployc

PLUGIN = Path(__file__).parent / "plugins" / "target_plugin"
DIST_INFO = "deployc_echo-0.3.0.dist-info"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A spec folder with an ONNX model, and a private copy of the plugin (its version is changed below)."""
    shutil.copytree(PLUGIN, tmp_path / "plugin", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "work"
    work.mkdir()
    tiny_onnx(work / "model.onnx")
    write_spec(work, "hi")
    return tmp_path


def write_spec(work: Path, greeting: str) -> None:
    (work / "deploy.yaml").write_text(
        "apiVersion: deployc/v1\nname: echo-demo\nversion: 1.0.0\nmodel:\n  path: model.onnx\n"
        f"targets:\n  echo:\n    greeting: {json.dumps(greeting)}\n    repeat: 2\n")


def deployc(project: Path, *args: str) -> tuple[int, str, str]:
    env = {"PYTHONPATH": os.pathsep.join([str(project / "plugin"), str(ROOT)])}
    proc = run_deployc(*args, cwd=project / "work", cache_dir=project / "cache", timeout=300, **env)
    return proc.returncode, proc.stdout, proc.stderr


def test_validate_reports_the_plugins_check_at_its_position(project: Path) -> None:
    code, _, err = deployc(project, "validate", "deploy.yaml")
    assert code == 0, err
    write_spec(project / "work", "!hi")
    code, _, err = deployc(project, "validate", "deploy.yaml")
    assert code == 1 and "Traceback" not in err
    assert "deploy.yaml:8:5: targets.echo.greeting: echo: a greeting may not start with '!'" in err
    (project / "work" / "deploy.yaml").write_text(
        (project / "work" / "deploy.yaml").read_text().replace("repeat: 2", "repeat: 20"))
    code, _, err = deployc(project, "validate", "deploy.yaml")
    assert code == 1 and "targets.echo.repeat:" in err  # the plugin's config model validates its fields


def test_schema_documents_the_plugin_target(project: Path) -> None:
    code, out, err = deployc(project, "schema")
    assert code == 0, err
    doc = json.loads(out)
    echo = doc["$defs"]["Targets"]["properties"]["echo"]
    assert echo["description"].startswith("Echo: a greeting")
    assert doc["$defs"]["EchoConfig"]["properties"]["greeting"]["description"] == "The text echo/greeting.txt holds."


def test_build_emits_the_plugins_files_and_its_version_keys_its_step(project: Path) -> None:
    code, _, err = deployc(project, "build", "deploy.yaml", "--out", "out", "-q")
    assert code == 0, err
    out = project / "work" / "out"
    assert (out / "echo" / "greeting.txt").read_text() == "hi\nhi\n"
    model = json.loads((out / "echo" / "model.json").read_text())
    assert model["bytes"] > 0 and len(model["sha256"]) == 64  # what the plugin's own step measured
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"echo/greeting.txt", "echo/model.json"} <= set(manifest["files"])
    assert manifest["versions"]["deployc-echo"] == "0.3.0"  # which plugin release made these files

    def size_step() -> dict[str, object]:
        code, plan, err = deployc(project, "plan", "deploy.yaml", "--format", "json")
        assert code == 0, err
        (step,) = [s for s in json.loads(plan)["steps"] if s["id"] == "echo:size"]
        return step

    before = size_step()
    assert before["cached"] is True
    metadata = project / "plugin" / DIST_INFO / "METADATA"
    metadata.write_text(metadata.read_text().replace("Version: 0.3.0", "Version: 0.4.0"))
    after = size_step()  # an upgraded plugin: its step's key changes, so the build runs it again
    assert after["key"] != before["key"] and after["cached"] is False


def test_a_plugin_that_cannot_be_loaded_is_named_without_a_traceback(project: Path) -> None:
    bad = project / "plugin" / "deployc_broken-0.1.dist-info"
    bad.mkdir()
    (bad / "METADATA").write_text("Metadata-Version: 2.1\nName: deployc-broken\nVersion: 0.1\n")
    (bad / "entry_points.txt").write_text("[deployc.targets]\nbroken = deployc_no_such_module:Thing\n")
    for args in (("validate", "deploy.yaml"), ("schema",)):
        code, _, err = deployc(project, *args)
        assert code == 1 and "Traceback" not in err
        assert "plugin 'broken' (deployc_no_such_module:Thing, from deployc-broken 0.1) cannot be loaded" in err
