"""A third-party pass, registered through the `deployc.passes` entry point group of its own distribution.

The distribution is test data (tests/plugins/pass_plugin: the `deployc_stamp` module and its
`deployc_stamp-1.2.3.dist-info` with METADATA and entry_points.txt), installed only by being on the PYTHONPATH of
the deployc process. Its pass writes a metadata entry into the ONNX model; its `check` refuses reserved keys.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from aws_support import tiny_onnx_project
from conftest import ROOT, run_deployc

PLUGIN = Path(__file__).parent / "plugins" / "pass_plugin"
DIST_INFO = "deployc_stamp-1.2.3.dist-info"
SPEC = """\
apiVersion: deployc/v1
name: stamped
model: {path: model.onnx}
data:
  eval: {path: eval.npz, x: x, y: y}
optimize:
  - stamp: {key: KEY, value: reviewed by the plugin}
measure: {min_seconds: 0.05}
targets:
  local:
"""


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    """A copy of the plugin distribution (so a test can change its version)."""
    dst = tmp_path / "site"
    shutil.copytree(PLUGIN, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return tiny_onnx_project(tmp_path / "project", 32, SPEC.replace("KEY", "reviewer"))


def deployc(plugin: Path, *args: str, cwd: Path, cache: Path) -> tuple[int, str, str]:
    r = run_deployc(*args, cwd=cwd, cache_dir=cache, PYTHONPATH=os.pathsep.join([str(ROOT), str(plugin)]))
    return r.returncode, r.stdout, r.stderr


def test_plugin_check_gives_a_located_error(plugin: Path, project: Path, tmp_path: Path) -> None:
    (project / "deploy.yaml").write_text(SPEC.replace("KEY", "deployc.sha"))
    rc, _, err = deployc(plugin, "validate", "deploy.yaml", cwd=project, cache=tmp_path / "cache")
    assert rc == 1
    assert err == ("deploy.yaml:7:13: optimize[0].stamp.key: 'deployc.sha': keys starting with 'deployc.' are "
                   "reserved\n")
    (project / "deploy.yaml").write_text(SPEC.replace("KEY", "reviewer").replace("stamp: {", "stamp: {colour: red, "))
    rc, _, err = deployc(plugin, "validate", "deploy.yaml", cwd=project, cache=tmp_path / "cache")
    assert rc == 1 and err.startswith("deploy.yaml:7:13: optimize[0].stamp.colour: "), err


def test_plugin_pass_is_in_the_schema_and_the_item_error(plugin: Path, project: Path, tmp_path: Path) -> None:
    rc, out, _ = deployc(plugin, "schema", cwd=project, cache=tmp_path / "cache")
    doc = json.loads(out)
    assert rc == 0 and {"$ref": "#/$defs/StampStep"} in doc["properties"]["optimize"]["items"]["oneOf"]
    assert doc["$defs"]["StampConfig"]["properties"]["key"]["description"] == (
        "The metadata_props key written into the model.")
    (project / "deploy.yaml").write_text(SPEC.replace("stamp: {key: KEY,", "stomp: {"))
    rc, _, err = deployc(plugin, "validate", "deploy.yaml", cwd=project, cache=tmp_path / "cache")
    assert rc == 1 and err == ("deploy.yaml:7:5: optimize[0]: each optimize item is one of `quantize:`, `prune:`, "
                               "`distill:`, `stamp:` with its settings\n")
    rc, _, err = deployc(PLUGIN.parent / "absent", "validate", "deploy.yaml", cwd=project, cache=tmp_path / "cache")
    assert rc == 1 and "one of `quantize:`, `prune:`, `distill:` with its settings" in err  # not installed


def test_build_runs_the_plugin_pass(plugin: Path, project: Path, tmp_path: Path) -> None:
    import onnx

    out = tmp_path / "out"
    rc, _, err = deployc(plugin, "build", "deploy.yaml", "--out", str(out), "-q", cwd=project, cache=tmp_path / "c")
    assert rc == 0, err
    model = onnx.load(str(out / "local" / "model.onnx"))
    assert {p.key: p.value for p in model.metadata_props} == {"reviewer": "reviewed by the plugin"}
    assert model.doc_string == "reviewed by the plugin"
    report = json.loads((out / "report.json").read_text())
    assert report["passes"] == [{"step": "optimize[0].stamp",
                                 "details": {"key": "reviewer", "value": "reviewed by the plugin"}}]
    step = next(s for s in report["steps"] if s["id"] == "optimize[0].stamp")
    assert step["description"] == "stamp the ONNX model (reviewer), from deployc-stamp 1.2.3"
    assert json.loads((out / "manifest.json").read_text())["versions"]["deployc-stamp"] == "1.2.3"
    shipped = [a for a in report["artifacts"] if a["artifact"] == "stamp-reviewer"]
    assert shipped and shipped[0]["evaluation"]["agreement"] == 1.0  # the stamp leaves the outputs as they were


def test_plugin_version_enters_the_step_key(plugin: Path, project: Path, tmp_path: Path) -> None:
    def keys() -> dict[str, str]:
        rc, out, err = deployc(plugin, "plan", "deploy.yaml", "--format", "json", cwd=project, cache=tmp_path / "c")
        assert rc == 0, err
        return {s["id"]: s["key"] for s in json.loads(out)["steps"]}

    before = keys()
    info = plugin / DIST_INFO
    (info / "METADATA").write_text((info / "METADATA").read_text().replace("1.2.3", "1.3.0"))
    info.rename(plugin / "deployc_stamp-1.3.0.dist-info")
    after = keys()
    assert after["source"] == before["source"] and after["reference"] == before["reference"]
    assert after["optimize[0].stamp"] != before["optimize[0].stamp"]
