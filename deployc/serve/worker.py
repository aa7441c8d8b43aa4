"""The app factory each `--workers N` process calls; the parent passes the bundle through the environment."""
from __future__ import annotations

import os
from dataclasses import replace

from starlette.applications import Starlette

from deployc.serve.app import create_app
from deployc.serve.config import load_config

BUNDLE_ENV = "DEPLOYC_SERVE_BUNDLE"  # how `--workers N` passes the bundle to its worker processes
OVERRIDES_ENV = "DEPLOYC_SERVE_OVERRIDES"  # ... the command line's host, port and workers ("host,port,workers")
GRPC_PORT_ENV = "DEPLOYC_SERVE_GRPC_PORT"  # ... and the gRPC port the parent chose (empty: no gRPC)


def create_worker_app() -> Starlette:
    cfg = load_config(os.environ[BUNDLE_ENV])
    host, port, workers = os.environ.get(OVERRIDES_ENV, ",0,1").split(",")
    grpc_port = os.environ.get(GRPC_PORT_ENV, "")
    return create_app(replace(cfg, host=host or cfg.host, port=int(port), workers=int(workers),
                              grpc_port=int(grpc_port) if grpc_port else None))
