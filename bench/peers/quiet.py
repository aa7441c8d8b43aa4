"""What both peer optimizers (bench/peers/olive, bench/peers/openvino) share: the command line, stdout kept for
their one JSON line, logging on stderr, package versions. Standard library only: each peer's venv imports it
beside its own packages."""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Run = Callable[[Path, Path, str, Path], dict[str, Any]]  # (onnx, data.npz, kind, out folder) -> artifacts


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send fd 1 (Python's and native code's prints, progress bars) to stderr while the libraries work."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def logger(prefix: str) -> Callable[[str], None]:
    """A `log(msg)` that writes `[prefix] msg` to stderr."""

    def log(msg: str) -> None:
        print(f"[{prefix}] {msg}", file=sys.stderr, flush=True)

    return log


def versions(*packages: str) -> str:
    return " ".join(f"{p} {importlib.metadata.version(p)}" for p in packages)


def main(peer: str, version: str, run: Run, description: str) -> int:
    """`--onnx M --data D --kind K --out O`: run the peer's recipes, print one JSON line {"peer", "version",
    "artifacts", "failed"?}; exit 1 when no artifact was made (the failure is in the JSON line)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--onnx", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--kind", choices=("mlp", "cnn", "transformer"), required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"peer": peer, "version": version, "artifacts": []}
    with stdout_to_stderr():
        try:
            result.update(run(args.onnx.resolve(), args.data.resolve(), args.kind, out))
        except Exception as e:  # the benchmark reads the failure from the JSON line
            traceback.print_exc(file=sys.stderr)
            result["failed"] = [{"name": peer, "error": f"{type(e).__name__}: {e}"[:2000]}]
    print(json.dumps(result), flush=True)
    return 0 if result["artifacts"] else 1
