"""`deployc serve` as a real process on a free loopback port: routes, formats, batching, metrics."""
from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployc import conventions as C

try:  # tests/ may or may not be a package
    from tests.serve_support import LABELS, Server, make_classifier, reference, v2_body, write_bundle
    from tests.serve_support import metric_samples as samples
    from tests.serve_support import metric_value as value
except ImportError:
    from serve_support import LABELS, Server, make_classifier, reference, v2_body, write_bundle
    from serve_support import metric_samples as samples
    from serve_support import metric_value as value

X = np.array([[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 2.0, 0.5], [-2.0, 0.0, 1.5, 3.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    bundle = write_bundle(tmp_path_factory.mktemp("b") / "iris", batching={"max_delay_ms": 20.0})
    with Server(bundle) as s:
        yield s


def test_health_and_metadata_routes(server: Server) -> None:
    assert server.json("GET", "/v2/health/live") == (200, {"live": True})
    assert server.json("GET", "/v2/health/ready") == (200, {"ready": True})
    assert server.json("GET", "/ping")[0] == 200
    assert server.json("GET", "/v2/models/iris/ready") == (200, {"name": "iris", "ready": True})
    assert server.json("GET", "/v2/models/iris/versions/1/ready")[0] == 200
    status, meta = server.json("GET", "/v2")
    assert status == 200 and meta["name"] == "deployc"
    assert meta["extensions"] == ["binary_tensor_data"]  # tests/test_serve_binary.py
    for path in ("/v2/models/iris", "/v2/models/iris/versions/1"):
        status, meta = server.json("GET", path)
        assert status == 200
        assert meta["name"] == "iris" and meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
        assert meta["parameters"]["labels"] == LABELS


@pytest.mark.parametrize("path", ["/v2/models/iris/infer", "/v2/models/iris/versions/1/infer"])
def test_kserve_v2_infer_matches_onnxruntime(server: Server, path: str) -> None:
    body = v2_body(X, id="req-7", parameters={"trace": True}, outputs=[{"name": "probabilities"}])
    status, resp = server.json("POST", path, body)
    assert status == 200
    assert resp["id"] == "req-7" and resp["model_name"] == "iris" and resp["model_version"] == "1"
    (out,) = resp["outputs"]
    assert out["name"] == "probabilities" and out["datatype"] == "FP32" and out["shape"] == [3, 3]
    np.testing.assert_allclose(np.array(out["data"]).reshape(3, 3), reference(X), rtol=1e-6, atol=1e-7)
    # nested `data` is accepted too
    nested = {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": X.tolist()}]}
    status, resp = server.json("POST", path, nested)
    np.testing.assert_allclose(np.array(resp["outputs"][0]["data"]).reshape(3, 3), reference(X), rtol=1e-6)


def test_sagemaker_invocations_formats(server: Server) -> None:
    ref = reference(X)
    status, resp = server.json("POST", "/invocations", {"instances": X.tolist()})
    assert status == 200
    np.testing.assert_allclose(np.array(resp["predictions"]), ref, rtol=1e-6)
    status, resp = server.json("POST", "/invocations", v2_body(X, id="s"))
    assert status == 200 and resp["id"] == "s"
    np.testing.assert_allclose(np.array(resp["outputs"][0]["data"]).reshape(3, 3), ref, rtol=1e-6)
    buf = io.BytesIO()
    np.save(buf, X.astype(np.float64))  # float64 from numpy users is cast to the model's FP32
    status, headers, body = server.request("POST", "/invocations", buf.getvalue(),
                                           {"Content-Type": "application/x-npy", "Accept": "application/x-npy"})
    assert status == 200 and headers["content-type"] == "application/x-npy"
    got = np.load(io.BytesIO(body), allow_pickle=False)
    assert got.dtype == np.float32 and got.shape == (3, 3)
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    status, headers, body = server.request("POST", "/invocations", buf.getvalue(),
                                           {"Content-Type": "application/x-npy"})  # JSON by default
    assert status == 200 and headers["content-type"] == "application/json"
    np.testing.assert_allclose(np.array(json.loads(body)["predictions"]), ref, rtol=1e-6)


def test_concurrent_requests_are_batched_and_answered_correctly(server: Server) -> None:
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(16)]
    before, sent = samples(server), 0
    for _ in range(5):  # thread start-up jitter can defeat one round; several rounds make a merge certain
        results: list[Any] = [None] * len(inputs)
        barrier = threading.Barrier(len(inputs))

        def call(i: int, barrier: threading.Barrier = barrier, results: list[Any] = results) -> None:
            barrier.wait()
            results[i] = server.json("POST", "/v2/models/iris/infer", v2_body(inputs[i]))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for x, (status, resp) in zip(inputs, results, strict=True):
            assert status == 200
            np.testing.assert_allclose(np.array(resp["outputs"][0]["data"]).reshape(len(x), 3), reference(x),
                                       rtol=1e-6, atol=1e-7)
        after = samples(server)
        runs = value(after, C.METRIC_BATCH_SIZE + "_count") - value(before, C.METRIC_BATCH_SIZE + "_count")
        sent += len(inputs)
        if runs < sent:  # fewer model runs than requests: some run served several requests
            break
    assert runs < sent, f"no batch merged requests: {runs} model runs for {sent} requests"
    rows = value(after, C.METRIC_BATCH_SIZE + "_sum") - value(before, C.METRIC_BATCH_SIZE + "_sum")
    assert rows == sum(len(x) for x in inputs) * (sent // len(inputs))


def test_metrics_move_by_the_right_amounts(server: Server) -> None:
    before = samples(server)
    for _ in range(3):
        assert server.json("POST", "/v2/models/iris/infer", v2_body(X))[0] == 200
    assert server.json("POST", "/v2/models/iris/infer", {"inputs": "nope"})[0] == 400
    assert server.json("POST", "/invocations", {"instances": X[:1].tolist()})[0] == 200
    after = samples(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    base = {"model": "iris", "version": "1"}
    assert delta(C.METRIC_REQUESTS, route="infer", code="200", **base) == 3
    assert delta(C.METRIC_REQUESTS, route="infer", code="400", **base) == 1
    assert delta(C.METRIC_REQUESTS, route="invocations", code="200", **base) == 1
    assert delta(C.METRIC_REQUEST_DURATION + "_count", route="infer", **base) == 4
    expected = np.bincount(reference(X).argmax(1), minlength=3) * 3 + np.bincount(reference(X[:1]).argmax(1),
                                                                                    minlength=3)
    for idx, label in enumerate(LABELS):
        assert delta(C.METRIC_PREDICTIONS, **{"class": label}, **base) == expected[idx], label
    sha = json.loads(Path(server.proc.args[3], "local", "serving.json").read_text())["model"]["sha256"]
    assert value(after, C.METRIC_MODEL_INFO, sha256=sha, **base) == 1
    assert value(after, C.METRIC_IN_FLIGHT, **base) == 0
    les = sorted(float(dict(ls)["le"]) for (n, ls), _ in after.items()
                 if n == C.METRIC_REQUEST_DURATION + "_bucket" and dict(ls)["route"] == "infer")
    assert les[:-1] == [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
    assert delta(C.METRIC_REQUESTS, route="metrics", code="200", **base) == 1  # the `before` scrape


def test_model_without_batch_axis_serves_unbatched(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "fixed")
    local = bundle / "local"
    make_classifier(local / "model.onnx", batch_axis=False)
    cfg = json.loads((local / "serving.json").read_text())
    cfg["model"]["sha256"] = hashlib.sha256((local / "model.onnx").read_bytes()).hexdigest()
    cfg["model"]["inputs"][0]["shape"] = [1, 4]
    cfg["model"]["outputs"][0]["shape"] = [1, 3]
    (local / "serving.json").write_text(json.dumps(cfg))
    with Server(bundle) as s:
        assert "batching off" in s.text()
        status, resp = s.json("POST", "/v2/models/iris/infer", v2_body(X[:1]))
        assert status == 200
        np.testing.assert_allclose(np.array(resp["outputs"][0]["data"]), reference(X[:1])[0], rtol=1e-6)
        status, resp = s.json("POST", "/v2/models/iris/infer", v2_body(X[:2]))
        assert status == 400 and "does not match the model's [1, 4]" in resp["error"]
