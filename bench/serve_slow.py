"""`deployc serve` under slow and hostile clients: latency and memory of normal traffic, quiet vs under attack.

Usage: PYTHONPATH=. python bench/serve_slow.py [--seconds 3] [--stalled 100] [--declared-mib 7] [--sent-mib 4]
                                               [--slowloris 200] [--wrk]
The attack: `--stalled` connections each declare a `--declared-mib` body, send `--sent-mib` of it and stall, plus
`--slowloris` connections that send a partial request head and then one byte a second. Meanwhile one client sends
sequential keep-alive inference requests; the table gives its p50/p99 and the server's RSS, quiet and under attack.
`--wrk` adds quiet req/s with wrk (8 connections, the small classifier) to see the cost on the hot path.
Limits come from the server's defaults (docs/serving.md, "Limits"); `--limits '{"body_timeout_s": 30}'` overrides.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from machine import cpu_info  # noqa: E402
from serve_support import Server, latencies, rss_bytes, stalled_bodies, v2_body, write_bundle  # noqa: E402

BODY = json.dumps(v2_body(np.array([[0.1, 0.2, 0.3, 0.4]], np.float32))).encode()
LUA = 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = {body}\n'


def slowloris(port: int, count: int, stop: threading.Event) -> list[socket.socket]:
    """`count` connections sending a request head one byte a second until `stop` (or the server closes them)."""
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)

    def drip() -> None:
        while not stop.wait(1.0):
            for s in socks:
                with contextlib.suppress(OSError):
                    s.send(b"X")

    threading.Thread(target=drip, daemon=True).start()
    return socks


def summary(lat: list[float], rss: int) -> tuple[float, float, float, int]:
    ms = np.array(lat) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), rss / 2**20, len(lat)


def closed(socks: list[socket.socket]) -> tuple[int, int]:
    """(sockets the server closed, sockets it answered with 503) after the attack; reads what arrived."""
    gone = refused = 0
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(4096)
            gone += not data or b"connection: close" in data.lower()
            refused += data.startswith(b"HTTP/1.1 503")
        except BlockingIOError:
            pass
        except OSError:
            gone += 1
    return gone, refused


def wrk_rps(port: int, seconds: int) -> float | None:
    if shutil.which("wrk") is None:
        print("wrk not installed: no req/s row", file=sys.stderr)
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA.format(body=json.dumps(BODY.decode())))
    out = subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", "-s", f.name,
                          f"http://127.0.0.1:{port}/v2/models/iris/infer"], capture_output=True, text=True).stdout
    Path(f.name).unlink()
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(m.group(1)) if m else None


def attack_phase(srv: Server, args: argparse.Namespace) -> tuple[tuple[float, float, float, int], str]:
    stop, peak = threading.Event(), [0]

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], rss_bytes(srv.proc.pid))

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.monotonic()
    loris = slowloris(srv.port, args.slowloris, stop)
    stalled = stalled_bodies(srv.port, args.stalled, args.declared_mib << 20, args.sent_mib << 20)
    setup = time.monotonic() - t0
    lat = latencies(srv.port, BODY, args.seconds)
    stop.set()
    gone, refused = closed(stalled)
    loris_gone, _ = closed(loris)
    for s in stalled + loris:
        s.close()
    note = (f"attack set up in {setup:.1f} s; stalled bodies: {refused} answered 503, {gone} closed by the server "
            f"during the run; slowloris: {loris_gone} closed; peak RSS {peak[0] / 2**20:.0f} MiB")
    return summary(lat, max(peak[0], rss_bytes(srv.proc.pid))), note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--stalled", type=int, default=100)
    ap.add_argument("--declared-mib", type=int, default=7)
    ap.add_argument("--sent-mib", type=int, default=4)
    ap.add_argument("--slowloris", type=int, default=200)
    ap.add_argument("--limits", default="{}", help="JSON object merged into serving.json's limits")
    ap.add_argument("--wrk", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        bundle = write_bundle(Path(d) / "iris", server={"max_body_bytes": 8 << 20}, limits=json.loads(args.limits))
        with Server(bundle) as srv:
            latencies(srv.port, BODY, 0.5)  # warm up
            rps = wrk_rps(srv.port, max(1, round(args.seconds))) if args.wrk else None
            quiet = summary(latencies(srv.port, BODY, args.seconds), rss_bytes(srv.proc.pid))
            attack, note = attack_phase(srv, args)
    print(f"CPU: {cpu_info()}; python {platform.python_version()}")
    print(f"attack: {args.stalled} x {args.declared_mib} MiB declared, {args.sent_mib} MiB sent, stalled; "
          f"{args.slowloris} slowloris")
    print(f"{'phase':<14}{'p50 ms':>9}{'p99 ms':>9}{'RSS MiB':>9}{'requests':>10}")
    for name, (p50, p99, rss, n) in (("quiet", quiet), ("under attack", attack)):
        print(f"{name:<14}{p50:>9.2f}{p99:>9.2f}{rss:>9.0f}{n:>10}")
    print(note)
    if rps is not None:
        print(f"quiet req/s (wrk, 8 connections): {rps:.0f}")


if __name__ == "__main__":
    main()
