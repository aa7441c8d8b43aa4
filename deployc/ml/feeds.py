"""Model inputs as the steps hold them: one array for a model of one input, or {input name: array} for a model
of several (`data.<set>.x: {name: key}`). These helpers treat both alike: rows, slices, and the feed of one
runtime (onnxruntime, LiteRT, Keras) by input name, each array cast to the dtype that input declares.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deployc.errors import InputError

Inputs = np.ndarray | Mapping[str, np.ndarray]
ANY_INPUT = "*"  # the key of the one array when the model's single input is not named (deployc.compiler.resolved)


def as_mapping(x: Inputs) -> Mapping[str, np.ndarray]:
    return x if isinstance(x, Mapping) else {ANY_INPUT: x}


def rows(x: Inputs) -> int:
    """Rows on the batch axis (all arrays of a mapping have as many: the data loader checks it)."""
    return len(next(iter(as_mapping(x).values())))


def take(x: Inputs, index: Any) -> Inputs:
    """The rows `index` (a slice, or an integer array) of every array."""
    if isinstance(x, Mapping):
        return {k: v[index] for k, v in x.items()}
    return x[index]


def resize(x: Inputs, n: int) -> Inputs:
    """`n` rows, the data repeated as needed (for a throughput batch)."""
    def one(a: np.ndarray) -> np.ndarray:
        return np.resize(a, (n,) + a.shape[1:]).astype(a.dtype)

    return {k: one(v) for k, v in x.items()} if isinstance(x, Mapping) else one(x)


def feed(x: Inputs, names: Sequence[str], dtypes: Sequence[Any], what: str = "the model") -> dict[str, np.ndarray]:
    """{input name: array} for a runtime whose inputs are `names` (with `dtypes`): one unnamed array feeds a
    single input whatever its name; a mapping must name each input. Integer inputs must get whole numbers."""
    m = as_mapping(x)
    if set(m) == {ANY_INPUT} or (not isinstance(x, Mapping) and len(names) == 1):
        if len(names) != 1:
            raise InputError(f"{what} has {len(names)} inputs ({', '.join(names)}); map each to its array in "
                             "data.<set>.x: {input: key}")
        m = {names[0]: next(iter(m.values()))}
    missing = [n for n in names if n not in m]
    if missing:
        raise InputError(f"{what} needs inputs {', '.join(missing)}, which data.<set>.x does not map (it maps: "
                         f"{', '.join(m)})")
    return {n: cast(m[n], dt, n) for n, dt in zip(names, dtypes, strict=True)}


def cast(a: np.ndarray, dtype: Any, name: str) -> np.ndarray:
    dtype = np.dtype(dtype)
    if a.dtype == dtype:
        return a
    if dtype.kind in "iub" and a.dtype.kind == "f" and not np.array_equal(a, np.round(a)):
        raise InputError(f"input {name!r} is {dtype} in the model, and its data holds fractions ({a.dtype})")
    if dtype.kind in "iub" and a.size and (problem := range_problem(a, dtype)):
        raise InputError(f"input {name!r} is {dtype} in the model, and its data {problem}")
    return a.astype(dtype)


def range_problem(a: np.ndarray, dtype: Any) -> str | None:
    """Why the values of `a` do not fit the integer or boolean `dtype` (they would wrap around), or None."""
    dtype = np.dtype(dtype)
    lo, hi = (0, 1) if dtype.kind == "b" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
    amin, amax = a.min(), a.max()
    if amin < lo or amax > hi:
        return f"holds values from {amin:g} to {amax:g}, outside {lo}..{hi}"
    return None


def output_index(names: list[str], output: str | None, what: str = "the model") -> int:
    """The position of the prediction output `output` (model.prediction; None: the first) among `names`. A
    model of one output has no other: the artifact names it `output` whatever the original called it."""
    if output is None or len(names) == 1:
        return 0
    if output not in names:
        raise InputError(f"model.prediction: {what} has no output named {output!r} (it has: {', '.join(names)})")
    return names.index(output)


def row_shapes(x: Inputs) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape[1:]) for k, v in as_mapping(x).items()}


def for_keras(model: Any, fed: Mapping[str, Any]) -> Any:
    """{input name: array or tensor} in the structure the Keras model was built with (one tensor, a list, or a
    dict), so Keras does not warn that the structure of its inputs does not match."""
    struct = getattr(model, "_inputs_struct", None)
    name = _keras_name
    if isinstance(struct, dict):
        return {k: fed[name(t)] for k, t in struct.items()}
    if isinstance(struct, (list, tuple)):
        return [fed[name(t)] for t in struct]
    return dict(fed) if len(fed) > 1 else next(iter(fed.values()))


def _keras_name(tensor: Any) -> str:
    return str(getattr(tensor, "name", "")).split(":")[0]
