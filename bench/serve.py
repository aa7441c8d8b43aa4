"""Throughput and latency of `deployc serve` vs a plain FastAPI app vs raw `session.run`, in one run.

Usage: PYTHONPATH=. python bench/serve.py [--duration 5] [--concurrency 1,16,64]
Drives both servers with `wrk` (Debian: apt-get install wrk) posting the same KServe v2 body for the wide MLP
64 -> 1024 -> 1024 -> 1024 -> 10. Rows that need wrk are skipped, with a message, when it is not installed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serve_support import Server, write_bundle  # noqa: E402

LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = {body}
"""


def raw_session(model: Path, seconds: float) -> dict[str, float]:
    """The floor: in-process session.run at batch 1, same thread settings as the served bundle."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    for _ in range(50):
        sess.run(None, {"x": x})
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        sess.run(None, {"x": x})
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1000
    return {"rps": len(times) / sum(times), "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "errors": 0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    assert m, text
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def run_wrk(url: str, lua: Path, conc: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", f"-c{conc}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(lua), url],
                         capture_output=True, text=True, check=True).stdout
    lat = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)", out, re.M))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    errors += int((re.search(r"Non-2xx or 3xx responses: (\d+)", out) or [0, 0])[1])
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]), "p50": _ms(lat["50"]),
            "p99": _ms(lat["99"]), "errors": errors}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_fastapi(model: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "MODEL_PATH": str(model), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.plain_fastapi_app:app", "--host", "127.0.0.1",
                             "--port", str(port), "--no-access-log", "--log-level", "warning"], env=env, cwd=ROOT)
    import urllib.request

    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1)
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the FastAPI app did not start")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--concurrency", default="1,16,64")
    args = ap.parse_args()
    concs = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="deployc-bench-"))
    bundle = write_bundle(work / "mlp", model="mlp", name="mlp", labels=None,
                          server={"max_body_bytes": 8 << 20}, batching={"max_batch_size": 64, "max_delay_ms": 2.0})
    model = bundle / "local" / "model.onnx"
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}]})
    lua = work / "post.lua"
    lua.write_text(LUA.format(body=json.dumps(body)))
    rows: list[tuple[str, str, dict[str, float]]] = [("raw session.run (batch 1)", "-", raw_session(model, 3.0))]
    if shutil.which("wrk") is None:
        print("wrk not found: skipping the HTTP rows (Debian: apt-get install -y wrk)")
    else:
        try:
            fastapi: tuple[subprocess.Popen[bytes], int] | None = start_fastapi(model)
        except (RuntimeError, ImportError) as e:
            print(f"plain FastAPI app skipped: {e}")
            fastapi = None
        try:
            with Server(bundle) as srv:
                targets = [("deployc serve", srv.port)] + ([("plain FastAPI + onnxruntime", fastapi[1])]
                                                           if fastapi else [])
                # interleaved per concurrency level, so load from other processes hits both alike
                for c in concs:
                    for name, port in targets:
                        url = f"http://127.0.0.1:{port}/v2/models/mlp/infer"
                        run_wrk(url, lua, c, 1)  # warm the connections and the batch sizes
                        rows.append((name, str(c), run_wrk(url, lua, c, args.duration)))
        finally:
            if fastapi:
                fastapi[0].terminate()
                fastapi[0].wait()
    rows[1:] = sorted(rows[1:], key=lambda r: (r[0] != "deployc serve", int(r[1])))
    print(f"\nwide MLP 64-1024-1024-1024-10, {os.cpu_count()} CPUs, {args.duration:g} s per row (wrk -t1)")
    print(f"{'server':30} {'conc':>5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, conc, r in rows:
        print(f"{name:30} {conc:>5} {r['rps']:10.0f} {r['p50']:8.2f} {r['p99']:8.2f} {int(r['errors']):7d}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
