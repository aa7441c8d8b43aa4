"""Masked data capture: masking, sampling, rotation, the server's capture files, and the spec's checks."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_support import Server, metric_samples, metric_value, v2_body, write_bundle

from deployc import conventions as C
from deployc.serve.capture import CaptureConfig, FileSet, Masker, Recorder, Rule, hmac_hex, parse_capture

SALT = "s3cret-salt-for-capture-tests-0123"
SECRET_ID = "patient-8675309-zz"  # a request id only ever sent, hashed in the files
SSN = "078-05-1120"  # inside a parameter value, redacted in the files
EMAIL = "jane.roe@example.org"
X = [[0.123456789, 2.987654321, -1.314159265, 7.777777777]]


def capture_section(folder: Path, **over: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "sampling_percent": 100.0, "inputs": ["x"], "outputs": ["probabilities"],
        "fields": {"x": {"mask": "round", "decimals": 1}, "probabilities": {"mask": "bucket", "edges": [0.25, 0.5]}},
        "request_id": {"mask": "hash", "salt_env": "CAPTURE_SALT"},
        "parameters": {"mask": "redact", "patterns": [r"\d{3}-\d{2}-\d{4}", r"[\w.]+@[\w.]+"],
                       "replacement": "[REDACTED]"},
        "files": {"folder": str(folder), "max_file_bytes": 1 << 20, "max_total_bytes": 8 << 20, "max_files": 16,
                  "queue_size": 4096},
    }
    section.update(over)
    return section


def records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for p in sorted(folder.glob("capture-*.jsonl")) for line in p.read_bytes().splitlines()]


def raw_bytes(folder: Path) -> bytes:
    """Every byte under the folder, every file (the lock file and anything else included)."""
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


# --- masking, in process --------------------------------------------------------------------------------------

def _masker(**fields: Rule) -> Masker:
    cap = CaptureConfig(sampling_percent=100, inputs=("a", "b", "c", "d"), outputs=(), fields=fields)
    return Masker(cap, {"S": SALT.encode()})


def test_hash_is_hmac_sha256_of_the_value_with_the_salt() -> None:
    m = _masker(a=Rule("hash", salt_env="S"))
    got = m.tensor("a", np.array([[12345, -7]], dtype=np.int64))
    want = [hmac.new(SALT.encode(), t, hashlib.sha256).hexdigest() for t in (b"12345", b"-7")]
    assert got["data"] == want and got["shape"] == [1, 2]
    assert hmac_hex(SALT.encode(), "abc") == hmac.new(SALT.encode(), b"abc", hashlib.sha256).hexdigest()
    assert hmac_hex(b"another-salt-0123456", 12345) != want[0]  # the salt matters


def test_round_bucket_drop_and_redact() -> None:
    m = _masker(a=Rule("round", decimals=2), b=Rule("bucket", edges=(0.0, 1.0, 10.0)), c=Rule("drop"),
                d=Rule("round", decimals=-1))
    a = np.array([0.123456, 2.71828, -1.005], dtype=np.float32)
    assert np.allclose(m.tensor("a", a)["data"], np.round(a, 2))
    # bucket i holds edges[i-1] <= v < edges[i]
    got = m.tensor("b", np.array([-5.0, 0.0, 0.5, 1.0, 9.99, 10.0, 1e9]))["data"]
    assert got.tolist() == [0, 1, 1, 2, 2, 3, 3]
    assert m.tensor("c", a) is None
    assert m.tensor("d", np.array([1234, 1255], dtype=np.int64))["data"].tolist() == [1230, 1260]
    red = Rule("redact", patterns=(r"\d{3}-\d{2}-\d{4}",))
    m2 = Masker(CaptureConfig(100, (), (), parameters=red), {})
    assert m2.text(red, {"note": f"ssn {SSN} ok", "n": 3, "deep": [f"{SSN}"]}) == {
        "note": "ssn [REDACTED] ok", "n": 3, "deep": ["[REDACTED]"]}
    assert m2.text(red, "x" * 5000) == "[REDACTED]"  # too long to search in bounded time: replaced whole


def test_serving_config_rules_are_checked() -> None:
    with pytest.raises(Exception, match="redact does not apply to tensors"):
        parse_capture({"sampling_percent": 5, "fields": {"x": {"mask": "redact", "patterns": ["a"]}}}, ["x"], ["y"],
                      "serving.json: capture")
    with pytest.raises(Exception, match="not inputs or outputs"):
        parse_capture({"sampling_percent": 5, "fields": {"z": {"mask": "drop"}}}, ["x"], ["y"], "capture")
    with pytest.raises(Exception, match="sampling_percent"):
        parse_capture({"sampling_percent": 0}, ["x"], ["y"], "capture")


def test_sampling_rate_holds_within_tolerance(tmp_path: Path) -> None:
    counts = {"sampled": 0, "written": 0, "dropped": 0}

    def bump(key: str) -> Any:
        return lambda *_: counts.__setitem__(key, counts[key] + 1)

    cap = CaptureConfig(20.0, ("x",), ("y",), queue_size=10_000)
    rec = Recorder(cap, {}, tmp_path, "m", "1", ("y",), bump("sampled"), bump("written"), bump("dropped"))
    x, y = np.zeros((1, 4), np.float32), np.zeros((1, 3), np.float32)
    n = 2000
    for _ in range(n):
        rec.offer("infer", {"x": x}, [y])
    assert abs(counts["sampled"] / n - 0.20) <= 0.04, counts  # 20% of 2000 within 4 points (~4.5 sigma)
    assert counts["dropped"] == 0
    rec.start()
    rec.stop()
    assert counts["written"] == counts["sampled"] and len(records(tmp_path)) == counts["sampled"]


def test_a_full_queue_drops_and_counts_instead_of_waiting(tmp_path: Path) -> None:
    counts = {"sampled": 0, "dropped": 0}
    cap = CaptureConfig(100.0, ("x",), (), queue_size=5)
    rec = Recorder(cap, {}, tmp_path, "m", "1", (), lambda: counts.__setitem__("sampled", counts["sampled"] + 1),
                   lambda n: None, lambda r: counts.__setitem__("dropped", counts["dropped"] + 1))
    t0 = time.perf_counter()
    for _ in range(100):  # the writer thread is not running: the queue fills after 5
        rec.offer("infer", {"x": np.zeros((1, 4), np.float32)}, [])
    assert time.perf_counter() - t0 < 0.5
    assert counts == {"sampled": 100, "dropped": 95}


def test_rotation_bounds_the_folder_and_removes_the_oldest(tmp_path: Path) -> None:
    cap = CaptureConfig(100.0, (), (), max_file_bytes=1000, max_total_bytes=4000, max_files=8)
    files = FileSet(tmp_path, cap)
    line = b'{"pad": "' + b"x" * 88 + b'"}\n'  # 100 bytes
    seen: set[str] = set()
    for i in range(500):
        files.write(line)
        names = [p for p in tmp_path.glob("capture-*.jsonl")]
        seen |= {p.name for p in names}
        total = sum(p.stat().st_size for p in names)
        assert total <= cap.max_total_bytes and len(names) <= cap.max_files, (i, total, len(names))
    files.close()
    kept = sorted(p.name for p in tmp_path.glob("capture-*.jsonl"))
    assert len(seen) == 50 and kept == sorted(seen)[-len(kept):]  # the newest kept, the oldest removed
    assert all(p.stat().st_size <= cap.max_file_bytes for p in tmp_path.glob("capture-*.jsonl"))


def test_a_record_larger_than_a_file_is_dropped_not_split(tmp_path: Path) -> None:
    dropped: list[str] = []
    cap = CaptureConfig(100.0, ("x",), (), max_file_bytes=2000, max_total_bytes=8000)
    rec = Recorder(cap, {}, tmp_path, "m", "1", (), lambda: None, lambda n: None, dropped.append)
    rec.start()
    rec.offer("infer", {"x": np.zeros((1, 1000), np.float32)}, [])
    rec.offer("infer", {"x": np.zeros((1, 4), np.float32)}, [])
    rec.stop()
    assert dropped == ["too_large"] and len(records(tmp_path)) == 1


# --- the server ---------------------------------------------------------------------------------------------

def _masked_server(tmp_path: Path, *args: str, **over: Any) -> tuple[Path, Path]:
    folder = tmp_path / "cap"
    bundle = write_bundle(tmp_path / "build", capture=capture_section(folder, **over))
    return bundle, folder


def test_masked_fields_never_reach_the_files_in_clear(tmp_path: Path) -> None:
    bundle, folder = _masked_server(tmp_path)
    x = np.array(X, np.float32)
    params = {"note": f"ssn {SSN}, mail {EMAIL}"}
    with Server(bundle, "--grpc-port", "0", env={"CAPTURE_SALT": SALT}) as srv:
        assert srv.json("POST", "/v2/models/iris/infer", v2_body(x, id=SECRET_ID, parameters=params))[0] == 200
        head = json.dumps({"id": SECRET_ID, "parameters": params, "inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}).encode()
        status, _, _ = srv.request("POST", "/v2/models/iris/infer", head + x.tobytes(),
                                   {"Inference-Header-Content-Length": str(len(head))})
        assert status == 200
        assert srv.json("POST", "/invocations", v2_body(x, id=SECRET_ID, parameters=params))[0] == 200
        assert srv.json("POST", "/invocations", {"instances": X})[0] == 200
        m = re.search(r"gRPC on 127\.0\.0\.1:(\d+)", srv.text())
        assert m, srv.text()
        _grpc_infer(int(m.group(1)), x)  # the same path over gRPC
    recs = records(folder)
    assert [r["route"] for r in recs] == ["infer", "infer", "invocations", "invocations", "grpc_infer"]
    blob = raw_bytes(folder)
    for secret in (SECRET_ID, SSN, EMAIL, "0.123456", "2.98765", "1.31415", "7.7777"):
        assert secret.encode() not in blob, secret
    want_id = hmac.new(SALT.encode(), SECRET_ID.encode(), hashlib.sha256).hexdigest()
    for r in recs:
        assert np.allclose(r["inputs"]["x"]["data"], np.round(x, 1).ravel())
        assert r["outputs"]["probabilities"]["shape"] == [1, 3]
        assert set(r["outputs"]["probabilities"]["data"]) <= {0, 1, 2}
        if r["route"] != "invocations" or "id" in r:
            assert r["id"] == want_id
        assert r["masks"] == {"x": "round", "probabilities": "bucket", "id": "hash", "parameters": "redact"}
    assert recs[0]["parameters"] == {"note": "ssn [REDACTED], mail [REDACTED]"}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for p in folder.glob("capture-*.jsonl"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600 and f"-{_pid_of(p)}-" in p.name


def _pid_of(p: Path) -> str:
    return p.name.split("-")[2]


def _grpc_infer(port: int, x: np.ndarray) -> None:
    """ModelInfer with tritonclient's messages (the same inference.* protocol): the test process never imports
    the server's generated modules, which register the same names in protobuf's pool."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name="iris", id=SECRET_ID, raw_input_contents=[x.tobytes()])
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.parameters["note"].string_param = f"ssn {SSN}"
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                              request_serializer=pb.ModelInferRequest.SerializeToString,
                              response_deserializer=pb.ModelInferResponse.FromString)
        call(req, timeout=10)


def test_the_server_refuses_to_start_without_the_salt(tmp_path: Path) -> None:
    bundle, folder = _masked_server(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "CAPTURE_SALT"}
    r = subprocess.run([".venv/bin/python", "-m", "deployc.serve", str(bundle), "--port", "0"], env=env,
                       capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 1 and "CAPTURE_SALT" in r.stderr and "refusing to start" in r.stderr, r.stderr
    r = subprocess.run([".venv/bin/python", "-m", "deployc.serve", str(bundle), "--port", "0", "--workers", "2"],
                       env={**env, "CAPTURE_SALT": "short"}, capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 1 and "at least 16" in r.stderr, r.stderr


def test_no_capture_section_writes_nothing(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "build")
    with Server(bundle) as srv:
        assert srv.json("POST", "/v2/models/iris/infer", v2_body(np.array(X, np.float32)))[0] == 200
        assert "deployc_capture" not in srv.request("GET", "/metrics")[2].decode()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (Debian: apt-get install wrk)")
def test_under_wrk_load_no_request_is_lost_and_the_counts_add_up(tmp_path: Path) -> None:
    folder = tmp_path / "cap"
    section = capture_section(folder, sampling_percent=50.0, fields={"x": {"mask": "drop"}},
                              request_id={"mask": "keep"}, parameters={"mask": "keep"})
    section["files"].update(queue_size=8, max_file_bytes=64 << 10, max_total_bytes=64 << 20, max_files=10_000)
    bundle = write_bundle(tmp_path / "build", capture=section, server={"workers": 2})
    lua = tmp_path / "post.lua"
    body = json.dumps(v2_body(np.array(X, np.float32)))
    lua.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                   f"wrk.body = {json.dumps(body)}\n")
    with Server(bundle, "--workers", "2") as srv:
        out = subprocess.run(["wrk", "-t2", "-c32", "-d2s", "-s", str(lua),
                              f"http://127.0.0.1:{srv.port}/v2/models/iris/infer"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        assert "Non-2xx" not in out and "Socket errors" not in out, out
        total = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
        deadline = time.monotonic() + 10

        def counts() -> tuple[float, float, float, float]:
            snap = metric_samples(srv)
            sampled = metric_value(snap, C.METRIC_CAPTURE_SAMPLED + "_total") or metric_value(
                snap, C.METRIC_CAPTURE_SAMPLED)
            return (sampled, _counter(snap, C.METRIC_CAPTURE_WRITTEN), _counter(snap, C.METRIC_CAPTURE_DROPPED),
                    _counter(snap, C.METRIC_REQUESTS, route="infer", code="200"))

        # the writer threads drain their queues, and requests wrk abandoned when it stopped are still answered:
        # settled when two reads of the counters, with the files read between them, agree
        while True:
            sampled, written, dropped, answered = counts()
            recs = records(folder)  # every line whole JSON: no interleaving across the two workers
            settled = counts() == (sampled, written, dropped, answered)
            if (settled and written + dropped == sampled and len(recs) == written) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert answered >= total  # wrk counts only completed requests; every answer was a 200
    assert sampled > 0 and written + dropped == sampled, (sampled, written, dropped)
    assert abs(sampled / answered - 0.5) < 0.05, (sampled, answered)
    assert len(recs) == written and all("x" not in r["inputs"] for r in recs)
    pids = {_pid_of(p) for p in folder.glob("capture-*.jsonl")}
    assert pids and str(srv.proc.pid) not in pids and len(pids) <= 2  # a file per worker (the kernel spreads
    # connections unevenly, so one worker may have taken them all)
    assert b"0.123456" not in raw_bytes(folder)


def _counter(snap: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    base = name.removesuffix("_total")
    return metric_value(snap, base + "_total", **labels)
