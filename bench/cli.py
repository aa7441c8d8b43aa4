"""Cold wall time of the CLI: `deployc validate`, a no-op rebuild and a full build, with `import pydantic` as
the floor, all measured in one run on the digits example (trained into a temporary folder).

Targets: validate under 0.5 s; a no-op rebuild at least 20x faster than a full build.
Run: python bench/cli.py [--repeat N]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits"


def env(cache: Path) -> dict[str, str]:
    e = dict(os.environ, DEPLOYC_CACHE_DIR=str(cache), TF_CPP_MIN_LOG_LEVEL="3")
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def timed(cmd: list[str], cwd: Path, cache: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env(cache), check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "digits"
        work.mkdir()
        subprocess.run([py, str(EXAMPLE / "train.py"), str(work)], check=True, capture_output=True, env=env(work))
        shutil.copyfile(EXAMPLE / "deploy.yaml", work / "deploy.yaml")
        deployc = [py, "-m", "deployc"]
        rows: dict[str, list[float]] = {"python -c 'import pydantic' (floor)": [], "deployc validate": [],
                                        "deployc plan": [], "deployc build (full, empty cache)": [],
                                        "deployc build (no-op rebuild)": []}
        for i in range(args.repeat):
            cache = Path(tmp) / f"cache{i}"
            rows["python -c 'import pydantic' (floor)"].append(timed([py, "-c", "import pydantic"], work, cache))
            rows["deployc validate"].append(timed(deployc + ["validate", "deploy.yaml"], work, cache))
            rows["deployc plan"].append(timed(deployc + ["plan", "deploy.yaml"], work, cache))
            if i < 2:  # full builds are slow: two are enough for a median
                rows["deployc build (full, empty cache)"].append(
                    timed(deployc + ["build", "deploy.yaml", "-q", "--out", "out"], work, cache))
            rows["deployc build (no-op rebuild)"].append(
                timed(deployc + ["build", "deploy.yaml", "-q", "--out", "out"], work, Path(tmp) / "cache0"))
        med = {k: statistics.median(v) for k, v in rows.items()}
        print(f"{'command':<40} {'median s':>9} {'min s':>7}  runs")
        for k, v in rows.items():
            print(f"{k:<40} {med[k]:>9.3f} {min(v):>7.3f}  {len(v)}")
        full, noop = med["deployc build (full, empty cache)"], med["deployc build (no-op rebuild)"]
        print(f"\nvalidate: {med['deployc validate']:.3f} s (target < 0.5 s); "
              f"no-op rebuild is {full / noop:.1f}x faster than a full build (target >= 20x)")


if __name__ == "__main__":
    main()
