"""The app factory each `--workers N` process calls; the parent passes the bundle through the environment."""
from __future__ import annotations

import os
from dataclasses import replace

from starlette.applications import Starlette

from deployc.serve.app import create_app
from deployc.serve.config import load_config


def create_worker_app() -> Starlette:
    from deployc.serve.cli import BUNDLE_ENV, GRPC_PORT_ENV

    cfg = load_config(os.environ[BUNDLE_ENV])
    host, port, workers = os.environ.get("DEPLOYC_SERVE_OVERRIDES", ",0,1").split(",")
    grpc_port = os.environ.get(GRPC_PORT_ENV, "")
    return create_app(replace(cfg, host=host or cfg.host, port=int(port), workers=int(workers),
                              grpc_port=int(grpc_port) if grpc_port else None))
