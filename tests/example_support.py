"""The bundled application examples (examples/recsys, nlp, cv): trained once per session, built, served and
queried the way their users would, and compared with the original Keras model."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, deployc_env, run_deployc, session_folder
from serve_support import Server, metric_samples, metric_value

EXAMPLES = ROOT / "examples"
V2_TYPES = {"int64": "INT64", "int32": "INT32", "float32": "FP32", "bool": "BOOL"}


def trained(factory: pytest.TempPathFactory, example: str) -> Path:
    """examples/<example> trained into a session folder (model, data, labels), with its deploy.yaml timing
    briefly; never modify it."""
    def train(out: Path) -> None:
        subprocess.run([sys.executable, str(EXAMPLES / example / "train.py"), str(out)], check=True,
                       env=deployc_env(), capture_output=True, timeout=600)
        text = (EXAMPLES / example / "deploy.yaml").read_text()
        (out / "deploy.yaml").write_text(text.replace("gates:", "measure: {min_seconds: 0.1}\ngates:"))

    return session_folder(factory, f"{example}-trained", train)


def built(factory: pytest.TempPathFactory, example: str, cache: Path) -> Path:
    """The example's build folder (made once per session)."""
    def build(out: Path) -> None:
        project = out / "project"
        shutil.copytree(trained(factory, example), project)
        r = run_deployc("build", "deploy.yaml", cwd=project, cache_dir=cache)
        assert r.returncode == 0, r.stderr[-3000:]

    return session_folder(factory, f"{example}-built", build) / "project" / "build" / example


def eval_inputs(project: Path, rows: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The first `rows` eval rows by model input name (the spec's x mapping), and their labels."""
    import yaml

    spec = yaml.safe_load((project / "deploy.yaml").read_text())
    ds = spec["data"]["eval"]
    with np.load(project / ds["path"]) as npz:
        return {name: npz[key][:rows] for name, key in ds["x"].items()}, npz[ds["y"]][:rows]


def keras_predictions(project: Path, x: dict[str, np.ndarray], output: str | None, work: Path) -> np.ndarray:
    """The original model's prediction output (`output`, or its only one), in a subprocess: TensorFlow stays
    out of the test process."""
    np.savez(work / "query.npz", **x)
    code = ("import sys, numpy as np, keras; m = keras.models.load_model(sys.argv[1], compile=False); "
            "x = dict(np.load(sys.argv[2])); out = m.predict(x, verbose=0); "
            "out = (out.get(sys.argv[3]) or next(iter(out.values()))) if isinstance(out, dict) else out; "
            "np.save(sys.argv[4], np.asarray(out))")
    r = subprocess.run([sys.executable, "-c", code, str(project / "model.keras"), str(work / "query.npz"),
                        output or "", str(work / "keras.npy")], env=deployc_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return np.load(work / "keras.npy")


def v2_request(x: dict[str, np.ndarray]) -> dict[str, Any]:
    return {"inputs": [{"name": n, "shape": list(a.shape), "datatype": V2_TYPES[str(a.dtype)],
                        "data": a.ravel().tolist()} for n, a in x.items()]}


def served(build: Path, x: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray, dict[Any, float]]:
    """The local bundle served for real: the prediction output for `x` over KServe v2 JSON and over a SageMaker
    /invocations .npz body, and the /metrics samples after the v2 request."""
    with Server(build / "local") as srv:
        status, body = srv.json("POST", f"/v2/models/{name}/infer", v2_request(x))
        assert status == 200, body
        v2 = {o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"]) for o in body["outputs"]}
        snap = metric_samples(srv)
        buf = io.BytesIO()
        np.savez(buf, **x)
        status, _, raw = srv.request("POST", "/invocations", buf.getvalue(),
                                     {"Content-Type": "application/x-npz", "Accept": "application/json"})
        assert status == 200, raw[:500]
        predictions = json.loads(raw)["predictions"]
        # the example requests the platform targets ship (data.eval's first rows, every input by name)
        example = json.loads((build / "sagemaker" / "request.json").read_text())
        status, answer = srv.json("POST", "/invocations", example)
        assert status == 200 and len(answer["predictions"]) == 2, answer
        status, answer = srv.json("POST", f"/v2/models/{name}/infer",
                                  json.loads((build / "kserve" / "request.json").read_text())
                                  if (build / "kserve").is_dir() else v2_request({k: v[:2] for k, v in x.items()}))
        assert status == 200, answer
    cfg = json.loads((build / "local" / "serving.json").read_text())
    output = cfg.get("prediction") or cfg["model"]["outputs"][0]["name"]
    rows = [p[output] if isinstance(p, dict) else p for p in predictions]
    return v2[output], np.asarray(rows, dtype=np.float32).reshape(v2[output].shape), snap


def check_example(build: Path, project: Path, name: str, rows: int = 64) -> dict[str, Any]:
    """What every example must show; returns its report.json for the example's own figures."""
    report = json.loads((build / "report.json").read_text())
    assert report["gates"] and all(g["passed"] for g in report["gates"]), report["gates"]
    shipped = {a["artifact"] for a in report["artifacts"] if a["shipped"]}
    assert "tflite" in shipped and len(shipped) == 2, shipped
    cfg = json.loads((build / "local" / "serving.json").read_text())
    x, _ = eval_inputs(project, rows)
    spec_inputs = {t["name"]: t["datatype"] for t in cfg["model"]["inputs"]}
    assert spec_inputs == {n: V2_TYPES[str(a.dtype)] for n, a in x.items()}
    with tarfile.open(build / "sagemaker" / "model.tar.gz") as tar:
        member = tar.extractfile("serving.json")
        assert member is not None
        packed = json.loads(member.read())
    assert packed["model"]["inputs"] == cfg["model"]["inputs"] and packed["task"] == cfg["task"]
    tflite = json.loads((build / "tflite" / "metadata.json").read_text())
    assert sorted(t["name"] for t in tflite["inputs"]) == sorted(x)
    return report


def served_like_the_original(build: Path, project: Path, work: Path, name: str, task: str, rows: int = 64,
                             threshold: float = 0.5) -> float:
    """Serve the shipped ONNX bundle, query it, compare with the original Keras model; returns the share of
    rows whose predicted class matches the original's. The predicted-class counter must count what was
    served."""
    x, _ = eval_inputs(project, rows)
    got, via_npz, snap = served(build, x, name)
    np.testing.assert_allclose(via_npz, got, rtol=1e-5, atol=1e-6)
    cfg = json.loads((build / "local" / "serving.json").read_text())
    want = keras_predictions(project, x, cfg.get("prediction"), work).reshape(got.shape)
    if task == "binary":
        cls, ref = (got.reshape(-1) >= threshold).astype(int), (want.reshape(-1) >= threshold).astype(int)
    else:
        cls, ref = got.argmax(axis=1), want.argmax(axis=1)
    labels = [s.strip() for s in (project / "labels.txt").read_text().splitlines() if s.strip()]
    for k, label in enumerate(labels):
        assert metric_value(snap, "deployc_predictions_total", **{"class": label}) == int(np.sum(cls == k))
    return float(np.mean(cls == ref))
