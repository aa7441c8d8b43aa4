"""Route handlers. Each takes the server state and the request and returns a response or raises ClientError."""
from __future__ import annotations

from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from deployc import __version__
from deployc import conventions as C
from deployc.serve import codec, content, npfiles
from deployc.serve.bodies import JSON, NPY, NPZ, json_response, outputs_json, read_body
from deployc.serve.codec import ClientError
from deployc.serve.config import ServingConfig
from deployc.serve.runtime import PLATFORMS
from deployc.serve.state import ServerState


async def live(state: ServerState, request: Request) -> Response:
    return json_response({"live": True})


async def ready(state: ServerState, request: Request) -> Response:
    return json_response({"ready": state.ready}, 200 if state.ready else 503)


async def ping(state: ServerState, request: Request) -> Response:
    """SageMaker's health check: 200 once the model is loaded and warm."""
    return json_response({"status": "ok" if state.ready else "unavailable"}, 200 if state.ready else 503)


EXTENSIONS = ("binary_tensor_data",)  # Open Inference Protocol extensions this server speaks (GET /v2)


async def server_metadata(state: ServerState, request: Request) -> Response:
    return json_response({"name": "deployc", "version": __version__, "extensions": list(EXTENSIONS)})


def _check_model(state: ServerState, request: Request) -> None:
    cfg = state.cfg
    name = request.path_params["name"]
    if name != cfg.name:
        raise ClientError(404, f"unknown model {name!r}; this server serves {cfg.name!r}")
    version = request.path_params.get("version")
    if version is not None and version != cfg.version:
        raise ClientError(404, f"unknown version {version!r} of model {name!r}; this server serves {cfg.version!r}")


async def model_metadata(state: ServerState, request: Request) -> Response:
    _check_model(state, request)
    cfg = state.cfg
    return json_response({
        "name": cfg.name, "versions": [cfg.version], "platform": PLATFORMS[cfg.runtime],
        "inputs": [t.as_json() for t in cfg.inputs], "outputs": [t.as_json() for t in cfg.outputs],
        "parameters": {"task": cfg.task, "prediction": cfg.prediction or cfg.outputs[0].name,
                       **({"threshold": cfg.threshold} if cfg.task == "binary" else {}),
                       "sha256": cfg.model_sha256, "labels": list(cfg.labels or [])},
    })


async def model_ready(state: ServerState, request: Request) -> Response:
    _check_model(state, request)
    return json_response({"name": state.cfg.name, "ready": state.ready}, 200 if state.ready else 503)


async def metrics(state: ServerState, request: Request) -> Response:
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)


async def _run(state: ServerState, request: Request, decode: Any) -> tuple[Any, list[np.ndarray], Any]:
    """Read, decode (counted as `arriving` so the batcher knows to wait), then infer through the batcher.

    Only a complete body becomes `arriving`: a client that is slow to send its body never makes a batch wait.
    """
    batcher, gauge = state.batcher, state.metrics.in_flight_child
    gauge.inc()
    submitted = arriving = False
    try:
        body = await read_body(request, state.cfg.max_body_bytes)
        batcher.arriving += 1
        arriving = True
        try:
            feed, extra = decode(body)
        except codec.NonFiniteInput as e:  # refused (400), and counted as bad input values
            state.metrics.observe_nonfinite(e.input_name, e.count, e.size)
            raise
        rows = codec.rows_of(feed, state.cfg.inputs)
        state.metrics.observe_inputs(feed)
        batcher.arrived()
        submitted = True
        outs = await batcher.infer(feed, rows, lone=state.lone_http_request())
    finally:
        if arriving and not submitted:
            batcher.arrived()
        gauge.dec()
    state.metrics.observe_predictions(outs)
    return feed, outs, extra


async def infer(state: ServerState, request: Request) -> Response:
    _check_model(state, request)
    cfg = state.cfg
    header = request.headers.get(codec.HEADER_LENGTH)  # the binary tensor extension, when present

    def decode(body: bytes) -> tuple[dict[str, np.ndarray], Any]:
        head, raw = codec.split_binary(body, header)
        req = codec.parse_json(head)
        feed, wanted = codec.decode_v2(req, cfg.inputs, cfg.outputs, raw)
        chosen = wanted if wanted is not None else [s.name for s in cfg.outputs]
        return feed, (req, wanted, codec.binary_outputs(req, chosen))

    feed, outs, (req, wanted, binary) = await _run(state, request, decode)
    if state.capture is not None:
        state.capture.offer(C.ROUTE_INFER, feed, outs, req.get("id"), req.get("parameters"))
    if binary:
        return _binary_response(state, req, outs, wanted, binary)
    return json_response(_v2_response(state, req, outs, wanted))


def _binary_response(state: ServerState, req: dict[str, Any], outs: list[np.ndarray], wanted: list[str] | None,
                     binary: set[str]) -> Response:
    """The JSON header (binary outputs carry `binary_data_size` instead of `data`), then their raw bytes in the
    order the header lists them; `Inference-Header-Content-Length` says where the JSON ends."""
    resp = _v2_response(state, req, outs, wanted)
    index = {s.name: i for i, s in enumerate(state.cfg.outputs)}
    raws: list[bytes | memoryview] = []
    for out in resp["outputs"]:
        if out["name"] in binary:
            del out["data"]
            raw = codec.raw_bytes(outs[index[out["name"]]])
            out["parameters"] = {"binary_data_size": len(raw)}
            raws.append(raw)
    head = codec.dumps(resp)
    return Response(b"".join([head, *raws]), media_type=codec.OCTET_STREAM,
                    headers={codec.HEADER_LENGTH: str(len(head))})


def _v2_response(state: ServerState, req: dict[str, Any], outs: list[np.ndarray], wanted: list[str] | None
                 ) -> dict[str, Any]:
    resp: dict[str, Any] = {"model_name": state.cfg.name, "model_version": state.cfg.version,
                            "outputs": outputs_json(state, outs, wanted)}
    if "id" in req:
        resp["id"] = req["id"]
    return resp


OFFERED = (JSON, NPY, NPZ)  # /invocations answers, in the server's order of preference


def _accept(request: Request) -> str:
    """JSON, npy or npz, whichever `Accept` prefers (q-values, RFC 9110); JSON without a preference; 406 for none."""
    header = request.headers.get("accept")
    chosen = content.choose_media(header, OFFERED)
    if chosen is None:
        raise ClientError(406, f"cannot answer in {header!r}; accepted: {', '.join(OFFERED)}")
    return chosen


def _decode_json(body: bytes, cfg: ServingConfig) -> tuple[dict[str, np.ndarray], str, Any]:
    """(feed, kind, extra) of an /invocations JSON body: TF Serving's row (`instances`) or columnar (`inputs` as an
    object) format, a bare list of rows, or a KServe v2 body (`inputs` as a list; extra: the request, wanted)."""
    req = codec.parse_json(body)
    if isinstance(req, list):
        req = {"instances": req}
    if isinstance(req, dict) and "instances" in req:
        return codec.decode_instances(req, cfg.inputs), "instances", None
    if isinstance(req, dict) and isinstance(req.get("inputs"), dict):
        return codec.decode_columns(req["inputs"], cfg.inputs), "columns", None
    if isinstance(req, dict) and "inputs" in req:
        feed, wanted = codec.decode_v2(req, cfg.inputs, cfg.outputs)
        return feed, "v2", (req, wanted)
    raise ClientError(400, 'expected {"instances": [...]}, {"inputs": {name: rows, ...}}, a KServe v2 body with an '
                           '"inputs" list, or a JSON list')


async def invocations(state: ServerState, request: Request) -> Response:
    """SageMaker: JSON (rows, columns or a KServe v2 body), an .npy or an .npz body in; JSON, .npy or .npz out,
    per Accept."""
    cfg = state.cfg
    accept = _accept(request)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower() or JSON  # empty: as missing
    if ctype not in OFFERED:
        raise ClientError(415, f"unsupported Content-Type {ctype!r}; send {JSON}, {NPY} or {NPZ}")

    def decode(body: bytes) -> tuple[dict[str, np.ndarray], Any]:
        if ctype == NPY:
            return npfiles.decode_npy(body, cfg.inputs), ("npy", None)
        if ctype == NPZ:
            return npfiles.decode_npz(body, cfg.inputs, cfg.max_body_bytes), ("npz", None)
        feed, kind, extra = _decode_json(body, cfg)
        return feed, (kind, extra)

    feed, outs, (kind, extra) = await _run(state, request, decode)
    wanted = extra[1] if kind == "v2" else None
    if state.capture is not None:
        req = extra[0] if kind == "v2" else {}
        state.capture.offer(C.ROUTE_INVOCATIONS, feed, outs, req.get("id"), req.get("parameters"))
    names = [s.name for s in cfg.outputs]
    if accept == NPY:  # one array: the first output, or the first one the request names
        return Response(npfiles.encode_npy(outs[names.index(wanted[0]) if wanted else 0]), media_type=NPY)
    if accept == NPZ:
        return Response(npfiles.encode_npz({n: o for n, o in zip(names, outs, strict=True)
                                            if wanted is None or n in wanted}), media_type=NPZ)
    if kind == "v2":
        return json_response(_v2_response(state, extra[0], outs, wanted))
    if kind == "columns":  # TF Serving: the output itself when there is one, else an object by output name
        return json_response({"outputs": outs[0] if len(outs) == 1 else dict(zip(names, outs, strict=True))})
    if len(outs) == 1:
        return json_response({"predictions": outs[0]})
    rows = [{n: o[i].tolist() for n, o in zip(names, outs, strict=True)} for i in range(outs[0].shape[0])]
    return json_response({"predictions": rows})
