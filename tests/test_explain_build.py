"""`explain:` in the build: the original model and every artifact explained on the same rows, the attribution
gate, what serving.json and the bundle carry, and what `validate` refuses (docs/explain.md)."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_deployc

SPEC = """\
apiVersion: deployc/v1
name: digits
version: 1.0.0
model: {path: model.keras, labels: labels.txt}
data:
  eval: {path: data/eval.npz, x: x, y: y}
optimize:
  - quantize: {mode: int8-dynamic}
explain:
  method: integrated-gradients
  sample: 32
  examples: [0, 5]
  images: {pixels: [8, 8]}
  serve: {max_rows: 4}
gates:
  max_accuracy_drop: 0.02
  min_attribution_agreement: LIMIT
measure: {min_seconds: 0.05}
targets:
  local: {batching: {enabled: false}}
slos:
  - {kind: input-drift, min_rows: 50}
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(trained_digits: Path, session_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import shutil

    d = tmp_path_factory.mktemp("explained") / "digits"
    shutil.copytree(trained_digits, d)
    (d / "deploy.yaml").write_text(SPEC.replace("LIMIT", "0.5"))
    r = run_deployc("build", "deploy.yaml", "--out", str(d / "out"), "-q", cwd=d, cache_dir=session_cache)
    assert r.returncode == 0, r.stderr
    return d


def test_report_explains_reference_and_every_artifact(built: Path) -> None:
    report = json.loads((built / "out" / "report.json").read_text())
    ex = report["explanation"]
    assert ex["method"] == "integrated-gradients" and ex["sample"] == 32 and ex["images"] == {"pixels": [8, 8]}
    assert ex["features"] == [f"pixels[{i}]" for i in range(64)]
    assert ex["classes"] == [f"digit-{i}" for i in range(10)]
    assert set(ex["models"]) == {"reference", "onnx-fp32", "quantize-int8-dynamic"}
    for summary in ex["models"].values():
        assert len(summary["global"]) == 64 and len(summary["per_class"]) == 10
        assert all(len(row) == 64 for row in summary["per_class"])
        assert [e["row"] for e in summary["examples"]] == [0, 5]
        assert len(summary["top"]) == 10 and summary["top"][0]["importance"] == max(summary["global"])
    # the corner pixels of the digits are always blank: no attribution there with a zero baseline
    assert ex["models"]["reference"]["global"][0] == 0
    figures = {a["artifact"]: a["evaluation"] for a in report["artifacts"]}
    fp32 = figures["onnx-fp32"]
    # the fp32 ONNX model is the same function: central differences on it agree with TensorFlow's gradients
    assert fp32["attribution_rank_correlation"] > 0.98 and fp32["attribution_example_correlation"] > 0.99
    assert fp32["attribution_agreement"] == min(fp32["attribution_rank_correlation"],
                                                fp32["attribution_top_k_overlap"],
                                                fp32["attribution_example_correlation"])
    q = figures["quantize-int8-dynamic"]
    assert 0 <= q["attribution_agreement"] <= 1
    gate = next(g for g in report["gates"] if g["gate"] == "min_attribution_agreement")
    assert gate["value"] == q["attribution_agreement"] and gate["passed"]


def test_report_files_and_markdown(built: Path) -> None:
    out = built / "out"
    md = (out / "report.md").read_text()
    assert "## Explanation" in md and "attribution agr." in md
    assert (out / "report.html").is_file()
    charts = sorted(p.name for p in (out / "charts").glob("*.svg"))
    assert "attributions.svg" in charts
    for name in charts:
        assert f"(charts/{name})" in md


def test_bundle_serves_explanations_and_input_monitoring(built: Path) -> None:
    bundle = built / "out" / "local"
    cfg = json.loads((bundle / "serving.json").read_text())
    assert cfg["explain"] == {"method": "integrated-gradients", "steps": 32, "samples": 256, "max_rows": 4,
                              "top_k": 5, "baseline": "explain.npz",
                              "features": [f"pixels[{i}]" for i in range(64)]}
    with np.load(io.BytesIO((bundle / "explain.npz").read_bytes()), allow_pickle=False) as z:
        assert z.files == ["pixels"]
        assert z["pixels"].shape == (1, 64) and not z["pixels"].any()
    mon = cfg["input_monitor"]
    x = np.load(built / "data" / "eval.npz")["x"]
    assert mon["inputs"] == {"pixels": {"min": float(x.min()), "max": float(x.max())}}
    report = json.loads((built / "out" / "report.json").read_text())
    top = [t["feature"] for t in report["explanation"]["models"]["reference"]["top"][:5]]
    assert [f["name"] for f in mon["features"]] == top  # the explanation's most important features
    for f in mon["features"]:
        col = x[:, f["index"]]
        assert f["input"] == "pixels" and f["name"] == f"pixels[{f['index']}]"
        counts = np.bincount(np.searchsorted(f["edges"], col, side="right"), minlength=len(f["edges"]) + 1)
        assert np.allclose(f["reference"], counts / len(col))


def test_rebuild_from_an_empty_cache_is_byte_identical(built: Path, tmp_path: Path) -> None:
    r = run_deployc("build", "deploy.yaml", "--out", str(tmp_path / "again"), "-q", cwd=built,
                    cache_dir=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    for rel in ("local/serving.json", "local/explain.npz"):
        assert (tmp_path / "again" / rel).read_bytes() == (built / "out" / rel).read_bytes(), rel
    first = json.loads((built / "out" / "report.json").read_text())["explanation"]
    again = json.loads((tmp_path / "again" / "report.json").read_text())["explanation"]
    assert first == again  # explanations are deterministic (latency figures are not, so report.html differs)


def test_attribution_gate_fails_the_build(built: Path, session_cache: Path, tmp_path: Path) -> None:
    (built / "strict.yaml").write_text(SPEC.replace("LIMIT", "1.0"))
    r = run_deployc("build", "strict.yaml", "--out", str(tmp_path / "strict"), cwd=built, cache_dir=session_cache)
    assert r.returncode == 3, r.stderr
    assert re.search(r"min_attribution_agreement", r.stderr)
    assert not (tmp_path / "strict").exists()


def test_validate_names_explain_problems(trained_digits: Path, tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "digits"
    shutil.copytree(trained_digits, d)
    cases = {
        "images: {pixels: [7, 8]}": "explain.images.pixels: 7x8 = 56 pixels, and one row of pixels holds 64",
        "images: {image: [8, 8]}": "explain.images.image: the model has no input named 'image'",
        "examples: [40]": "explain.examples[0]: row 40 is outside the sample of 32 rows",
    }
    for i, (line, message) in enumerate(cases.items()):
        text = SPEC.replace("LIMIT", "0.5")
        key = line.split(":")[0]
        text = re.sub(rf"  {key}: .*\n", f"  {line}\n", text)
        (d / f"s{i}.yaml").write_text(text)
        r = run_deployc("validate", f"s{i}.yaml", cwd=d)
        assert r.returncode == 1 and message in r.stderr, (line, r.stderr)
        assert "Traceback" not in r.stderr
    no_explain = re.sub(r"explain:\n(  .*\n)+", "", SPEC.replace("LIMIT", "0.5"))
    (d / "g.yaml").write_text(no_explain)
    r = run_deployc("validate", "g.yaml", cwd=d)
    assert r.returncode == 1 and "gates.min_attribution_agreement: compares explanations: set `explain:`" in r.stderr


def _body(x: np.ndarray) -> dict[str, object]:
    return {"id": "r1", "inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32",
                                    "data": x.ravel().tolist()}]}


def test_explain_route_answers_with_the_builds_method(built: Path) -> None:
    from serve_support import Server, metric_samples, metric_value

    from deployc.ml.explain import Settings, explain

    x = np.load(built / "data" / "eval.npz")["x"][:3].astype(np.float32)
    bundle = built / "out" / "local"
    with Server(bundle) as srv:
        status, resp = srv.json("POST", "/v2/models/digits/explain", _body(x))
        assert status == 200, resp
        assert resp["method"] == "integrated-gradients" and resp["id"] == "r1"
        attr = np.asarray(resp["outputs"][0]["data"]).reshape(resp["outputs"][0]["shape"])
        assert resp["outputs"][0]["name"] == "pixels" and attr.shape == (3, 64)
        # the same attributions as the library computes on the served model
        import onnxruntime as ort

        sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])

        def predict(feed: object) -> np.ndarray:
            return np.asarray(sess.run(None, {"pixels": feed["pixels"]})[0], dtype=np.float64)  # type: ignore[index]

        pred = predict({"pixels": x})
        targets = pred.argmax(axis=1)
        with np.load(bundle / "explain.npz") as z:
            base = {"pixels": z["pixels"]}
        expect = explain(predict, {"pixels": x}, base, Settings("integrated-gradients"), targets)
        assert np.allclose(attr, expect, atol=1e-6)
        assert resp["outputs"][1] == {"name": "target", "shape": [3], "datatype": "INT64", "data": targets.tolist()}
        top = resp["parameters"]["top_features"]
        assert [t["feature"] for t in top[0]] == [f"pixels[{j}]" for j in np.argsort(-np.abs(expect[0]),
                                                                                     kind="stable")[:5]]
        status, resp = srv.json("POST", "/v2/models/digits/versions/1.0.0/explain", _body(x[:1]))
        assert status == 200
        status, resp = srv.json("POST", "/v2/models/digits/explain", _body(np.resize(x, (5, 64))))
        assert status == 400 and "at most 4" in resp["error"]
        status, resp = srv.json("POST", "/v2/models/digits/explain", {"inputs": [{"name": "pixels"}]})
        assert status == 400
        snap = metric_samples(srv)
        assert metric_value(snap, "deployc_requests_total", route="explain", code="200") == 2
        assert metric_value(snap, "deployc_requests_total", route="explain", code="400") == 2
        assert metric_value(snap, "deployc_requests_total", route="infer") == 0
        # explain requests are not inference traffic: the input counters stay at zero
        assert metric_value(snap, "deployc_input_values_total") == 0
        _, doc = srv.json("GET", "/v2/openapi.json")
        assert "/v2/models/{name}/explain" in doc["paths"]


def test_input_counters_follow_the_requests(built: Path) -> None:
    from serve_support import Server, metric_samples, metric_value

    cfg = json.loads((built / "out" / "local" / "serving.json").read_text())
    mon = cfg["input_monitor"]
    hi = mon["inputs"]["pixels"]["max"]
    x = np.load(built / "data" / "eval.npz")["x"][:6].astype(np.float32)
    x[2, 2] = hi + 1
    x[3, 3] = -1
    bad = x[4:].copy()  # non-finite values travel in binary (JSON has no NaN literal): over gRPC
    bad[0, 0] = np.nan
    bad[1, 1] = np.inf
    with Server(built / "out" / "local", "--grpc-port", "0") as srv:
        snap = metric_samples(srv)  # every series exists at 0 before the first request
        for f in mon["features"]:
            for b in range(len(f["edges"]) + 1):
                assert ("deployc_feature_bin_total", tuple(sorted({"model": "digits", "version": "1.0.0",
                        "feature": f["name"], "bin": str(b)}.items()))) in snap
        status, _ = srv.json("POST", "/v2/models/digits/infer", _body(x[:4]))
        assert status == 200
        status, _, _ = srv.request("POST", "/invocations", {"instances": x[4:].tolist()})
        assert status == 200
        import re

        import tritonclient.grpc as grpcclient

        port = int(re.search(r"gRPC on 127\.0\.0\.1:(\d+)", srv.text()).group(1))  # type: ignore[union-attr]
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = grpcclient.InferInput("pixels", [2, 64], "FP32")
        tensor.set_data_from_numpy(bad)
        with pytest.raises(grpcclient.InferenceServerException, match="non-finite"):
            client.infer("digits", [tensor])  # refused (400 / INVALID_ARGUMENT), and counted
        client.close()
        snap = metric_samples(srv)
    assert metric_value(snap, "deployc_input_values_total", input="pixels") == 8 * 64
    assert metric_value(snap, "deployc_input_nonfinite_values_total", input="pixels") == 2
    assert metric_value(snap, "deployc_input_out_of_range_values_total", input="pixels") == 2
    rows = x  # a refused request's rows are not binned
    for f in mon["features"]:
        col = rows[:, f["index"]]
        col = col[np.isfinite(col)]
        counts = np.bincount(np.searchsorted(f["edges"], col, side="right"), minlength=len(f["edges"]) + 1)
        got = [metric_value(snap, "deployc_feature_bin_total", feature=f["name"], bin=str(b))
               for b in range(len(counts))]
        assert got == counts.tolist(), f["name"]


def test_input_drift_rules_pass_promtool(built: Path) -> None:
    import shutil
    import subprocess

    rules = built / "out" / "monitoring" / "prometheus-rules.yaml"
    text = rules.read_text()
    assert "DeploycInputDrift" in text and "DeploycInputQuality" in text
    if shutil.which("promtool") is None:
        pytest.skip("Debian's `prometheus` package (promtool) is not installed (make test installs it)")
    r = subprocess.run(["promtool", "test", "rules", "prometheus-rules.test.yaml"], cwd=rules.parent,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    tests = (rules.parent / "prometheus-rules.test.yaml").read_text()
    assert "every row in its rarest bin" in tests and "bad values in input pixels" in tests
