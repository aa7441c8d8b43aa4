"""Helpers for the server tests and the benchmark: tiny deterministic ONNX models, bundles, a server process."""
from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["setosa", "versicolor", "virginica"]
W = np.array([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0], [-1.5, 0.5, 1.0], [0.25, -0.5, 2.0]], dtype=np.float32)
B = np.array([0.1, -0.2, 0.05], dtype=np.float32)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def json_request(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """(status, parsed JSON body or None) of one request to 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def _save(graph: Any, path: Path) -> None:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="deployc-tests")
    model.ir_version = 9  # onnx 1.23 writes a newer IR than onnxruntime 1.32 reads by default
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def make_classifier(path: Path, batch_axis: bool = True) -> None:
    """x FP32 [-1, 4] -> MatMul -> Add -> Softmax -> probabilities [-1, 3], fixed weights."""
    from onnx import TensorProto, helper, numpy_helper

    dim = "N" if batch_axis else 1
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["z"]),
             helper.make_node("Softmax", ["z"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim, 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [dim, 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    _save(graph, path)


def make_mlp(path: Path, dims: tuple[int, ...] = (64, 1024, 1024, 1024, 10), seed: int = 0) -> None:
    """A wide MLP (Gemm + Relu, Softmax at the end) with random fixed-seed weights, for throughput."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        inits += [numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"B{i}")]
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [f"g{i}"]))
        prev = f"g{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    nodes.append(helper.make_node("Softmax", [prev], ["probabilities"], axis=-1))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", dims[0]])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", dims[-1]])],
                              inits)
    _save(graph, path)


def write_bundle(build: Path, model: str = "classifier", name: str = "iris", version: str = "1",
                 labels: list[str] | None = LABELS, **sections: dict[str, Any]) -> Path:
    """Write build/<name>/local/{model.onnx, serving.json, labels.txt}; `sections` update serving.json's parts."""
    local = build / "local"
    local.mkdir(parents=True, exist_ok=True)
    if model == "classifier":
        make_classifier(local / "model.onnx")
        n_in, n_out = 4, 3
    else:
        make_mlp(local / "model.onnx")
        n_in, n_out = 64, 10
    if labels:
        (local / "labels.txt").write_text("\n".join(labels) + "\n")
    cfg: dict[str, Any] = {
        "format_version": 1, "name": name, "version": version, "task": "classification",
        "model": {"path": "model.onnx", "sha256": hashlib.sha256((local / "model.onnx").read_bytes()).hexdigest(),
                  "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, n_in]}],
                  "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, n_out]}]},
        "labels": "labels.txt" if labels else None,
        "server": {"host": "127.0.0.1", "port": 8080, "workers": 1, "max_body_bytes": 65536, "auth_token_env": None},
        "runtime": {"intra_op_threads": 1, "inter_op_threads": 1},
        "batching": {"enabled": True, "max_batch_size": 32, "max_delay_ms": 2.0},
        "metrics": {"latency_buckets": [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]},
    }
    for key, value in sections.items():
        if isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    (local / "serving.json").write_text(json.dumps(cfg, indent=2))
    return build


def write_model_bundle(local: Path, name: str, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]],
                       labels: list[str] | None = None, **top: Any) -> Path:
    """serving.json (and labels.txt) for the model.onnx already in `local`; `top` adds or replaces top-level keys
    (task, prediction, threshold, server, ...). Returns `local`."""
    if labels:
        (local / "labels.txt").write_text("\n".join(labels) + "\n")
    cfg: dict[str, Any] = {
        "format_version": 1, "name": name, "version": "1",
        "model": {"path": "model.onnx", "sha256": hashlib.sha256((local / "model.onnx").read_bytes()).hexdigest(),
                  "inputs": inputs, "outputs": outputs},
        "labels": "labels.txt" if labels else None,
        "server": {"host": "127.0.0.1", "port": 8080, "workers": 1, "max_body_bytes": 65536, "auth_token_env": None},
        "batching": {"enabled": True, "max_batch_size": 32, "max_delay_ms": 2.0},
        **top,
    }
    (local / "serving.json").write_text(json.dumps(cfg, indent=2))
    return local


def metric_samples(srv: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the server's /metrics, keyed by (name, sorted labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, headers, body = srv.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def metric_value(snap: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in snap.items() if n == name and set(labels.items()) <= set(ls))


class Server:
    """`python -m deployc.serve BUNDLE --port 0` as a real process; the bound port is read from its log."""

    def __init__(self, bundle: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 30):
        # the server process writes to it until stop() closes it; __exit__ removes it
        self.log = tempfile.NamedTemporaryFile(prefix="deployc-serve-", suffix=".log", delete=False)  # noqa: SIM115
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "deployc.serve", str(bundle), "--port", "0", *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=full_env, cwd=str(ROOT))
        deadline = time.monotonic() + timeout
        self.port = 0
        while time.monotonic() < deadline:
            m = re.search(r"on http://127\.0\.0\.1:(\d+)", self.text())
            if m:
                self.port = int(m.group(1))
                if self.ready():
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not become ready:\n{self.text()}")

    def text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def ready(self) -> bool:
        try:
            return self.request("GET", "/v2/health/ready")[0] == 200
        except OSError:
            return False

    def request(self, method: str, path: str, body: bytes | dict[str, Any] | list[Any] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        hdrs = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
             ) -> tuple[int, Any]:
        status, _, data = self.request(method, path, body, headers)
        return status, json.loads(data)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        os.unlink(self.log.name)


def v2_body(x: np.ndarray, name: str = "x", **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            **extra}


def reference(x: np.ndarray) -> np.ndarray:
    """The classifier's output computed by onnxruntime directly."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        make_classifier(Path(d) / "m.onnx")
        sess = ort.InferenceSession(str(Path(d) / "m.onnx"), providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": x.astype(np.float32)})[0]


# --- slow and hostile clients (tests/test_serve_slow_clients.py, bench/serve_slow.py) ---

def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def stalled_bodies(port: int, count: int, declared: int, sent: int, path: str = "/v2/models/iris/infer"
                   ) -> list[Any]:
    """`count` connections that each declare a `declared`-byte body, send `sent` bytes of it and stall.

    Returns the open sockets (the caller closes them); a connection the server refused may be closed already.
    """
    import socket

    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    chunk, socks = b" " * min(sent, 1 << 20), []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(s)
        try:
            s.sendall(head)
            left = sent
            while left > 0:
                left -= s.send(chunk[:left])
        except OSError:  # refused (503) and closed by the server while we were sending
            pass
    return socks


def latencies(port: int, body: bytes, seconds: float, max_requests: int = 100_000,
              path: str = "/v2/models/iris/infer") -> list[float]:
    """Sequential keep-alive POSTs for `seconds` (at most `max_requests`); each request's latency in seconds."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    out: list[float] = []
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end and len(out) < max_requests:
            t0 = time.perf_counter()
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"normal request got {resp.status}")
            out.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return out
