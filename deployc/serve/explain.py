"""POST /v2/models/{name}[/versions/{version}]/explain: attributions for the request's rows (docs/serving.md,
"Explanations"), with the method and baseline of the build's `explain:` (serving.json's `explain`).

The body is an inference request (JSON, or JSON with the binary tensor extension). The cost is bounded: at most
`max_rows` rows a request, one explanation at a time per server process, computed off the event loop; inference
requests keep being answered meanwhile. Explain requests are counted under route="explain", never as inference.
"""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from deployc.serve import codec
from deployc.serve.bodies import json_response, read_body
from deployc.serve.codec import ClientError
from deployc.serve.state import ServerState

_SLOT: dict[int, asyncio.Lock] = {}  # one explanation at a time per server (keyed by the state's id)


def _targets(pred: np.ndarray, task: str) -> np.ndarray:
    if task == "classification" and pred.ndim == 2 and pred.shape[1] > 1:
        return np.asarray(pred.argmax(axis=1), dtype=np.int64)
    return np.zeros(len(pred), dtype=np.int64)


def attributions(state: ServerState, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(attributions [rows, features], targets, the explained output's values) for the request's rows."""
    from deployc.ml.explain import Settings, explain

    cfg, ex = state.cfg, state.cfg.explain
    assert ex is not None
    index = cfg.prediction_index
    order = [t.name for t in cfg.inputs]

    def predict(x: Any) -> np.ndarray:
        out = state.runner.run({n: np.ascontiguousarray(x[n]) for n in order})[index]
        return np.asarray(out, dtype=np.float64).reshape(len(out), -1)

    feed = {n: feed[n] for n in order}
    pred = predict(feed)
    targets = _targets(pred, cfg.task)
    attr = explain(predict, feed, ex.baseline, Settings(method=ex.method, steps=ex.steps, samples=ex.samples),
                   targets)
    return attr, targets, pred[np.arange(len(pred)), targets]


async def explain_route(state: ServerState, request: Request) -> Response:
    from deployc.serve.handlers import _check_model

    _check_model(state, request)
    cfg, ex = state.cfg, state.cfg.explain
    if ex is None:
        raise ClientError(404, f"model {cfg.name!r} is served without explanations (its build set no `explain:`)")
    body = await read_body(request, cfg.max_body_bytes)
    head, raw = codec.split_binary(body, request.headers.get(codec.HEADER_LENGTH))
    req = codec.parse_json(head)
    feed, _ = codec.decode_v2(req, cfg.inputs, cfg.outputs, raw)
    rows = codec.rows_of(feed, cfg.inputs)
    if rows > ex.max_rows:
        raise ClientError(400, f"{rows} rows to explain; this server explains at most {ex.max_rows} a request "
                               "(explain.serve.max_rows in deploy.yaml)")
    lock = _SLOT.setdefault(id(state), asyncio.Lock())
    async with lock:
        attr, targets, values = await run_in_threadpool(attributions, state, feed)
    outputs: list[dict[str, Any]] = []
    at = 0
    for t in cfg.inputs:
        size = int(np.prod(feed[t.name].shape[1:]))
        part = attr[:, at:at + size].reshape(feed[t.name].shape)
        outputs.append({"name": t.name, "shape": list(part.shape), "datatype": "FP64", "data": part.ravel().tolist()})
        at += size
    outputs.append({"name": "target", "shape": [rows], "datatype": "INT64", "data": targets.tolist()})
    outputs.append({"name": "target_value", "shape": [rows], "datatype": "FP64", "data": values.tolist()})
    top = [[{"feature": ex.features[j], "attribution": float(attr[r, j])}
            for j in np.argsort(-np.abs(attr[r]), kind="stable")[:ex.top_k]] for r in range(rows)]
    resp: dict[str, Any] = {"model_name": cfg.name, "model_version": cfg.version, "method": ex.method,
                            "outputs": outputs, "parameters": {"top_features": top}}
    if "id" in req:
        resp["id"] = req["id"]
    return json_response(resp)
