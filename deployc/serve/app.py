"""The ASGI app: Open Inference Protocol (KServe v2) REST, the SageMaker container contract and /metrics.

Handlers are plain Starlette endpoints wrapped by `_endpoint`, which does auth, error mapping (client mistakes
-> 4xx `{"error": ...}`, never a traceback) and the request metrics in one place, without middleware overhead.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from deployc import conventions as C
from deployc.serve import content
from deployc.serve import handlers as h
from deployc.serve.batcher import Batcher
from deployc.serve.bodies import error_response
from deployc.serve.codec import ClientError
from deployc.serve.config import ServingConfig
from deployc.serve.explain import explain_route
from deployc.serve.limits import ABORTED_KEY, STATE_KEY, LimitsState
from deployc.serve.metrics import ServerMetrics
from deployc.serve.openapi import OPENAPI_PATH, openapi
from deployc.serve.runtime import ModelRunner
from deployc.serve.state import ServerState, auth_token, bearer_ok

if TYPE_CHECKING:
    from deployc.serve.capture import Recorder

log = logging.getLogger("deployc.serve")
Handler = Callable[[Request], Awaitable[Response]]


def create_app(cfg: ServingConfig, runner: ModelRunner | None = None) -> Starlette:
    """Load and warm up the model (unless given), then build the app; the port opens only after this."""
    token = auth_token(cfg)
    runner = runner or ModelRunner(cfg)
    runner.warm_up()
    metrics = ServerMetrics(cfg)
    batcher = Batcher(runner, cfg.batching, cfg.max_batch_size, cfg.max_delay_ms, metrics.observe_batch)
    state = ServerState(cfg, runner, batcher, metrics, token, capture=_recorder(cfg, metrics))
    routes = _routes(state)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        batcher.start()
        if state.capture is not None:
            state.capture.start()
        grpc_server = None
        if cfg.grpc_port is not None:  # same loop, model, batcher and metrics (docs/serving.md, gRPC)
            from deployc.serve.grpc_server import start_grpc

            grpc_server = await start_grpc(state)
        state.started = True
        log.info("serving %s %s (batching %s)", cfg.name, cfg.version, "on" if batcher.enabled else "off")
        state.limits = LimitsState(cfg.limits, cfg.max_body_bytes)
        yield {STATE_KEY: state.limits}  # read by the protocol (limits.py)
        state.started = False
        if grpc_server is not None:
            await grpc_server.stop(30)  # finishes the RPCs in flight, like uvicorn's graceful shutdown
        await batcher.stop()
        if state.capture is not None:  # what the last requests queued is written before the process ends
            state.capture.stop()
        if metrics.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            msg = f"method {request.method} is not allowed on {request.url.path}"
        elif exc.status_code == 404:
            msg = f"no route {request.url.path}"
        else:
            msg = str(exc.detail)
        resp = error_response(exc.status_code, msg, dict(exc.headers or {}))
        metrics.observe_request(C.ROUTE_OTHER, exc.status_code, 0.0)
        return resp

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.serving = state
    return app


def _recorder(cfg: ServingConfig, metrics: ServerMetrics) -> Recorder | None:
    """The capture recorder (salts read, folder made 0700) when serving.json asks for capture, else None."""
    if cfg.capture is None:
        return None
    from deployc.serve.capture import Recorder, capture_folder, prepare_folder, read_salts

    salts = read_salts(cfg.capture, cfg.config_path)
    folder = prepare_folder(capture_folder(cfg.capture))
    return Recorder(cfg.capture, salts, folder, cfg.name, cfg.version, tuple(t.name for t in cfg.outputs),
                    metrics.capture_sampled.inc,
                    metrics.observe_capture_written, metrics.observe_capture_dropped)


def _endpoint(state: ServerState, route: str, fn: Handler, protected: bool) -> Handler:
    metrics, token = state.metrics, state.token

    async def handler(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            if protected and token is not None and not _authorized(request, token):
                resp = error_response(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                                      {"WWW-Authenticate": "Bearer"})
            else:
                resp = await fn(request)
        except ClientError as e:
            resp = error_response(e.status, e.message, {"Connection": "close", **(e.headers or {})}
                                  if e.status == 413 else e.headers)
        except ClientDisconnect:  # the client left mid-body (499, as nginx counts it) or was cut off (408, 503)
            resp = Response(status_code=request.scope.get(ABORTED_KEY, 499))
        except Exception:
            log.exception("internal error on %s", request.url.path)
            resp = error_response(500, "internal server error (see the server log)")
        resp = content.compress_response(request, resp)  # when Accept-Encoding asks and the body is large
        metrics.observe_request(route, resp.status_code, time.perf_counter() - t0)
        return resp

    return handler


def _authorized(request: Request, token: bytes) -> bool:
    return bearer_ok(request.headers.get(C.SERVE_AUTH_HEADER, ""), token)


MODEL_PATH = "/v2/models/{name}"  # each model route also answers under MODEL_PATH + "/versions/{version}"


def _routes(state: ServerState) -> list[Route]:
    Fn = Callable[[ServerState, Request], Awaitable[Response]]
    server: list[tuple[str, str, Fn, str, bool]] = [
        ("/v2/health/live", "GET", h.live, C.ROUTE_HEALTH, False),
        ("/v2/health/ready", "GET", h.ready, C.ROUTE_HEALTH, False),
        ("/ping", "GET", h.ping, C.ROUTE_HEALTH, False),
        ("/v2", "GET", h.server_metadata, C.ROUTE_METADATA, True),
        ("/invocations", "POST", h.invocations, C.ROUTE_INVOCATIONS, True),
        ("/metrics", "GET", h.metrics, C.ROUTE_METRICS, False),
        (OPENAPI_PATH, "GET", openapi, C.ROUTE_METADATA, True),
    ]
    model: list[tuple[str, str, Fn, str, bool]] = [
        ("", "GET", h.model_metadata, C.ROUTE_METADATA, True),
        ("/ready", "GET", h.model_ready, C.ROUTE_HEALTH, False),
        ("/infer", "POST", h.infer, C.ROUTE_INFER, True),
        ("/explain", "POST", explain_route, C.ROUTE_EXPLAIN, True),
    ]
    # inference first: Starlette tries routes in order (no two of these patterns match the same path)
    table = [(base + tail, method, fn, route, protected)
             for tail, method, fn, route, protected in model[::-1]
             for base in (MODEL_PATH, MODEL_PATH + "/versions/{version}")] + server
    routes = []
    for path, method, fn, route, protected in table:
        bound = _bind(fn, state)
        routes.append(Route(path, _endpoint(state, route, bound, protected), methods=[method]))
    return routes


def _bind(fn: Callable[[ServerState, Request], Awaitable[Response]], state: ServerState) -> Handler:
    async def call(request: Request) -> Response:
        return await fn(state, request)

    return call

