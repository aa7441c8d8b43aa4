"""Throughput of `deployc serve` over gRPC (raw tensors) vs HTTP JSON, on one server process, in one run.

Usage: PYTHONPATH=. python bench/serve_grpc.py [--duration 5] [--concurrency 1,16,64] [--model mlp] [--rows 1]

One `deployc serve BUNDLE --grpc-port 0` serves both protocols (same model, batcher, metrics). Each row drives
it for `--duration` seconds with `--concurrency` requests in flight, all posting the same `--rows` rows:
- `gRPC (tritonclient.grpc.aio)`: ModelInfer with raw_input_contents, tritonclient's asyncio client;
- `HTTP JSON (aiohttp)`: the same client style (asyncio, one process), a KServe v2 JSON body prepared once;
- `HTTP JSON (wrk)`: the C load generator bench/serve.py uses (when installed): the cheapest possible client;
- `gRPC (h2load)`: its gRPC counterpart, nghttp2's h2load posting the same framed ModelInferRequest over HTTP/2
  (Debian: apt-get install nghttp2-client), one connection per in-flight request like wrk.
The rows are interleaved per concurrency level, so load from other processes hits each protocol alike.
This process never imports deployc's generated gRPC modules (they clash with tritonclient's in protobuf's pool).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from serve import LUA, _ms, run_wrk  # noqa: E402
from serve_support import Server, write_bundle  # noqa: E402

Call = Callable[[], Awaitable[None]]


async def drive(call: Call, conc: int, seconds: float) -> dict[str, float]:
    """`conc` tasks calling `call` back to back until the deadline; requests/s and latency percentiles."""
    times: list[float] = []
    errors = 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                await call()
            except Exception:  # counted, the run goes on
                errors += 1
                continue
            times.append(time.perf_counter() - t0)

    t_start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    wall = time.perf_counter() - t_start
    ms = np.array(times or [0.0]) * 1000
    return {"rps": len(times) / wall, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "errors": errors}


async def grpc_rows(port: int, name: str, x: np.ndarray, concs: list[int], seconds: float) -> list[dict[str, float]]:
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)

    async def call() -> None:
        result = await client.infer(name, [inp])
        result.as_numpy("probabilities")

    out = []
    for c in concs:
        await drive(call, c, 1.0)  # warm the channel and the batch sizes
        out.append(await drive(call, c, seconds))
    await client.close()
    return out


async def http_rows(port: int, name: str, body: bytes, concs: list[int], seconds: float) -> list[dict[str, float]]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v2/models/{name}/infer"
    out = []
    for c in concs:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as session:
            async def call() -> None:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    if r.status != 200:
                        raise RuntimeError(f"HTTP {r.status}")
                    await r.read()

            await drive(call, c, 1.0)
            out.append(await drive(call, c, seconds))
    return out


def bundle_for(work: Path, model: str) -> tuple[Path, str, int]:
    name = "mlp" if model == "mlp" else "iris"
    bundle = write_bundle(work / name, model=model, name=name, labels=None, server={"max_body_bytes": 8 << 20},
                          batching={"max_batch_size": 64, "max_delay_ms": 2.0})
    return bundle, name, 64 if model == "mlp" else 4


def measure(srv: Server, name: str, x: np.ndarray, concs: list[int], seconds: float, work: Path
            ) -> list[tuple[str, int, dict[str, float]]]:
    grpc_port = int(re.search(r"gRPC on 127\.0\.0\.1:(\d+)", srv.text())[1])  # type: ignore[index]
    body = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    lua = work / "post.lua"
    lua.write_text(LUA.format(body=json.dumps(body.decode())))
    framed = grpc_frame(name, x, work / "infer.grpc")
    rows = []
    for c in concs:  # interleaved: each protocol at this concurrency, then the next level
        rows.append(("gRPC (tritonclient.grpc.aio)", c, asyncio.run(grpc_rows(grpc_port, name, x, [c], seconds))[0]))
        rows.append(("HTTP JSON (aiohttp)", c, asyncio.run(http_rows(srv.port, name, body, [c], seconds))[0]))
        if shutil.which("wrk"):
            url = f"http://127.0.0.1:{srv.port}/v2/models/{name}/infer"
            run_wrk(url, lua, c, 1)
            rows.append(("HTTP JSON (wrk -t1)", c, run_wrk(url, lua, c, seconds)))
        if shutil.which("h2load"):
            run_h2load(grpc_port, framed, c, 1)
            rows.append(("gRPC (h2load -t1)", c, run_h2load(grpc_port, framed, c, seconds)))
    return rows


def grpc_frame(name: str, x: np.ndarray, path: Path) -> Path:
    """A length-prefixed ModelInferRequest with raw contents: the body of one gRPC call."""
    from tritonclient.grpc import service_pb2 as pb  # the same messages, without deployc's generated modules

    req = pb.ModelInferRequest(model_name=name, raw_input_contents=[x.tobytes()])
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    data = req.SerializeToString()
    path.write_bytes(b"\0" + len(data).to_bytes(4, "big") + data)
    return path


def run_h2load(port: int, framed: Path, conc: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(["h2load", "-t1", f"-c{conc}", "-m1", f"-D{max(1, round(seconds))}", "-d", str(framed),
                          "-H", "content-type: application/grpc", "-H", "te: trailers",
                          f"http://127.0.0.1:{port}/inference.GRPCInferenceService/ModelInfer"],
                         capture_output=True, text=True, check=True).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    assert done and lat, out
    # h2load reports min / max / mean, not percentiles: the mean goes in the p50 column, p99 stays empty
    return {"rps": int(done[2]) / max(1, round(seconds)), "p50": _ms(lat[3]), "p99": float("nan"),
            "errors": int(done[1]) - int(done[2])}


def grpc_failures(srv: Server) -> dict[str, int]:
    """ModelInfer calls answered with a non-OK status, by `code` (h2load only sees HTTP/2 200s). 499: calls
    cut when a timed run ends with requests in flight."""
    from prometheus_client.parser import text_string_to_metric_families

    text = srv.request("GET", "/metrics")[2].decode()
    return {s.labels["code"]: int(s.value) for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == "deployc_requests_total" and s.labels.get("route") == "grpc_infer"
            and s.labels.get("code") != "200"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--model", choices=["mlp", "classifier"], default="mlp",
                    help="mlp: 64-1024-1024-1024-10 (compute-bound); classifier: 4-3 (protocol-bound)")
    ap.add_argument("--rows", type=int, default=1, help="rows per request")
    args = ap.parse_args()
    concs = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="deployc-bench-grpc-"))
    try:
        bundle, name, width = bundle_for(work, args.model)
        x = np.random.default_rng(0).standard_normal((args.rows, width)).astype(np.float32)
        with Server(bundle, "--grpc-port", "0") as srv:
            rows = measure(srv, name, x, concs, args.duration, work)
            failures = grpc_failures(srv)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not shutil.which("wrk"):
        print("wrk not found: the wrk rows are skipped (Debian: apt-get install -y wrk)")
    print(f"\n{args.model}, {args.rows} row(s) per request, {os.cpu_count()} CPUs, {args.duration:g} s per row, "
          "one server process for both protocols")
    print(f"{'client':30} {'conc':>5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for client, conc, r in sorted(rows, key=lambda r: (r[0], r[1])):
        p99 = "-" if r["p99"] != r["p99"] else f"{r['p99']:.2f}"
        print(f"{client:30} {conc:>5} {r['rps']:10.0f} {r['p50']:8.2f} {p99:>8} {int(r['errors']):7d}")
    print(f"gRPC calls answered with a non-OK status, by HTTP-equivalent code (server metrics): {failures or 0}")
    if shutil.which("h2load"):
        print("(h2load gives no percentiles: its p50 column is the mean latency)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
