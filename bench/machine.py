"""What every bench table prints beside its figures: the CPU model, core count and the flags that change
ONNX Runtime's kernels (figures are only comparable within one run on one machine)."""
from __future__ import annotations

import os
import re
from pathlib import Path


def cpu_info() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    model = (re.search(r"^model name\s*:\s*(.+)$", text, re.M) or [None, "unknown CPU"])[1]
    flags = set((re.search(r"^flags\s*:\s*(.+)$", text, re.M) or [None, ""])[1].split())
    have = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx512_vnni", "avx2"))
    return f"{model}, {os.cpu_count()} CPUs, {have}"
