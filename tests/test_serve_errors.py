"""`deployc serve` under bad input, auth, bad bundles, SIGTERM drain and several workers."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployc import conventions as C
from deployc.serve.cli import main

try:  # tests/ may or may not be a package
    from tests.prom_support import wait_for
    from tests.serve_support import ROOT, Server, reference, v2_body, write_bundle
except ImportError:
    from prom_support import wait_for
    from serve_support import ROOT, Server, reference, v2_body, write_bundle

X = np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
GOOD = json.dumps(v2_body(X)).encode()
INFER = "/v2/models/iris/infer"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with Server(write_bundle(tmp_path_factory.mktemp("b") / "iris")) as s:  # max_body_bytes 65536
        yield s


def _v2(**changes: Any) -> bytes:
    t = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4], **changes}
    return json.dumps({"inputs": [t]}).encode()


JSON = {"Content-Type": "application/json"}
NPY = {"Content-Type": "application/x-npy"}
BAD = [  # (method, path, body, headers, status, text in the error)
    ("POST", INFER, _v2(name="pixels"), JSON, 400, "unknown input name 'pixels'"),
    ("POST", INFER, _v2(shape=[1, 5], data=[0.0] * 5), JSON, 400, "does not match the model's [-1, 4]"),
    ("POST", INFER, _v2(shape=[2, 4]), JSON, 400, "needs 8 values, data has 4"),
    ("POST", INFER, _v2(shape=[0, 4], data=[]), JSON, 400, "the batch is empty"),
    ("POST", INFER, _v2(datatype="FP64"), JSON, 400, "datatype 'FP64' does not match the model's FP32"),
    ("POST", INFER, _v2(data=["a", "b", "c", "d"]), JSON, 400, "data must be numbers"),
    ("POST", INFER, _v2(data=[[1, 2], [3]]), JSON, 400, "not a rectangular array"),
    ("POST", INFER, _v2(data=[1e39, 0, 0, 0]), JSON, 400, "non-finite"),
    ("POST", INFER, GOOD.replace(b"0.1", b"NaN"), JSON, 400, "malformed JSON"),
    ("POST", INFER, GOOD.replace(b"0.1", b"Infinity"), JSON, 400, "malformed JSON"),
    ("POST", INFER, b'{"inputs": [', JSON, 400, "malformed JSON"),
    ("POST", INFER, b'\xff\xfe', JSON, 400, "malformed JSON"),
    ("POST", INFER, b'{"instances": [[1,2,3,4]]}', JSON, 400, '"inputs" list'),
    ("POST", INFER, json.dumps({"inputs": [{"name": "x"}]}).encode(), JSON, 400, "'shape' is missing"),
    ("POST", INFER, json.dumps({**v2_body(X), "outputs": [{"name": "logits"}]}).encode(), JSON, 400,
     "unknown output name(s) ['logits']"),
    ("POST", INFER, b'{"inputs": []}', JSON, 400, "missing input(s) ['x']"),
    ("POST", INFER, b"x" * 70000, JSON, 413, "larger than the limit of 65536 bytes"),
    ("POST", "/v2/models/resnet/infer", GOOD, JSON, 404, "unknown model 'resnet'"),
    ("POST", "/v2/models/iris/versions/9/infer", GOOD, JSON, 404, "unknown version '9'"),
    ("GET", "/v2/models/resnet", None, {}, 404, "unknown model 'resnet'"),
    ("GET", "/nothing/here", None, {}, 404, "no route /nothing/here"),
    ("GET", INFER, None, {}, 405, "method GET is not allowed"),
    ("PUT", "/invocations", GOOD, JSON, 405, "method PUT is not allowed"),
    ("POST", "/invocations", GOOD, {"Content-Type": "text/csv"}, 415, "unsupported Content-Type 'text/csv'"),
    ("POST", INFER, GOOD, {**JSON, "Content-Encoding": "br"}, 415, "unsupported Content-Encoding 'br'"),
    ("POST", INFER, GOOD, {**JSON, "Inference-Header-Content-Length": "999"}, 400, "larger than the body"),
    ("POST", "/invocations", GOOD, {**JSON, "Accept": "*/*;q=0"}, 406, "cannot answer in '*/*;q=0'"),
    ("POST", "/invocations", GOOD, {**JSON, "Accept": "text/csv"}, 406, "cannot answer in 'text/csv'"),
    ("POST", "/invocations", b"not an npy file", NPY, 400, "not a valid .npy array"),
    ("POST", "/invocations", b'{"instances": [[1, 2, 3]]}', JSON, 400, "shape [1, 3] does not match"),
    ("POST", "/invocations", b'{"instances": []}', JSON, 400, "non-empty list"),
    ("POST", "/invocations", b'{"foo": 1}', JSON, 400, 'expected {"instances"'),
]


@pytest.mark.parametrize("method,path,body,headers,status,text", BAD, ids=[f"{b[4]}-{b[5][:30]}" for b in BAD])
def test_bad_requests_get_4xx_json_errors(server: Server, method: str, path: str, body: bytes | None,
                                          headers: dict[str, str], status: int, text: str) -> None:
    got, hdrs, data = server.request(method, path, body, headers)
    assert got == status, data
    assert hdrs["content-type"] == "application/json"
    error = json.loads(data)["error"]
    assert text in error and "Traceback" not in error
    assert server.ready()  # the server stays up


def test_npy_with_wrong_dtype_and_body_over_limit_while_streaming(server: Server) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([["a", "b", "c", "d"]]))
    status, _, data = server.request("POST", "/invocations", buf.getvalue(), NPY)
    assert status == 400 and "cannot be used for datatype FP32" in json.loads(data)["error"]
    # no Content-Length: chunked upload, so the limit must be enforced while the body streams in
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", INFER, body=iter([b"[" * 40000, b"[" * 40000]), headers=JSON, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413 and "larger than the limit" in json.loads(resp.read())["error"]
    conn.close()


def test_no_5xx_recorded_after_bad_input(server: Server) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    _, _, body = server.request("GET", "/metrics")
    codes = {s.labels["code"] for f in text_string_to_metric_families(body.decode()) for s in f.samples
             if s.name == C.METRIC_REQUESTS}
    assert codes and not any(c.startswith("5") for c in codes), codes


def test_bearer_token_auth(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "iris", server={"auth_token_env": "DEPLOYC_TEST_TOKEN"})
    with Server(bundle, env={"DEPLOYC_TEST_TOKEN": "s3cret-token"}) as s:
        for path in ("/v2/health/live", "/v2/health/ready", "/ping", "/v2/models/iris/ready"):
            assert s.request("GET", path)[0] == 200, path
        for method, path, body in (("POST", INFER, GOOD), ("POST", "/invocations", GOOD),
                                   ("GET", "/v2/models/iris", None), ("GET", "/v2", None)):
            status, hdrs, data = s.request(method, path, body, JSON)
            assert status == 401 and hdrs["www-authenticate"] == "Bearer", path
            assert "bearer token" in json.loads(data)["error"]
            assert s.request(method, path, body, {**JSON, "Authorization": "Bearer wrong"})[0] == 401
            assert s.request(method, path, body, {**JSON, "Authorization": "Basic s3cret-token"})[0] == 401
            assert s.request(method, path, body, {**JSON, "Authorization": "Bearer s3cret-token"})[0] == 200


def test_refuses_to_start_when_the_token_variable_is_unset(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "iris", server={"auth_token_env": "DEPLOYC_UNSET_TOKEN"})
    env = {k: v for k, v in os.environ.items() if k != "DEPLOYC_UNSET_TOKEN"}
    proc = subprocess.run([sys.executable, "-m", "deployc.serve", str(bundle), "--port", "0"], capture_output=True,
                          text=True, env={**env, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == 1
    assert "DEPLOYC_UNSET_TOKEN, which is not set" in proc.stderr and "Traceback" not in proc.stderr


def _break(bundle: Path, how: str) -> None:
    local = bundle / "local"
    if how == "missing serving.json":
        (local / "serving.json").unlink()
    elif how == "invalid JSON":
        (local / "serving.json").write_text("{not json")
    elif how == "sha256 mismatch":
        (local / "model.onnx").write_bytes((local / "model.onnx").read_bytes() + b"\0")
    elif how == "missing model":
        (local / "model.onnx").unlink()
    elif how == "wrong format_version":
        cfg = json.loads((local / "serving.json").read_text())
        (local / "serving.json").write_text(json.dumps({**cfg, "format_version": 99}))
    elif how == "model path leaves the bundle":
        cfg = json.loads((local / "serving.json").read_text())
        cfg["model"]["path"] = "../../../etc/passwd"
        (local / "serving.json").write_text(json.dumps(cfg))
    elif how == "name missing":
        cfg = json.loads((local / "serving.json").read_text())
        del cfg["name"]
        (local / "serving.json").write_text(json.dumps(cfg))
    elif how == "input name differs from the model":
        cfg = json.loads((local / "serving.json").read_text())
        cfg["model"]["inputs"][0]["name"] = "pixels"
        (local / "serving.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("how,text", [
    ("missing serving.json", "no local/serving.json"), ("invalid JSON", "not valid JSON"),
    ("sha256 mismatch", "sha256 does not match"), ("missing model", "does not exist"),
    ("wrong format_version", "format_version 99 is not supported"),
    ("model path leaves the bundle", "model.path: '../../../etc/passwd' leaves the bundle folder"),
    ("name missing", "serving.json: name: missing"),
    ("input name differs from the model", "names ['pixels'] do not match the model's ['x']"),
])
def test_bad_bundle_exits_1_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str,
                                          text: str) -> None:
    bundle = write_bundle(tmp_path / "iris")
    _break(bundle, how)
    assert main([str(bundle), "--port", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deployc serve: error: ") and text in err[0], err


def test_local_folder_is_accepted_and_missing_bundle_is_reported(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope")]) == 1
    assert "no such bundle folder" in capsys.readouterr().err
    bundle = write_bundle(tmp_path / "iris")
    with Server(bundle / "local") as s:
        assert s.json("GET", "/v2/models/iris")[0] == 200


def test_sigterm_drains_in_flight_request_and_exits_0(tmp_path: Path) -> None:
    s = Server(write_bundle(tmp_path / "iris"))
    try:
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=20)
        head = (f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(GOOD)}\r\n\r\n").encode()
        sock.sendall(head + GOOD[:10])  # the request is in flight: its body is still arriving
        wait_for(lambda: _in_flight(s) == 1, 20, "the server to start serving the request", interval_s=0.02)
        s.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: not _accepts(s.port), 20, "the server to stop accepting connections", interval_s=0.02)
        assert s.proc.poll() is None, "exited with a request in flight"
        with pytest.raises(OSError):  # stopped accepting new connections
            socket.create_connection(("127.0.0.1", s.port), timeout=2).close()
        sock.sendall(GOOD[10:])
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        sock.close()
        assert data.startswith(b"HTTP/1.1 200"), data
        out = json.loads(data.split(b"\r\n\r\n", 1)[1])["outputs"][0]["data"]
        np.testing.assert_allclose(out, reference(X)[0], rtol=1e-6)
        assert s.proc.wait(20) == 0
        assert "Traceback" not in s.text()
    finally:
        s.stop()


def _in_flight(s: Server) -> float:
    """The server's own count of inference requests being served (a body still arriving counts)."""
    text = s.request("GET", "/metrics")[2].decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(C.METRIC_IN_FLIGHT + "{"))


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def _length(raw: bytes) -> int:
    head = raw.split(b"\r\n\r\n", 1)[0].decode().lower()
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            return int(line.split(":")[1])
    return 1 << 30


def test_two_workers_share_metrics_and_stop_cleanly(tmp_path: Path) -> None:
    with Server(write_bundle(tmp_path / "iris"), "--workers", "2", timeout=60) as s:
        for _ in range(6):
            assert s.json("POST", INFER, v2_body(X))[0] == 200
        from prometheus_client.parser import text_string_to_metric_families

        _, _, body = s.request("GET", "/metrics")
        fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
        total = sum(x.value for x in fams["deployc_requests"].samples
                    if x.name == C.METRIC_REQUESTS and x.labels["route"] == "infer")
        assert total == 6  # summed over both workers, whichever served each request
        assert s.stop() == 0


def test_scrape_skips_a_worker_file_that_is_not_sized_yet(tmp_path: Path) -> None:
    """A worker creates its metrics file with `open` and sizes it a moment later; a scrape that landed in between
    read an empty file and answered 500 for all workers."""
    import struct

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.mmap_dict import MmapedDict
    from prometheus_client.multiprocess import MultiProcessCollector

    from deployc.serve.metrics import _WorkerFilesCollector

    d = MmapedDict(str(tmp_path / "counter_101.db"))
    d.write_value(json.dumps(["jobs", "jobs_total", {"worker": "a"}, "Jobs."]), 3.0, 0.0)
    d.close()
    (tmp_path / "counter_102.db").touch()  # the other worker, between open and truncate

    def scrape(collector: Any) -> str:
        registry = CollectorRegistry()
        collector(registry, path=str(tmp_path))
        return generate_latest(registry).decode()

    with pytest.raises(struct.error):  # upstream's collector fails the whole scrape
        scrape(MultiProcessCollector)
    assert 'jobs_total{worker="a"} 3.0' in scrape(_WorkerFilesCollector)
