"""serving.json's `explain` and `input_monitor` sections, checked, and the input-monitoring counts of one request.

`input_monitor` (docs/serving.md, "Input monitoring"): for each numeric input, data.eval's range; for each watched
feature (`input[i]`: element i of one row), bin edges at data.eval's quantiles. A request's rows are counted by
`count_inputs` into the counters deployc.serve.metrics defines; the input-drift SLO's rules read them.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from deployc.errors import InputError
from deployc.extras import MissingExtra

METHODS = ("integrated-gradients", "kernel-shap", "occlusion")


@dataclass(frozen=True)
class WatchedFeature:
    name: str
    input: str
    index: int  # flat index within one row of the input
    edges: np.ndarray  # ascending; bin = searchsorted(edges, v, side="right")

    @property
    def bins(self) -> int:
        return len(self.edges) + 1


@dataclass(frozen=True)
class InputMonitor:
    ranges: dict[str, tuple[float, float]]  # input -> (min, max) on data.eval
    features: tuple[WatchedFeature, ...]


@dataclass(frozen=True)
class ExplainConfig:
    method: str
    steps: int
    samples: int
    max_rows: int
    top_k: int
    features: tuple[str, ...]
    baseline: dict[str, np.ndarray]  # input -> its baseline row, shape (1, *row)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def _int(d: dict[str, Any], key: str, lo: int, hi: int, where: str) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise InputError(f"{where}.{key}: expected an integer from {lo} to {hi}, got {v!r}")
    return v


def parse_input_monitor(raw: Any, inputs: dict[str, tuple[int, ...]], where: str) -> InputMonitor:
    """`inputs`: each model input's shape (axis 0 the batch axis)."""
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected an object with inputs and features")
    ranges: dict[str, tuple[float, float]] = {}
    for name, r in (raw.get("inputs") or {}).items():
        if name not in inputs:
            raise InputError(f"{where}.inputs: {name!r} is not an input of the model")
        if not isinstance(r, dict) or not _num(r.get("min")) or not _num(r.get("max")) or r["min"] > r["max"]:
            raise InputError(f"{where}.inputs.{name}: expected {{min, max}}, finite numbers, min <= max")
        ranges[name] = (float(r["min"]), float(r["max"]))
    feats = []
    for i, f in enumerate(raw.get("features") or []):
        w = f"{where}.features[{i}]"
        if not isinstance(f, dict) or f.get("input") not in inputs or not isinstance(f.get("name"), str):
            raise InputError(f"{w}: expected {{name, input, index, edges, reference}} naming a model input")
        row = inputs[f["input"]][1:]
        size = int(np.prod(row)) if all(d > 0 for d in row) else 2**31 - 1
        index = _int(f, "index", 0, size - 1, w)
        edges = f.get("edges")
        if not isinstance(edges, list) or not all(_num(e) for e in edges) or edges != sorted(edges) \
                or len(edges) > 100:
            raise InputError(f"{w}.edges: expected at most 100 ascending finite numbers")
        feats.append(WatchedFeature(f["name"], f["input"], index, np.asarray(edges, dtype=np.float64)))
    return InputMonitor(ranges, tuple(feats))


def parse_explain(raw: Any, inputs: dict[str, tuple[int, ...]], dtypes: dict[str, str], root: Path,
                  where: str) -> ExplainConfig:
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected an object")
    method = raw.get("method")
    if method not in METHODS:
        raise InputError(f"{where}.method: expected one of {', '.join(METHODS)}, got {method!r}")
    if method == "kernel-shap" and find_spec("shap") is None:  # the serving image installs deployc[serve,explain]
        raise MissingExtra(f"{where}.method kernel-shap", "shap", "explain")
    rel = raw.get("baseline")
    if not isinstance(rel, str):
        raise InputError(f"{where}.baseline: expected the name of the baseline .npz file in the bundle")
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        raise InputError(f"{where}.baseline: {rel!r} is not a file inside the bundle folder")
    try:
        with np.load(path, allow_pickle=False) as z:
            baseline = {k.removesuffix(".npy"): z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable .npz file ({e})") from None
    if set(baseline) != set(inputs):
        raise InputError(f"{path}: holds {sorted(baseline)}; expected one array per model input {sorted(inputs)}")
    for name, a in baseline.items():
        want = (1, *inputs[name][1:])
        if len(a.shape) != len(want) or any(w > 0 and s != w for s, w in zip(a.shape, want, strict=True)) \
                or a.shape[0] != 1 or a.dtype != np.dtype(dtypes[name]):
            raise InputError(f"{path}: {name!r} has shape {list(a.shape)} and dtype {a.dtype}; expected one row "
                             f"{list(want)} of {dtypes[name]}")
    features = raw.get("features")
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise InputError(f"{where}.features: expected the feature names")
    return ExplainConfig(method=method, steps=_int(raw, "steps", 2, 512, where),
                         samples=_int(raw, "samples", 16, 20000, where),
                         max_rows=_int(raw, "max_rows", 1, 1024, where), top_k=_int(raw, "top_k", 1, 100, where),
                         features=tuple(features), baseline=baseline)


class InputCounts:
    """Per request: elements, non-finite and out-of-range elements per input, and each watched feature's bin
    counts; added to the counters by ServerMetrics.observe_inputs."""

    def __init__(self, monitor: InputMonitor):
        self.monitor = monitor

    def count(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, tuple[int, int, int]], dict[str, np.ndarray]]:
        per_input: dict[str, tuple[int, int, int]] = {}
        for name, a in feed.items():
            if a.dtype.kind not in "iuf":
                continue
            total = int(a.size)
            nonfinite = int(a.size - np.count_nonzero(np.isfinite(a))) if a.dtype.kind == "f" else 0
            out = 0
            r = self.monitor.ranges.get(name)
            if r is not None and total:
                with np.errstate(invalid="ignore"):
                    out = int(np.count_nonzero((a < r[0]) | (a > r[1])))  # NaN compares False: not counted twice
            per_input[name] = (total, nonfinite, out)
        bins: dict[str, np.ndarray] = {}
        for f in self.monitor.features:
            got = feed.get(f.input)
            if got is None or not len(got):
                continue
            col = got.reshape(len(got), -1)[:, f.index].astype(np.float64)
            col = col[np.isfinite(col)]  # a NaN has no bin (it is counted as non-finite)
            bins[f.name] = np.bincount(np.searchsorted(f.edges, col, side="right"), minlength=f.bins)
        return per_input, bins
