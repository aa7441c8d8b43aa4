"""`deployc build` of the vertex and azureml examples on a trained copy of the digits model."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, run_deployc


@pytest.mark.parametrize(("example", "folder"), [("vertex", "vertex"), ("azureml", "azureml")])
def test_example_builds(example: str, folder: str, trained_digits: Path, session_cache: Path,
                        tmp_path: Path) -> None:
    project = tmp_path / example
    shutil.copytree(trained_digits, project)
    spec = (ROOT / "examples" / example / "deploy.yaml").read_text()
    (project / "deploy.yaml").write_text(spec.replace("targets:", "measure: {min_seconds: 0.1}\ntargets:", 1))
    out = tmp_path / "out"
    proc = run_deployc("build", "deploy.yaml", "--out", str(out), cwd=project, cache_dir=session_cache)
    assert proc.returncode == 0, proc.stderr
    model = (out / folder / "model" / "model.onnx").read_bytes()
    assert model == (out / "local" / "model.onnx").read_bytes()  # the verified artifact
    serving = json.loads((out / folder / "model" / "serving.json").read_text())
    assert serving["model"]["sha256"] == hashlib.sha256(model).hexdigest()
    assert serving["model"]["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    assert (serving["server"]["host"], serving["server"]["port"]) == ("0.0.0.0", 8080)
    manifest = json.loads((out / "manifest.json").read_text())
    assert f"{folder}/model/model.onnx" in manifest["files"]
    if example == "vertex":
        upload = json.loads((out / "vertex" / "model-upload.json").read_text())
        assert upload["model"]["artifactUri"] == f"gs://example-ml-artifacts/models/digits-vertex/{upload['modelId']}"
        assert set(manifest["files"]) >= {"vertex/deploy.sh", "vertex/deploy-model.json", "vertex/endpoint.json"}
    else:
        assert (out / "azureml" / "deployment.yml").read_text().count("path: /invocations") == 1
        assert set(manifest["files"]) >= {"azureml/endpoint.yml", "azureml/README.md", "azureml/Dockerfile"}
