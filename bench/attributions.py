"""What each optimization does to the explanation: attribution agreement with the original model, per pass.

Builds the bundled examples (trained first when their model is missing) with their `explain:` settings and one
optimization each, and prints, per artifact, the task metric's change and the four attribution figures of
deployc.ml.explain.agreement. Figures come from one run on this machine (the CPU is printed); the timing-free
figures are deterministic for a given trained model.

    .venv/bin/python bench/attributions.py            # every example and pass
    .venv/bin/python bench/attributions.py digits     # one example
"""
from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (example, label, optimize: block as YAML); the example's own gates are dropped so every variant builds
VARIANTS = [
    ("digits", "int8-dynamic", "[{quantize: {mode: int8-dynamic}}]"),
    ("digits", "int8-static", "[{quantize: {mode: int8-static}}]"),
    ("digits", "float16", "[{quantize: {mode: float16}}]"),
    ("digits", "prune 50% + int8-dynamic", "[{prune: {sparsity: 0.5, epochs: 2}}, {quantize: {mode: int8-dynamic}}]"),
    ("digits", "structured prune 50% + int8-dynamic",
     "[{prune: {sparsity: 0.5, structured: true, epochs: 2}}, {quantize: {mode: int8-dynamic}}]"),
    ("digits", "distill 0.5 + int8-dynamic", "[{distill: {width: 0.5, epochs: 10}}, {quantize: {mode: int8-dynamic}}]"),
    ("nlp", "int8-dynamic", "[{quantize: {mode: int8-dynamic}}]"),
    ("cv", "int8-static", "[{quantize: {mode: int8-static}}]"),
    ("recsys", "int8-dynamic", "[{quantize: {mode: int8-dynamic}}]"),
]
FIGURES = ("attribution_rank_correlation", "attribution_top_k_overlap", "attribution_example_correlation",
           "attribution_agreement")


def cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.*)", info)
        flags = re.search(r"flags\s*:\s*(.*)", info)
        wanted = [f for f in (flags.group(1).split() if flags else []) if f.startswith(("avx512", "avx2", "amx"))]
        return f"{model.group(1) if model else platform.processor()}; {' '.join(sorted(wanted))}"
    except OSError:
        return platform.processor()


def spec_variant(text: str, optimize: str) -> str:
    """The example's spec with `optimize:` replaced and `gates:` dropped (every variant is measured, none gated)."""
    text = re.sub(r"optimize:\n(  - .*\n)+", f"optimize: {optimize}\n", text)
    text = re.sub(r"gates:\n(  .*\n)+", "", text)
    return text.replace("explain:\n", "measure: {min_seconds: 0.05}\nexplain:\n", 1)


def main() -> int:
    only = set(sys.argv[1:])
    print(f"CPU: {cpu()}")
    print("| example | optimization | artifact | metric change | rank corr. | top-k overlap | per-row corr. | "
          "attribution agreement |")
    print("|---|---|---|---|---|---|---|---|")
    cache = Path(tempfile.mkdtemp(prefix="deployc-bench-attr-cache-"))
    try:
        for example, label, optimize in VARIANTS:
            if only and example not in only:
                continue
            src = ROOT / "examples" / example
            if not (src / "model.keras").exists():
                subprocess.run([sys.executable, str(src / "train.py")], check=True, capture_output=True)
            with tempfile.TemporaryDirectory(prefix="deployc-bench-attr-") as tmp:
                d = Path(tmp) / example
                shutil.copytree(src, d, ignore=shutil.ignore_patterns("build"))
                (d / "deploy.yaml").write_text(spec_variant((src / "deploy.yaml").read_text(), optimize))
                r = subprocess.run([sys.executable, "-m", "deployc", "build", "deploy.yaml", "--out", "out", "-q",
                                    "--cache-dir", str(cache)], cwd=d, capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"| {example} | {label} | build failed: {r.stderr.strip().splitlines()[-1]} |||||")
                    continue
                report = json.loads((d / "out" / "report.json").read_text())
            ref = report["reference"] or {}
            metric = next(k for k in ("accuracy", "auc", "r2") if ref.get(k) is not None)
            for a in report["artifacts"]:
                ev = a["evaluation"]
                change = (f"{metric} {ev[metric] - ref[metric]:+.4f}" if ev.get(metric) is not None else "–")
                cells = " | ".join(f"{ev[k]:.3f}" if isinstance(ev.get(k), (int, float)) else "–" for k in FIGURES)
                print(f"| {example} | {label} | {a['artifact']} | {change} | {cells} |", flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
