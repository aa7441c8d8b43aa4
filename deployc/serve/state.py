"""What every route of one server shares: the config, the model, the batcher, the metrics and the auth token.

Read by the HTTP routes (`app`, `handlers`, `openapi`) and by the gRPC service alike, so it sits below all of
them and imports none.
"""
from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deployc.errors import InputError
from deployc.serve.batcher import Batcher
from deployc.serve.config import ServingConfig
from deployc.serve.limits import LimitsState
from deployc.serve.metrics import ServerMetrics
from deployc.serve.runtime import ModelRunner

if TYPE_CHECKING:
    from deployc.serve.capture import Recorder


@dataclass
class ServerState:
    cfg: ServingConfig
    runner: ModelRunner
    batcher: Batcher
    metrics: ServerMetrics
    token: bytes | None
    draining: bool = False
    started: bool = False
    limits: LimitsState | None = None  # set while serving; the HTTP protocol reads and updates it
    capture: Recorder | None = None  # masked data capture; None: off

    def lone_http_request(self) -> bool:
        """Whether the calling request is the only HTTP request in this process right now (head arrived,
        not yet answered): the batcher may then run it on the loop thread."""
        return self.limits is not None and len(self.limits.request_tasks) <= 1

    @property
    def ready(self) -> bool:
        return self.started and not self.draining


def auth_token(cfg: ServingConfig) -> bytes | None:
    """The bearer token from the environment variable serving.json names; refusing to start beats serving open.

    Every other secret and place the server needs before it serves is checked here too (the capture salts and
    folder), since `deployc serve --workers N` calls this once before it starts any worker."""
    if cfg.capture is not None:
        from deployc.serve.capture import capture_folder, prepare_folder, read_salts

        read_salts(cfg.capture, cfg.config_path)
        prepare_folder(capture_folder(cfg.capture))
    if cfg.auth_token_env is None:
        return None
    value = os.environ.get(cfg.auth_token_env, "")
    if not value:
        raise InputError(f"{cfg.config_path}: server.auth_token_env names {cfg.auth_token_env}, which is not set "
                         "(or empty): refusing to start without the token")
    return value.encode()


def bearer_ok(header: str, token: bytes) -> bool:
    """`Bearer <token>` checked in constant time; shared by the HTTP routes and the gRPC service."""
    scheme, _, given = header.partition(" ")
    # compare_digest runs in time independent of where the strings differ
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)
