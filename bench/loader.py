"""How long deploy.yaml takes to be accepted or refused, for hostile and merely big files under the 1 MiB limit.

Each case runs `deployc.api.validate` in a fresh process (so the peak RSS it reports is that case's own); the
floor is `yaml.compose` of the small valid spec (tests/specs/good/full.yaml), measured in the same run. Target:
every case under 1 s.

Run: python bench/loader.py [--loader FILE] [--against FILE] [--repeat N]
`--loader FILE` measures another version of deployc/compiler/load.py; `--against FILE` measures one alongside,
case by case, as the baseline (so that both see the same machine load), e.g. the committed one:
    git show HEAD:deployc/compiler/load.py > /tmp/load_old.py && python bench/loader.py --against /tmp/load_old.py
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from io import StringIO
from pathlib import Path

from machine import cpu_info

ROOT = Path(__file__).resolve().parents[1]
GOOD = ROOT / "tests" / "specs" / "good"
LIMIT = 1024 * 1024 - 64  # just under deploy.yaml's size limit
HEAD = "apiVersion: deployc/v1\nname: big\nmodel: {path: model.onnx}\n"


def _fill(head: str, line: Callable[[int], str], tail: str = "") -> str:
    """`head`, then line(0), line(1), ... while the whole stays under LIMIT bytes, then `tail`."""
    parts, size, i = [head], len(head) + len(tail), 0
    while size + len(line(i).encode()) < LIMIT:
        parts.append(line(i))
        size += len(parts[-1].encode())
        i += 1
    return "".join(parts) + tail


def _bomb() -> str:
    lines = [HEAD.rstrip("\n"), "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 12)]
    return "\n".join(lines) + "\n"


def _near_limits() -> str:
    """Every bound nearly reached at once: ~9,600 nodes, ~9,600 lines, ~48,000 words, then 1 MiB in one scalar."""
    body = "".join(f"k{i:04d}: [1,1]\n" for i in range(2390))
    body += "# a comment of six words\n" * 7000
    return HEAD + body + "x: " + "x" * (LIMIT - len(HEAD) - len(body) - 10) + "\n"


def cases() -> dict[str, str]:
    full = (GOOD / "full.yaml").read_text()
    nested = "{a: " * 30 + "1" + "}" * 30
    compact = '{"a":' * 30 + "1" + "}" * 30
    return {
        "valid spec (full.yaml)": full,
        "valid spec + 1 MiB of comments": _fill(full, lambda i: f"# comment line {i} " + "x" * 60 + "\n"),
        "valid spec + 1 MiB of comments, long lines": _fill(full, lambda i: "# " + "x" * 2000 + "\n"),
        "long multi-line string (block |)": _fill(full + "notes: |\n", lambda i: f"  line {i} of the text\n"),
        "1 MiB single plain scalar": HEAD + "description: " + "x" * (LIMIT - len(HEAD) - 20) + "\n",
        "1 MiB single quoted scalar": HEAD + 'description: "' + "x y " * ((LIMIT - len(HEAD) - 20) // 4) + '"\n',
        "flow list, 300k items (600 KB)": HEAD + "x: [" + ",".join(["1"] * 300_000) + "]\n",
        "mapping, 80k keys": _fill(HEAD, lambda i: f"k{i:06d}: 1\n"),
        "mapping, 9,000 keys (under the line bound)": HEAD + "".join(f"k{i:06d}: 1\n" for i in range(9000)),
        "JSON mapping, 80k keys on one line": HEAD + "x: {" + ",".join(f'"k{i}":1' for i in range(80_000)) + "}\n",
        "many nested flow mappings": _fill(HEAD, lambda i: f"n{i}: {nested}\n"),
        "many nested flow mappings, no spaces": _fill(HEAD, lambda i: f"n{i}: {compact}\n"),
        "many aliases of one anchor": _fill(HEAD + "base: &b {x: 1, y: [1, 2]}\nuses: [*b", lambda i: ", *b",
                                            "]\n"),
        "many aliases of one anchor, no spaces": _fill(HEAD + "base: &b {x: 1, y: [1, 2]}\nuses: [*b",
                                                       lambda i: ",*b", "]\n"),
        "many anchors, each aliased once": _fill(HEAD, lambda i: f"a{i}: &a{i} [1,2]\nb{i}: *a{i}\n"),
        "chained aliases (each holds the last)": _fill(HEAD, lambda i: f"a{i}: &a{i} [*a{i - 1},1]\n" if i
                                                        else "a0: &a0 1\n"),
        "billion laughs": _bomb(),
        "every bound nearly reached": _near_limits(),
    }


def _load_module(path: Path) -> object:
    spec = importlib.util.spec_from_file_location("deployc_bench_loader", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def one(path: Path, loader: Path | None) -> dict[str, object]:
    """Validate one file in this (fresh) process: seconds, peak RSS growth, outcome and first message.

    The small valid spec is validated first, untimed, so that imports and schema building are not counted."""
    import deployc.api as api
    from deployc.errors import DeploycError

    if loader is not None:
        api.load_spec = _load_module(loader).load_spec  # type: ignore[attr-defined]
    with contextlib.suppress(DeploycError):
        api.validate(path.parent / "full.yaml")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    try:
        api.validate(path)
        outcome, msg = "accepted", ""
    except DeploycError as exc:
        outcome, msg = "refused", exc.lines()[0]
    seconds = time.perf_counter() - t0
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"seconds": seconds, "rss_kb": growth, "outcome": outcome, "message": msg}


def cli(path: Path, loader: Path | None) -> int:
    """`deployc validate PATH` as the command runs it, optionally with another loader."""
    from deployc.cli import main as deployc

    if loader is not None:
        import deployc.api as api

        api.load_spec = _load_module(loader).load_spec  # type: ignore[attr-defined]
    return deployc(["validate", str(path)])


def cold_cli(path: Path, loader: Path | None, repeat: int) -> float:
    """Median wall time of a whole `deployc validate` process (imports included)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cli", str(path)]
    cmd += ["--loader", str(loader)] if loader is not None else []
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    times = []
    for _ in range(max(repeat, 5)):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, env=env, check=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def floor(repeat: int) -> float:
    """Median seconds of ruamel's round-trip `compose` of the small valid spec (what any load costs at least)."""
    from ruamel.yaml import YAML

    text = (GOOD / "full.yaml").read_text()
    times = []
    for _ in range(max(repeat, 5)):
        t0 = time.perf_counter()
        YAML(typ="rt", pure=True).compose(StringIO(text))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_case(path: Path, loader: Path | None, timeout: float) -> dict[str, object]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(path)]
    if loader is not None:
        cmd += ["--loader", str(loader)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"seconds": timeout, "rss_kb": 0, "outcome": "timeout", "message": f"over {timeout:.0f} s"}
    if r.returncode != 0:
        return {"seconds": 0.0, "rss_kb": 0, "outcome": "crashed", "message": r.stderr.strip().splitlines()[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _measure(path: Path, loader: Path | None, args: argparse.Namespace) -> tuple[float, dict[str, object]]:
    runs = [run_case(path, loader, args.timeout) for _ in range(args.repeat)]
    return statistics.median(float(r["seconds"]) for r in runs), runs[-1]  # type: ignore[arg-type]


def table(args: argparse.Namespace) -> None:
    """One row per case: this loader's outcome, seconds and peak RSS growth, then the baseline's when given
    (measured right after, so that both see the same machine load), then the message."""
    head = f"{'file':<44} {'KiB':>5} {'outcome':>9} {'s':>7} {'+MiB':>6}"
    head += f" {'before':>9} {'s':>7} {'+MiB':>6}" if args.against else ""
    print(head + "  message")
    with tempfile.TemporaryDirectory() as tmp:
        for p in GOOD.iterdir():
            shutil.copy(p, Path(tmp) / p.name)
        for i, (name, text) in enumerate(cases().items()):
            path = Path(tmp) / f"case{i}.yaml"
            path.write_text(text, encoding="utf-8")
            row = f"{name:<44} {len(text.encode()) // 1024:>5}"
            results = [_measure(path, args.loader, args)]
            results += [_measure(path, args.against, args)] if args.against else []
            for secs, last in results:
                row += f" {last['outcome']:>9} {secs:>7.3f} {float(last['rss_kb']) / 1024:>6.1f}"  # type: ignore
            msg = str(results[0][1]["message"]).replace(str(path), "deploy.yaml")
            print(f"{row}  {msg[:100]}", flush=True)
        spec = Path(tmp) / "full.yaml"
        for label, loader in [("", args.loader)] + ([(" (before)", args.against)] if args.against else []):
            print(f"`deployc validate full.yaml`, whole process{label}: {cold_cli(spec, loader, args.repeat):.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loader", type=Path, help="another deployc/compiler/load.py to measure")
    ap.add_argument("--against", type=Path, help="a baseline load.py measured case by case alongside")
    ap.add_argument("--repeat", type=int, default=1, help="runs per case (the median is shown)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds before a case counts as timed out")
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cli", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.loader)))
        return
    if args.cli is not None:
        sys.exit(cli(args.cli, args.loader))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"CPU: {cpu_info()} (load average {load}), Python {sys.version.split()[0]}")
    print(f"loader: {args.loader or 'deployc/compiler/load.py'}" + (f", before: {args.against}" if args.against
                                                                   else ""))
    print(f"floor: yaml.compose of full.yaml = {floor(args.repeat) * 1000:.1f} ms\n")
    table(args)


if __name__ == "__main__":
    main()
