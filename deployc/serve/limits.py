"""Limits against slow and hostile clients: timeouts, open connections, request bytes being received at once.

The values come from serving.json's `limits` (docs/serving.md, "Limits"). They are enforced by the HTTP protocol
(deployc/serve/protocol.py), which sees bytes as they arrive: a slow client is cut off by a timer on its
connection, not by a task per request, and a body counts against the in-flight budget from its declared
Content-Length (or, chunked, from its first byte) until it has fully arrived. The protocol finds the process's
`LimitsState` in the ASGI lifespan state the app yields (`STATE_KEY`), so every worker process has its own.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

STATE_KEY = "deployc.limits"  # lifespan-state key holding the LimitsState
ABORTED_KEY = "deployc.aborted"  # request-scope key: the status the protocol answered before cutting a request off
RETRY_AFTER_S = 1  # Retry-After on 503: the overload lasts as long as a request body takes to arrive


@dataclass(frozen=True)
class Limits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    body_deadline_s: float = 60.0
    keep_alive_s: float = 75.0
    max_connections: int = 512
    max_inflight_body_bytes: int = 64 << 20

    def problems(self, max_body_bytes: int) -> list[str]:
        """What is out of range, as `field: message` (empty when the limits are usable)."""
        out = [f"{k}: must be > 0, got {v!r}" for k, v in vars(self).items() if not v > 0]
        if self.max_inflight_body_bytes < max_body_bytes:
            out.append(f"max_inflight_body_bytes: {self.max_inflight_body_bytes} is below server.max_body_bytes "
                       f"({max_body_bytes}): a largest-allowed body could never be received")
        return out


@dataclass
class LimitsState:
    """Per process: the limits and the bytes of request bodies being received right now, over all connections."""
    limits: Limits
    max_body_bytes: int
    inflight_body_bytes: int = 0
    peak_inflight_body_bytes: int = 0
    refused: dict[int, int] = field(default_factory=dict)  # status -> count, for the log and the tests
    # uvicorn's set of running HTTP request tasks (one per request whose head has arrived, until it is answered);
    # the protocol puts it here, so a handler can tell whether its request is the only one in the process
    request_tasks: set[Any] = field(default_factory=set)

    def reserve(self, n: int) -> bool:
        """Take `n` bytes of the in-flight budget; False (nothing taken) when they do not fit."""
        if self.inflight_body_bytes + n > self.limits.max_inflight_body_bytes:
            return False
        self.inflight_body_bytes += n
        if self.inflight_body_bytes > self.peak_inflight_body_bytes:
            self.peak_inflight_body_bytes = self.inflight_body_bytes
        return True

    def release(self, n: int) -> None:
        self.inflight_body_bytes -= n

    def count(self, status: int) -> None:
        self.refused[status] = self.refused.get(status, 0) + 1


REASONS = {408: "Request Timeout", 413: "Content Too Large", 431: "Request Header Fields Too Large",
           503: "Service Unavailable"}


def _headers(status: int, body: bytes) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    if status == 503:
        headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
    return headers


def raw_response(status: int, message: str) -> bytes:
    """A complete `{"error": ...}` response with Connection: close, for the protocol to write on the socket."""
    body = json.dumps({"error": message}).encode()
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, '')}".encode()]
    lines += [name + b": " + value for name, value in _headers(status, body)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def refusal_app(status: int, message: str) -> Any:
    """An ASGI app answering every request with `status` and closing; run instead of the real app."""
    body = json.dumps({"error": message}).encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": _headers(status, body)})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return app
