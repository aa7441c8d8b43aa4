"""The Open Inference Protocol gRPC service (`inference.GRPCInferenceService`), next to the HTTP routes.

It runs on grpc.aio in uvicorn's event loop (started from the app's lifespan), so it shares the loaded model,
the batcher, the metrics and the auth token with the HTTP server. Handlers raise `ClientError` with the HTTP
status the same mistake gets over HTTP; `_rpc` maps it to the gRPC status code and counts the HTTP status in the
`code` label, so the SLO rules' `code=~"5.."` reads gRPC errors the way it reads HTTP ones.
"""
from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from deployc import __version__
from deployc import conventions as C
from deployc.errors import InputError
from deployc.serve import codec
from deployc.serve.codec import ClientError
from deployc.serve.config import DATATYPES, ServingConfig, TensorSpec
from deployc.serve.proto import grpc_predict_v2_pb2 as pb
from deployc.serve.runtime import PLATFORMS
from deployc.serve.state import ServerState, bearer_ok

log = logging.getLogger("deployc.serve")
Rpc = Callable[[ServerState, Any], Awaitable[Any]]

# HTTP status of a ClientError (or of the outcome) -> the gRPC status code the client sees.
GRPC_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED, 500: grpc.StatusCode.INTERNAL, 503: grpc.StatusCode.UNAVAILABLE,
}
CANCELLED = 499  # the client cancelled or its deadline passed: counted like HTTP's client disconnect

# InferTensorContents field and its element dtype, per datatype (FP16 travels only as raw bytes).
_CONTENTS: dict[str, tuple[str, str]] = {
    "BOOL": ("bool_contents", "bool"), "INT8": ("int_contents", "int32"), "INT16": ("int_contents", "int32"),
    "INT32": ("int_contents", "int32"), "INT64": ("int64_contents", "int64"), "UINT8": ("uint_contents", "uint32"),
    "UINT16": ("uint_contents", "uint32"), "UINT32": ("uint_contents", "uint32"),
    "UINT64": ("uint64_contents", "uint64"), "FP32": ("fp32_contents", "float32"),
    "FP64": ("fp64_contents", "float64"),
}


def grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# grpc.aio admits new calls one at a time per server (a completion-queue round trip each), which caps one server
# near 2k calls/s here and starves the batcher; several servers on the same port (SO_REUSEPORT, the kernel spreads
# connections over them) admit calls in parallel: bench/serve_grpc.py measured x1.6-2.4 with 8.
ACCEPTORS = 8


class GrpcService:
    """The grpc.aio servers answering on one port, started and stopped together."""

    def __init__(self, servers: list[grpc.aio.Server], port: int):
        self.servers, self.port = servers, port

    async def stop(self, grace: float) -> None:
        await asyncio.gather(*(s.stop(grace) for s in self.servers))


async def start_grpc(state: ServerState) -> GrpcService:
    """Bind and start the service. The CLI has checked the port is free (SO_REUSEPORT would not tell), and with
    several workers every worker binds the same port."""
    cfg = state.cfg
    assert cfg.grpc_port is not None
    options = [("grpc.max_receive_message_length", cfg.max_body_bytes), ("grpc.so_reuseport", 1)]
    handler = service_handler(state)
    servers: list[grpc.aio.Server] = []
    port = cfg.grpc_port
    for _ in range(ACCEPTORS):
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers((handler,))
        addr = grpc_address(cfg.host, port)
        try:
            bound = server.add_insecure_port(addr)
        except RuntimeError:
            bound = 0
        if not bound:
            await asyncio.gather(*(s.stop(None) for s in servers))
            raise InputError(f"cannot listen on {addr} for gRPC (address in use or not available)")
        port = bound  # port 0: the first server picks a free port, the others join it
        await server.start()
        servers.append(server)
    if cfg.workers == 1:  # with several workers the parent prints the address once
        print(f"deployc serve: {cfg.name} {cfg.version} gRPC on {grpc_address(cfg.host, port)}", file=sys.stderr,
              flush=True)
    log.info("gRPC inference.GRPCInferenceService on %s", grpc_address(cfg.host, port))
    return GrpcService(servers, port)


SERVICE = "inference.GRPCInferenceService"


def service_handler(state: ServerState) -> grpc.GenericRpcHandler:
    """Every RPC of the service, each wrapped in `_rpc`, with its messages read from the .proto's descriptor (the
    method paths and message types grpcio-tools would write into a *_pb2_grpc.py)."""
    table: dict[str, tuple[Rpc, str, bool]] = {  # handler, the metrics' route label, guarded by the token
        "ServerLive": (server_live, C.ROUTE_GRPC_HEALTH, False),
        "ServerReady": (server_ready, C.ROUTE_GRPC_HEALTH, False),
        "ModelReady": (model_ready, C.ROUTE_GRPC_HEALTH, False),
        "ServerMetadata": (server_metadata, C.ROUTE_GRPC_METADATA, True),
        "ModelMetadata": (model_metadata, C.ROUTE_GRPC_METADATA, True),
        "ModelInfer": (model_infer, C.ROUTE_GRPC_INFER, True),
    }
    methods = pb.DESCRIPTOR.services_by_name[SERVICE.rpartition(".")[2]].methods_by_name
    assert set(methods) == set(table), "the .proto's RPCs and the handlers differ"
    handlers = {}
    for name, (fn, route, protected) in table.items():
        request, response = (getattr(pb, t.name) for t in (methods[name].input_type, methods[name].output_type))
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            _rpc(state, name, fn, route, protected), request_deserializer=request.FromString,
            response_serializer=response.SerializeToString)
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _rpc(state: ServerState, name: str, fn: Rpc, route: str, protected: bool
         ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    """Auth, error mapping (never a traceback to the client) and the request metrics, as app._endpoint does."""
    metrics, token = state.metrics, state.token

    async def method(request: Any, context: grpc.aio.ServicerContext) -> Any:
        t0 = time.perf_counter()
        status, message, response = 200, "", None
        try:
            if protected and token is not None and not _authorized(context, token):
                raise ClientError(401, "missing or wrong bearer token (send the metadata "
                                       f"'{C.SERVE_GRPC_AUTH_METADATA}: Bearer <token>')")
            response = await fn(state, request)
        except ClientError as e:
            status, message = e.status, e.message
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            metrics.observe_request(route, CANCELLED, time.perf_counter() - t0)
            raise
        except Exception:
            log.exception("internal error on gRPC %s", name)
            status, message = 500, "internal server error (see the server log)"
        metrics.observe_request(route, status, time.perf_counter() - t0)
        if status != 200:
            await context.abort(GRPC_CODES.get(status, grpc.StatusCode.UNKNOWN), message)
        return response

    return method


def _authorized(context: grpc.aio.ServicerContext, token: bytes) -> bool:
    for key, value in context.invocation_metadata() or ():
        if key == C.SERVE_GRPC_AUTH_METADATA and isinstance(value, str):
            return bearer_ok(value, token)
    return False


def _check_model(cfg: ServingConfig, name: str, version: str) -> None:
    if name != cfg.name:
        raise ClientError(404, f"unknown model {name!r}; this server serves {cfg.name!r}")
    if version and version != cfg.version:
        raise ClientError(404, f"unknown version {version!r} of model {name!r}; this server serves {cfg.version!r}")


async def server_live(state: ServerState, request: Any) -> Any:
    return pb.ServerLiveResponse(live=True)


async def server_ready(state: ServerState, request: Any) -> Any:
    return pb.ServerReadyResponse(ready=state.ready)


async def model_ready(state: ServerState, request: Any) -> Any:
    _check_model(state.cfg, request.name, request.version)
    return pb.ModelReadyResponse(ready=state.ready)


async def server_metadata(state: ServerState, request: Any) -> Any:
    return pb.ServerMetadataResponse(name="deployc", version=__version__, extensions=[])


async def model_metadata(state: ServerState, request: Any) -> Any:
    cfg = state.cfg
    _check_model(cfg, request.name, request.version)
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=cfg.name, versions=[cfg.version], platform=PLATFORMS[cfg.runtime],
        inputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in cfg.inputs],
        outputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in cfg.outputs])


async def model_infer(state: ServerState, request: Any) -> Any:
    """Decode (counted as `arriving`, so the batcher waits for it), infer through the batcher, answer raw."""
    cfg = state.cfg
    _check_model(cfg, request.model_name, request.model_version)
    batcher, gauge = state.batcher, state.metrics.in_flight_child
    batcher.arriving += 1
    gauge.inc()
    submitted = False
    try:
        try:
            feed, wanted = decode_request(request, cfg)
        except codec.NonFiniteInput as e:
            state.metrics.observe_nonfinite(e.input_name, e.count, e.size)
            raise
        rows = codec.rows_of(feed, cfg.inputs)
        state.metrics.observe_inputs(feed)
        batcher.arrived()
        submitted = True
        outs = await batcher.infer(feed, rows)
    finally:
        if not submitted:
            batcher.arrived()
        gauge.dec()
    state.metrics.observe_predictions(outs)
    if state.capture is not None:
        state.capture.offer(C.ROUTE_GRPC_INFER, feed, outs, request.id or None, _parameters(request.parameters))
    return encode_response(cfg, request.id, outs, wanted)


def _parameters(params: Any) -> dict[str, Any] | None:
    """A request's `parameters` map (InferParameter values) as plain values, the way JSON would carry them."""
    if not params:
        return None
    return {k: getattr(v, v.WhichOneof("parameter_choice")) if v.WhichOneof("parameter_choice") else None
            for k, v in params.items()}


def decode_request(request: Any, cfg: ServingConfig) -> tuple[dict[str, np.ndarray], set[str] | None]:
    """A ModelInferRequest -> (feed, requested output names or None for all), checked against the model."""
    specs = {s.name: s for s in cfg.inputs}
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ClientError(400, f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs "
                               "(one per input, in the order of inputs)")
    feed: dict[str, np.ndarray] = {}
    for i, t in enumerate(request.inputs):
        spec = specs.get(t.name)
        if spec is None:
            raise ClientError(400, f"inputs[{i}]: unknown input name {t.name!r}; the model takes {sorted(specs)}")
        what = f"input {t.name!r}"
        if t.name in feed:
            raise ClientError(400, f"{what} is given twice")
        if t.datatype != spec.datatype:
            raise ClientError(400, f"{what}: datatype {t.datatype!r} does not match the model's {spec.datatype}")
        shape = _shape(t.shape, spec, what)
        if raw:
            if t.HasField("contents"):
                raise ClientError(400, f"{what}: contents must be empty when raw_input_contents is used")
            feed[t.name] = _from_raw(raw[i], spec, shape, what)
        else:
            feed[t.name] = _from_contents(t.contents, spec, shape, what)
    missing = sorted(set(specs) - set(feed))
    if missing:
        raise ClientError(400, f"missing input(s) {missing}")
    if not request.outputs:
        return feed, None
    names = {s.name for s in cfg.outputs}
    wanted = {o.name for o in request.outputs}
    bad = sorted(wanted - names)
    if bad:
        raise ClientError(400, f"unknown output name(s) {bad}; the model gives {sorted(names)}")
    return feed, wanted


def _shape(shape: Any, spec: TensorSpec, what: str) -> list[int]:
    """The request's shape, checked against the model's rank and fixed axes before any data is looked at."""
    dims = list(shape)
    if len(dims) != len(spec.shape):
        raise ClientError(400, f"{what}: shape {dims[:8]}{'...' if len(dims) > 8 else ''} has {len(dims)} "
                               f"dimensions; the model's {list(spec.shape)} has {len(spec.shape)}")
    if any(d < 0 for d in dims):
        raise ClientError(400, f"{what}: shape {dims} has a negative dimension")
    if any(w != -1 and w != d for w, d in zip(spec.shape, dims, strict=True)):
        raise ClientError(400, f"{what}: shape {dims} does not match the model's {list(spec.shape)} (-1: any size)")
    return dims


def _from_raw(data: bytes, spec: TensorSpec, shape: list[int], what: str) -> np.ndarray:
    """Little-endian, row-major bytes -> an array; the byte count must match the shape exactly."""
    dtype = np.dtype(DATATYPES[spec.datatype]).newbyteorder("<")
    need = math.prod(shape) * dtype.itemsize  # Python ints: a huge shape cannot overflow, it just mismatches
    if len(data) != need:
        raise ClientError(400, f"{what}: raw_input_contents has {len(data)} bytes; shape {shape} of "
                               f"{spec.datatype} needs {need}")
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    if spec.datatype == "BOOL" and arr.size and arr.view(np.uint8).max() > 1:
        raise ClientError(400, f"{what}: BOOL bytes must be 0 or 1")
    if dtype.kind == "f" and not np.isfinite(arr).all():
        raise codec.NonFiniteInput(f"{what}: data contains a non-finite number (NaN or Infinity)", spec.name, arr)
    arr = arr.astype(dtype.newbyteorder("="), copy=False)
    codec.check_shape(arr, spec, what)
    return arr


def _from_contents(contents: Any, spec: TensorSpec, shape: list[int], what: str) -> np.ndarray:
    """Typed InferTensorContents -> an array, through the same checks as JSON `data` (kind, range, finite)."""
    if spec.datatype not in _CONTENTS:
        raise ClientError(400, f"{what}: {spec.datatype} can only be sent in raw_input_contents")
    field, dtype = _CONTENTS[spec.datatype]
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise ClientError(400, f"{what}: contents.{field} has {len(values)} values; shape {shape} needs {count}")
    arr = np.fromiter(values, dtype=np.dtype(dtype), count=len(values))
    return codec.to_array(arr, spec, what, shape)


def encode_response(cfg: ServingConfig, request_id: str, outs: list[np.ndarray], wanted: set[str] | None) -> Any:
    """Outputs in the model's order, each as raw little-endian bytes (what tritonclient reads by default)."""
    resp = pb.ModelInferResponse(model_name=cfg.name, model_version=cfg.version, id=request_id)
    for spec, out in zip(cfg.outputs, outs, strict=True):
        if wanted is not None and spec.name not in wanted:
            continue
        resp.outputs.add(name=spec.name, datatype=codec.v2_datatype(out), shape=list(out.shape))
        resp.raw_output_contents.append(np.ascontiguousarray(out, dtype=out.dtype.newbyteorder("<")).tobytes())
    return resp
