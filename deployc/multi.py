"""Several specs in one `deployc build`: parallel worker processes, one build folder per spec."""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from deployc.errors import DeploycError, UsageError


def _worker(spec: Path, args: argparse.Namespace) -> tuple[int, list[str]]:
    from deployc.cli import build_one

    try:
        return build_one(spec, args, prefix=f"{spec}: "), []
    except DeploycError as exc:
        return exc.exit_code, exc.lines()


def build_many(specs: list[Path], args: argparse.Namespace) -> int:
    """Build every spec (each into <out>/<name>); the exit code is the worst of them."""
    import multiprocessing
    import os

    from deployc import api

    specs = list(dict.fromkeys(specs))  # the same file named twice is built once
    names = {s: api.validate(s).name for s in specs}  # every spec valid before any work starts
    dupes = [n for n, k in Counter(names.values()).items() if k > 1]
    if dupes:
        raise UsageError(f"several specs are named {dupes[0]!r}; names must be unique to build them together")
    base = args.out or Path("build")
    jobs = args.jobs or min(len(specs), os.cpu_count() or 1)
    codes = []
    ctx = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = {pool.submit(_worker, s, argparse.Namespace(**{**vars(args), "out": base / names[s]})): s
                   for s in specs}
        for fut in as_completed(futures):
            code, lines = fut.result()
            codes.append(code)
            for line in lines:
                print(line, file=sys.stderr)
    failed = sum(1 for c in codes if c)
    print(f"{len(specs) - failed} of {len(specs)} builds succeeded", file=sys.stderr)
    return max(codes)
