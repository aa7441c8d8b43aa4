"""Latency of `POST /v2/models/{name}/explain` through the real server, each method, 1 and 8 rows.

Uses the digits build (`make demo` writes build/digits; built here when missing). The bundle's serving.json
names the method, so one build serves all three: each is measured on a copy whose `explain.method` is set.
The baseline is `/infer` of the same rows on the same server, in the same run. CPU model and flags printed.

    .venv/bin/python bench/explain.py
"""
from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from attributions import cpu  # noqa: E402

BUILD = ROOT / "build" / "digits" / "local"
REQUESTS = {1: 60, 8: 20}  # requests per row count (after 3 warm-up requests)


def ensure_build() -> None:
    if (BUILD / "serving.json").is_file() and "explain" in json.loads((BUILD / "serving.json").read_text()):
        return
    ex = ROOT / "examples" / "digits"
    if not (ex / "model.keras").exists():
        subprocess.run([sys.executable, str(ex / "train.py")], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "deployc", "build", "-q", str(ex / "deploy.yaml")], check=True, cwd=ROOT)


def serve(bundle: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    proc = subprocess.Popen([sys.executable, "-m", "deployc.serve", str(bundle), "--port", "0"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = re.search(r"on http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
        if m and _ready(int(m.group(1))):
            return proc, int(m.group(1)), log
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the server did not start:\n{log.read_text()}")


def _ready(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/v2/health/ready")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def timed(port: int, path: str, body: bytes, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    out = []
    for i in range(n + 3):
        t0 = time.perf_counter()
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise SystemExit(f"{path}: HTTP {resp.status}")
        if i >= 3:
            out.append((time.perf_counter() - t0) * 1000)
    conn.close()
    return out


def main() -> int:
    ensure_build()
    x = np.load(ROOT / "examples" / "digits" / "data" / "eval.npz")["x"].astype(np.float32)
    print(f"CPU: {cpu()}")
    print("| method | rows | infer p50 ms | explain p50 ms | explain p99 ms | model rows per explained row |")
    print("|---|---|---|---|---|---|")
    for method in ("integrated-gradients", "kernel-shap", "occlusion"):
        with tempfile.TemporaryDirectory(prefix="deployc-bench-explain-") as tmp:
            bundle = Path(tmp) / "local"
            shutil.copytree(BUILD, bundle)
            cfg = json.loads((bundle / "serving.json").read_text())
            cfg["explain"]["method"] = method
            (bundle / "serving.json").write_text(json.dumps(cfg))
            steps, samples = cfg["explain"]["steps"], cfg["explain"]["samples"]
            proc, port, log = serve(bundle)
            try:
                for rows, n in REQUESTS.items():
                    part = x[:rows]
                    body = json.dumps({"inputs": [{"name": "pixels", "shape": list(part.shape), "datatype": "FP32",
                                                   "data": part.ravel().tolist()}]}).encode()
                    infer = timed(port, "/v2/models/digits/infer", body, n)
                    explain = timed(port, "/v2/models/digits/explain", body, n)
                    active = float(np.mean(np.count_nonzero(part, axis=1)))
                    cost = {"integrated-gradients": f"{2 * active * steps:,.0f} (2 x {active:.0f} x {steps})",
                            "kernel-shap": f"{samples}",
                            "occlusion": f"{active + 1:.0f} (features off the baseline + 1)"}[method]
                    print(f"| {method} | {rows} | {np.percentile(infer, 50):.2f} | {np.percentile(explain, 50):.1f} | "
                          f"{np.percentile(explain, 99):.1f} | {cost} |", flush=True)
            finally:
                proc.terminate()
                proc.wait(30)
                log.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
