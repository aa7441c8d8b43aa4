"""Many deployments in one `deployc build`.

Each spec is the digits example (quantize int8-dynamic, local + tflite targets) under its own name and with its
own model bytes, so no spec reuses another's cached steps.

`--counts 1,2,5,10,20`: wall time from 1 to 20 specs, each count built with an empty cache, with the speed-up
of `-j 2` (both cores) over `-j 1` measured in the same run.

`--count 50` (the default): a monorepo of 50 specs in CI. Wall times of one spec cold (alone, empty cache); all
specs cold with `-j 1` and with `-j 2`; warm from the local cache; warm from the remote cache on a second runner
(an empty local cache, the S3 cache a moto server holds, filled by the cold `-j 2` run); and all specs again
after one model changed (local cache warm). Goals: warm remote >= 10x faster than cold, one changed model
<= 1.2x one cold spec, `-j 2` >= 1.7x `-j 1`. The remote rows are skipped where `deployc build` has no
`--remote-cache`. A full run takes many minutes; `--count 4` checks the bench itself.
Run: python bench/many.py [--count 50 | --counts 1,2,5,10,20]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import cpu_info  # noqa: E402

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


def build(specs: Path, jobs: int, cache: Path, extra_env: dict[str, str] | None = None,
          out: Path | None = None) -> float:
    """Wall time of one `deployc build` of `specs` (a folder, or one deploy.yaml) into a fresh output folder."""
    env = dict(os.environ, DEPLOYC_CACHE_DIR=str(cache), TF_CPP_MIN_LOG_LEVEL="3", **(extra_env or {}))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = out or (specs.parent / "out")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "deployc", "build", str(specs), "--out", str(out),
                    "-q", "-j", str(jobs)], check=True, env=env, capture_output=True)
    return time.perf_counter() - t0


def make_specs(trained: Path, specs: Path, n: int) -> None:
    for i in range(n):
        d = specs / f"m{i}"
        shutil.copytree(trained, d)
        distinct(d / "model.keras", i)
        (d / "deploy.yaml").write_text(SPEC.format(i=i))


def scaling(trained: Path, tmp: Path, counts: list[int]) -> None:
    print(f"{'specs':>5} {'-j 1 s':>8} {'-j 2 s':>8} {'s/spec (-j 2)':>14} {'speed-up':>9}")
    for n in counts:
        specs = tmp / f"n{n}" / "specs"
        make_specs(trained, specs, n)
        serial = build(specs, 1, tmp / f"cache-{n}-1")
        parallel = build(specs, 2, tmp / f"cache-{n}-2")
        print(f"{n:>5} {serial:>8.1f} {parallel:>8.1f} {parallel / n:>14.2f} {serial / parallel:>8.2f}x",
              flush=True)


def remote_cache_supported() -> bool:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    help_text = subprocess.run([sys.executable, "-m", "deployc", "build", "--help"], env=env, capture_output=True,
                               text=True).stdout
    return "--remote-cache" in help_text


@contextmanager
def s3_cache(bucket: str = "deployc-bench", prefix: str = "steps") -> Iterator[dict[str, str]]:
    """A moto S3 server on a free loopback port with an empty bucket; yields the environment that points
    deployc's remote cache at it (fake credentials: moto accepts any)."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on stdout

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "DEPLOYC_REMOTE_CACHE": f"s3://{bucket}/{prefix}",
           "DEPLOYC_REMOTE_CACHE_ENDPOINT": f"http://127.0.0.1:{port}"}
    try:
        boto3.client("s3", endpoint_url=env["DEPLOYC_REMOTE_CACHE_ENDPOINT"], region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=bucket)
        yield env
    finally:
        server.stop()


def monorepo(trained: Path, tmp: Path, n: int) -> None:
    """The CI scenario of a monorepo: see the module's docstring."""
    specs = tmp / "monorepo" / "models"
    make_specs(trained, specs, n)
    rows: dict[str, float | None] = {}
    rows["one spec, cold"] = build(specs / "m0" / "deploy.yaml", 1, tmp / "cache-single", out=tmp / "out-single")
    rows[f"{n} specs, cold, -j 1"] = build(specs, 1, tmp / "cache-j1")
    rows[f"{n} specs, cold, -j 2"] = build(specs, 2, tmp / "cache-j2")
    rows[f"{n} specs, warm local cache, -j 2"] = build(specs, 2, tmp / "cache-j2")
    remote = remote_cache_supported()
    with s3_cache() if remote else _nothing() as remote_env:
        rows[f"{n} specs, cold, -j 2, filling the remote cache"] = (
            build(specs, 2, tmp / "cache-runner-1", remote_env) if remote else None)
        rows[f"{n} specs, warm remote cache (second runner), -j 2"] = (
            build(specs, 2, tmp / "cache-runner-2", remote_env) if remote else None)
    distinct(specs / "m0" / "model.keras", -1)
    rows[f"{n} specs, one model changed, -j 2"] = build(specs, 2, tmp / "cache-j2")

    width = max(map(len, rows))
    for what, seconds in rows.items():
        shown = "skipped (no remote cache support)" if seconds is None else f"{seconds:8.1f} s"
        print(f"{what:<{width}}  {shown}")
    times = list(rows.values())
    single, cold1, cold2, _, filling, warm_remote, changed = times
    assert single is not None and cold1 is not None and cold2 is not None and changed is not None
    print()
    print(f"-j 2 over -j 1: {cold1 / cold2:.2f}x (goal >= 1.7x): {_verdict(cold1 / cold2 >= 1.7)}")
    if warm_remote is None or filling is None:
        print("cold over warm remote: skipped (no remote cache support)")
    else:
        ratio = cold2 / warm_remote
        print(f"cold over warm remote: {ratio:.1f}x (goal >= 10x): {_verdict(ratio >= 10)}; "
              f"filling the remote cache costs {filling / cold2:.2f}x a cold build")
    print(f"one model changed over one spec cold: {changed / single:.2f}x (goal <= 1.2x): "
          f"{_verdict(changed / single <= 1.2)}")


@contextmanager
def _nothing() -> Iterator[dict[str, str]]:
    yield {}


def _verdict(met: bool) -> str:
    return "met" if met else "missed"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", help="the scaling table: comma-separated spec counts, e.g. 1,2,5,10,20")
    ap.add_argument("--count", type=int, default=50, help="specs in the monorepo scenario (default 50)")
    args = ap.parse_args()
    print(cpu_info(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        trained = Path(tmp) / "trained"
        subprocess.run([sys.executable, str(EXAMPLE / "train.py"), str(trained)], check=True, capture_output=True)
        if args.counts:
            scaling(trained, Path(tmp), [int(c) for c in args.counts.split(",")])
        else:
            monorepo(trained, Path(tmp), args.count)


if __name__ == "__main__":
    main()
