"""`deployc build` of examples/kserve on the trained digits model: manifests on disk, and the folder the
InferenceService's storageUri points to is a bundle `deployc serve` (the container's command) really serves."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import example_project, run_deployc
from ruamel.yaml import YAML
from serve_support import Server

pytestmark = pytest.mark.slow


@pytest.fixture
def project(trained_digits: Path, tmp_path: Path) -> Path:
    return example_project(trained_digits, tmp_path / "kserve", "kserve")


def test_example_builds_manifests_and_a_servable_model_folder(project: Path, session_cache: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run_deployc("build", "deploy.yaml", "--out", str(out), "-q", cwd=project, cache_dir=session_cache)
    assert r.returncode == 0, r.stderr
    kserve = out / "kserve"
    assert sorted(p.relative_to(kserve).as_posix() for p in kserve.rglob("*") if p.is_file()) == [
        "inferenceservice.yaml", "kustomization.yaml", "model/labels.txt", "model/model.onnx", "model/serving.json",
        "podmonitor.yaml", "prometheusrule.yaml", "request.json"]
    yaml = YAML(typ="safe", pure=True)
    isvc = yaml.load((kserve / "inferenceservice.yaml").read_text())
    model = (kserve / "model" / "model.onnx").read_bytes()
    sha = hashlib.sha256(model).hexdigest()
    assert isvc["spec"]["predictor"]["annotations"]["deployc.dev/model-sha256"] == sha
    assert json.loads((kserve / "model" / "serving.json").read_text())["model"]["sha256"] == sha
    rules = yaml.load((kserve / "prometheusrule.yaml").read_text())
    assert rules["spec"]["groups"] == yaml.load((out / "monitoring" / "prometheus-rules.yaml").read_text())["groups"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["kserve/model/model.onnx"]["sha256"] == sha

    # what the pod runs: `deployc serve /mnt/models`, here on loopback
    x = np.load(project / "data" / "eval.npz")["x"][:4]
    with Server(kserve / "model", "--host", "127.0.0.1") as server:
        status, meta = server.json("GET", "/v2/models/digits")
        assert status == 200 and meta["inputs"][0]["name"] == "pixels"
        body = {"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        status, resp = server.json("POST", "/v2/models/digits/infer", body)
        assert status == 200
        probs = np.asarray(resp["outputs"][0]["data"]).reshape(4, 10)
        import onnxruntime as ort

        expected = ort.InferenceSession(str(kserve / "model" / "model.onnx")).run(None, {"pixels": x})[0]
        np.testing.assert_allclose(probs, expected, atol=1e-6)
        # the shipped example request: data.eval's first rows, answered as the model answers them
        example = json.loads((kserve / "request.json").read_text())
        status, resp = server.json("POST", "/v2/models/digits/infer", example)
        assert status == 200 and example["inputs"][0]["shape"] == [2, 64]
        rows = np.load(project / "data" / "eval.npz")["x"][:2]
        answer = ort.InferenceSession(str(kserve / "model" / "model.onnx")).run(None, {"pixels": rows})[0]
        np.testing.assert_allclose(np.asarray(resp["outputs"][0]["data"]).reshape(2, 10), answer, atol=1e-5)
        status, _, metrics = server.request("GET", "/metrics")  # what the PodMonitor scrapes
        assert status == 200 and b'deployc_requests_total{' in metrics
