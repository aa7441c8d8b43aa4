"""Many deployments in one `deployc build`: wall time from 1 to 20 specs, each built in a worker process.

Each spec is the digits example (quantize int8-dynamic, local + tflite targets) under its own name and with its
own model bytes, built with an empty cache, so every spec does the full work. Printed per count: wall time, time
per spec, and the speed-up of `-j 2` (both cores) over `-j 1` measured in the same run.
Run: python bench/many.py [--counts 1,2,5,10,20]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits"
SPEC = """apiVersion: deployc/v1
name: model-{i}
model: {{path: model.keras, labels: labels.txt}}
data:
  eval: {{path: data/eval.npz, x: x, y: y}}
  calibration: {{path: data/calib.npz, x: x}}
optimize:
  - quantize: {{mode: int8-dynamic}}
gates: {{min_agreement: 0.98}}
measure: {{min_seconds: 0.2}}
targets:
  local: {{}}
  tflite: {{quantization: dynamic}}
"""


def distinct(model: Path, i: int) -> None:
    """Give each copy its own bytes (a zip comment), so no spec reuses another's cached steps: the cache is
    content-addressed, and identical models would be converted and measured once for all specs."""
    import zipfile

    with zipfile.ZipFile(model, "a") as z:
        z.comment = f"copy {i}".encode()


def build(specs: Path, jobs: int, cache: Path) -> float:
    env = dict(os.environ, DEPLOYC_CACHE_DIR=str(cache), TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "deployc", "build", str(specs), "--out", str(specs.parent / "out"),
                    "-q", "-j", str(jobs)], check=True, env=env, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="1,2,5,10,20")
    counts = [int(c) for c in ap.parse_args().counts.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        trained = Path(tmp) / "trained"
        subprocess.run([sys.executable, str(EXAMPLE / "train.py"), str(trained)], check=True, capture_output=True)
        print(f"{'specs':>5} {'-j 1 s':>8} {'-j 2 s':>8} {'s/spec (-j 2)':>14} {'speed-up':>9}")
        for n in counts:
            specs = Path(tmp) / f"n{n}" / "specs"
            for i in range(n):
                d = specs / f"m{i}"
                shutil.copytree(trained, d)
                distinct(d / "model.keras", i)
                (d / "deploy.yaml").write_text(SPEC.format(i=i))
            serial = build(specs, 1, Path(tmp) / f"cache-{n}-1")
            shutil.rmtree(specs.parent / "out")
            parallel = build(specs, 2, Path(tmp) / f"cache-{n}-2")
            print(f"{n:>5} {serial:>8.1f} {parallel:>8.1f} {parallel / n:>14.2f} {serial / parallel:>8.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
