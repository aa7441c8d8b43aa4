"""What each install costs, and how fast `deployc serve` starts in the light one, measured in one run.

The wheel `python -m build` makes goes into fresh venvs: core (`deployc`), `deployc[serve]` (what the generated
serving images install) and `deployc[all]` (the full install). For each: installed size (the venv folder, less
an empty venv's) and install time (from pip's cache where it holds the files, so network time is left out).
Then the cold start of `deployc serve` on the digits bundle, from process start to the first 200 of
/v2/health/ready, in the `[serve]` venv and in the full one.

Goals: `[serve]` at most 1/5 of the full install's size; cold start at most 1 s.
Run: python bench/install.py [--starts N] [--bundle BUILD/local]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from machine import cpu_info

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


def make_wheel(out: Path) -> Path:
    src = out / "src"
    shutil.copytree(ROOT / "deployc", src / "deployc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out / "dist"),
                    str(src)], check=True, capture_output=True)
    (wheel,) = (out / "dist").glob("deployc-*.whl")
    return wheel


def make_venv(path: Path, requirement: str | None) -> float:
    """A fresh venv with `requirement` installed (None: an empty venv); returns the install's seconds."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, env=_env())
    if requirement is None:
        return 0.0
    t0 = time.perf_counter()
    r = subprocess.run([str(path / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", requirement], env=_env(), capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"pip install {requirement} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def digits_bundle(work: Path) -> Path:
    """The digits example trained and built with this checkout, into `work`."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", DEPLOYC_CACHE_DIR=str(work / "cache"))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    project = work / "digits"
    project.mkdir()
    subprocess.run([sys.executable, str(ROOT / "examples" / "digits" / "train.py"), str(project)], check=True,
                   capture_output=True, env=env)
    shutil.copyfile(ROOT / "examples" / "digits" / "deploy.yaml", project / "deploy.yaml")
    subprocess.run([sys.executable, "-m", "deployc", "build", "deploy.yaml", "-q"], cwd=project, check=True,
                   capture_output=True, env=env)
    return project / "build" / "digits" / "local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cold_start(deployc: Path, bundle: Path) -> float:
    """Seconds from starting `deployc serve` to its first ready answer."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(deployc), "serve", str(bundle), "--port", str(port)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"deployc serve exited: {proc.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.005)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--starts", type=int, default=7, help="cold starts per install")
    ap.add_argument("--bundle", type=Path, help="a built local/ folder (default: build the digits example)")
    args = ap.parse_args()
    print(f"machine: {cpu_info()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        wheel = make_wheel(work / "wheel")
        bundle = args.bundle or digits_bundle(work)
        make_venv(work / "empty", None)
        floor = size_mb(work / "empty")
        installs = {"core": str(wheel), "[serve]": f"deployc[serve] @ {wheel.as_uri()}",
                    "[all]": f"deployc[all] @ {wheel.as_uri()}"}
        sizes, secs = {}, {}
        for name, req in installs.items():
            secs[name] = make_venv(work / name, req)
            sizes[name] = size_mb(work / name) - floor
        print(f"\n{'install':<10} {'size MB':>9} {'of [all]':>9} {'install s':>10}")
        for name in installs:
            print(f"{name:<10} {sizes[name]:>9.0f} {sizes[name] / sizes['[all]']:>9.3f} {secs[name]:>10.1f}")
        ratio = sizes["[serve]"] / sizes["[all]"]
        print(f"[serve] / [all] = {ratio:.3f} (goal <= 0.2: {'met' if ratio <= 0.2 else 'MISSED'})")

        print(f"\ncold start of `deployc serve` ({bundle}), process start to ready, "
              f"{args.starts} starts each")
        print(f"{'install':<10} {'median s':>9} {'min s':>7} {'max s':>7}")
        for name in ("[serve]", "[all]"):
            cold_start(work / name / "bin" / "deployc", bundle)  # first start: file-system cache warm-up
            runs = [cold_start(work / name / "bin" / "deployc", bundle) for _ in range(args.starts)]
            med = statistics.median(runs)
            goal = f" (goal <= 1 s: {'met' if med <= 1 else 'MISSED'})" if name == "[serve]" else ""
            print(f"{name:<10} {med:>9.3f} {min(runs):>7.3f} {max(runs):>7.3f}{goal}")


if __name__ == "__main__":
    main()
