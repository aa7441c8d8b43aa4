"""Example requests the targets ship beside their configs (`request.json`): the first rows of data.eval, every
model input by name, in the body each platform's endpoint takes. Without data.eval, one row of zeros (free axes
as 1). Floats are rounded to 6 significant digits so the file reads; integer and boolean inputs stay exact.
"""
from __future__ import annotations

import json
from typing import Any

from deployc.compiler.resolved import OIP_DATATYPES
from deployc.targets.base import EmitContext, TensorInfo

ROWS = 2  # eval rows per example request
_NUMPY = {oip: name for name, oip in OIP_DATATYPES.items() if oip != "BYTES"}  # FP32 -> float32, ...


def example_rows(ctx: EmitContext) -> dict[str, Any]:
    """{input name: array} of the example rows: data.eval's first rows where the spec sets it, else zeros."""
    import numpy as np

    from deployc.compiler.steps import load_dataset
    from deployc.ml import feeds

    ds = ctx.resolved.data_set("eval") if ctx.resolved is not None else None
    names, dtypes = [t.name for t in ctx.inputs], [_NUMPY.get(t.datatype, "float32") for t in ctx.inputs]
    fixed = [t.shape[0] for t in ctx.inputs if t.shape and t.shape[0] != -1]
    rows = fixed[0] if fixed else ROWS  # a model without a free batch axis takes exactly its batch
    if ds is not None:
        x, _ = load_dataset(ds)
        return feeds.feed(feeds.take(x, slice(0, rows)), names, dtypes, "the model")
    return {t.name: np.zeros([1 if d == -1 else d for d in t.shape], dtype=dt)
            for t, dt in zip(ctx.inputs, dtypes, strict=True)}


def _values(a: Any) -> Any:
    if a.dtype.kind == "f":
        return [float(f"{v:.6g}") for v in a.ravel().tolist()]
    return a.ravel().tolist()


def _nested(a: Any) -> Any:
    """The array as nested lists, floats rounded."""
    import numpy as np

    return np.asarray(_values(a), dtype=object).reshape(a.shape).tolist()


def v2_request(ctx: EmitContext) -> dict[str, Any]:
    """An Open Inference Protocol (KServe v2, Triton) request."""
    rows = example_rows(ctx)
    info: dict[str, TensorInfo] = {t.name: t for t in ctx.inputs}
    return {"inputs": [{"name": n, "shape": list(a.shape), "datatype": info[n].datatype, "data": _values(a)}
                       for n, a in rows.items()]}


def instances_request(ctx: EmitContext) -> dict[str, Any]:
    """`{"instances": [...]}` (SageMaker /invocations, Vertex AI, Azure ML): a row per instance; for a model of
    several inputs, an object of each input's row by name."""
    rows = example_rows(ctx)
    arrays = {n: _nested(a) for n, a in rows.items()}
    if len(arrays) == 1:
        return {"instances": next(iter(arrays.values()))}
    n = len(next(iter(arrays.values())))
    return {"instances": [{name: arr[i] for name, arr in arrays.items()} for i in range(n)]}


def dump(body: dict[str, Any]) -> bytes:
    return (json.dumps(body, sort_keys=False, separators=(", ", ": ")) + "\n").encode()
