"""A plan step: a named unit of work whose result is cached under a content hash of everything it reads.

A step's key hashes its id, its parameters, the content of its input files, the keys of the steps it depends on,
and the versions of deployc and of the libraries it uses. A step that measures (its params hold `measure`
settings: latency, throughput) also hashes this machine's CPU fingerprint, so a figure measured on another CPU
(another runner sharing a remote cache) is never reported as this machine's. The key is known before anything
runs, so `deployc plan` can say which steps the cache already holds. `run` writes files into `ctx.out_dir` and
returns a JSON-able result (figures for the report); both are cached together.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployc import __version__
from deployc.compiler.inputs import open_regular, tree_digest
from deployc.errors import InputError
from deployc.progress import Progress, as_progress

if TYPE_CHECKING:  # annotations only: the schema loads target modules, which import this one
    from deployc.compiler.resolved import DataSet as ResolvedDataSet
    from deployc.compiler.resolved import Resolved
    from deployc.schema.spec import DeploySpec

# The ids of the built-in model steps that other steps and the report read by name
SOURCE = "source"  # the user's model, copied into the cache
CONVERT = "convert"  # the Keras or SavedModel model converted to ONNX
REFERENCE = "reference"  # the original model's outputs on data.eval, which every artifact is checked against
EXPLAIN = "explain:reference"  # the original model's attributions on data.eval's first rows (`explain:`)
PROFILE = "profile:inputs"  # input ranges and reference feature bins for input monitoring (serving.json)


@dataclass(frozen=True)
class StepOutput:
    dir: Path  # the step's cached output folder
    result: dict[str, Any]  # what `run` returned


@dataclass(frozen=True)
class StepContext:
    """What a step's `run` sees: its output folder, its dependencies' outputs and the plan's resolved model (the
    spec lowered: deployc.compiler.resolved). Not the spec itself: whatever else a step needs, its `steps()` passes
    in the closure, from the same values it puts in the step's params (so the key covers them)."""
    out_dir: Path
    deps: dict[str, StepOutput]
    resolved: Resolved
    log: Callable[[str], None] = print  # a line in the build's output (a `deployc.progress.Progress` in builds)

    @property
    def progress(self) -> Progress:
        """Where the step reports its long parts (`progress.task(...)`): bars on a terminal, lines in CI."""
        return as_progress(self.log)

    @property
    def spec_dir(self) -> Path:
        return self.resolved.spec_dir

    def data(self, which: str) -> tuple[Any, Any]:
        """(x, y) of `data.<which>` as numpy arrays; y is None when the spec names no labels."""
        ds = self.resolved.data_set(which)
        if ds is None:
            raise ValueError(f"data.{which} is not set")
        return load_dataset(ds)


@dataclass(frozen=True)
class Step:
    id: str  # unique in the plan, e.g. "convert", "optimize[0].quantize", "evaluate:final"
    description: str
    run: Callable[[StepContext], dict[str, Any]]
    deps: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    input_files: tuple[Path, ...] = ()  # files or folders whose content feeds the key
    libs: tuple[str, ...] = ()  # distributions whose versions feed the key
    gated: bool = False  # its result holds {"artifact", "evaluation"} of an artifact that ships: gates apply


def data_files(spec: DeploySpec, spec_dir: Path, *which: str) -> tuple[Path, ...]:
    """The .npz files of `data.<which>` that the spec sets: what a step reading them hashes into its key."""
    sets = [getattr(spec.data, w) for w in which]
    return tuple(spec_dir / ds.path for ds in sets if ds is not None)


def load_dataset(ds: ResolvedDataSet) -> tuple[Any, Any]:
    """(x, y) of a data set, its row limit applied; y is None without labels. x is one array, or {input name:
    array} where the spec maps inputs to keys (deployc.ml.feeds handles both)."""
    import numpy as np

    keys = {name: ref.key for name, ref in ds.inputs.items()}
    yk, limit = ds.labels.key if ds.labels else None, ds.x.limit
    try:
        with open_regular(ds.x.file) as f, np.load(f, allow_pickle=False) as npz:
            missing = [k for k in (*keys.values(), yk) if k is not None and k not in npz.files]
            if missing:
                raise InputError(f"{ds.path}: no array named {missing[0]!r} (it has: {', '.join(npz.files)})")
            arrays = {name: npz[k] for name, k in keys.items()}
            y = npz[yk] if yk is not None else None
    except (OSError, ValueError) as exc:
        raise InputError(f"{ds.path}: not a readable .npz file ({exc})") from None
    if limit is not None:
        arrays = {name: a[:limit] for name, a in arrays.items()}
        y = y[:limit] if y is not None else None
    counts = {keys[name]: len(a) for name, a in arrays.items()}
    if yk is not None and y is not None:
        counts[yk] = len(y)
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"{k} has {n}" for k, n in counts.items())
        raise InputError(f"{ds.path}: the arrays disagree on the number of rows ({shown})")
    return (arrays if ds.mapped else next(iter(arrays.values()))), y


@cache
def lib_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def hash_path(path: Path) -> str:
    """sha256 of a file, or of a folder's relative paths and file contents (sorted)."""
    if not path.is_dir():
        return file_digest(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(p.relative_to(path).as_posix().encode() + b"\0")
        h.update(file_digest(p).encode())
    return h.hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """deployc's version plus a hash of its own source: a changed step implementation invalidates the cache
    even before a release bumps the version."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(__version__.encode())
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return f"{__version__}+{h.hexdigest()[:16]}"


# CPU features that change which kernels ONNX Runtime and LiteRT run (x86 `flags`, Arm `Features`)
KERNEL_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "asimdhp", "sve",
                "sve2", "i8mm", "bf16")


@cache
def cpu_fingerprint() -> str:
    """This machine's CPU as measured figures depend on it: the model name, the core count and the kernel-relevant
    ISA flags it has, e.g. `Intel(R) Xeon(R) ..., 8 CPUs, x86_64, avx avx2 avx512_vnni fma`."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    m = re.search(r"^(?:model name|Model|cpu model)\s*:\s*(.+)$", text, re.M)
    model = m.group(1).strip() if m else (platform.processor() or "unknown CPU")
    if not m and "CPU part" in text:  # Arm: implementer and part name the core
        parts = sorted(set(re.findall(r"^CPU (?:implementer|part)\s*:\s*(\S+)$", text, re.M)))
        model = f"{model} ({' '.join(parts)})"
    f = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.M)
    have = set(f.group(1).split()) if f else set()
    flags = " ".join(x for x in KERNEL_FLAGS if x in have) or "no flags known"
    return f"{model}, {os.cpu_count()} CPUs, {platform.machine()}, {flags}"


def measures(step: Step) -> bool:
    """Whether the step's result holds figures measured on this machine (latency, throughput)."""
    return "measure" in step.params


def step_key(step: Step, dep_keys: Mapping[str, str], deployc_version: str, within: Path) -> str:
    """The step's content hash; its input files are read (and refused when they leave `within`) every time."""
    doc = {
        "id": step.id,
        "params": step.params,
        "deps": {d: dep_keys[d] for d in step.deps},
        "files": [tree_digest(within, p) for p in step.input_files],
        "libs": {d: lib_version(d) for d in sorted(step.libs)},
        "deployc": deployc_version,
    }
    if measures(step):
        doc["cpu"] = cpu_fingerprint()
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str, allow_nan=False).encode()).hexdigest()
