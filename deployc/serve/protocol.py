"""HTTP/1.1 with bounds on slow and hostile clients: request head size, head and body timeouts, open connections
and the bytes of request bodies being received at once (docs/serving.md, "Limits").

uvicorn's httptools protocol buffers a request head of any size before the app sees it, waits forever for a head
or a body that never completes, and lets every connection buffer its body: slowloris clients hold connections
open indefinitely and a hundred stalled 7 MiB bodies hold 700 MB. This protocol:

- answers 431 (then closes) when a head passes MAX_HEAD_BYTES: while it arrives (before anything more is
  buffered, the way h11's `h11_max_incomplete_event_size` does) and when a whole oversized head came in one read;
- answers 408 (then closes) when a head is not complete `header_timeout_s` after its first byte (after the
  connection opened, for the first request), or a body sends nothing for `body_timeout_s` or is not complete
  `body_deadline_s` after its head;
- answers 503 with Retry-After (then closes) past `max_connections` open connections, or when a body does not fit
  in `max_inflight_body_bytes`: a declared Content-Length is reserved whole when the head completes, a chunked
  body counts chunk by chunk; the bytes are released when the body has fully arrived (or the connection ends).

Timers are armed only when a read leaves a head or body incomplete, so a request that arrives in one read (the
normal case) pays for none. Refusals at the head run a tiny ASGI app instead of the real one; cut-offs
mid-body write the answer on the socket and mark the request scope (`ABORTED_KEY`) for the app's metrics.
"""
from __future__ import annotations

import asyncio
from asyncio import TimerHandle
from typing import Any

from deployc.serve.limits import ABORTED_KEY, STATE_KEY, Limits, LimitsState, raw_response, refusal_app

MAX_HEAD_BYTES = 64 * 1024  # AWS load balancers allow 64 KiB of headers, nginx 32 KiB by default
HEAD_TOO_LARGE = f"the request line and headers are larger than {MAX_HEAD_BYTES} bytes"

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: uvicorn uses h11, bounded by its own settings
    HttpToolsProtocol = None  # type: ignore[assignment, misc]


def _refusal() -> bytes:
    return raw_response(431, HEAD_TOO_LARGE)


def _head_info(url: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes | None, bool]:
    """(head size in bytes, at least; Content-Length; chunked) from what the parser collected."""
    size, length, chunked = len(url) + 16, None, False  # 16: method, spaces, "HTTP/1.1", CRLF
    for name, value in headers:
        size += len(name) + len(value) + 4  # ": " and CRLF
        if name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    return size, length, chunked


_SMALL_BODY = 64 * 1024  # a body up to this size is copied behind the held head; a larger one is written apart


class OneWriteTransport:
    """A request's view of the connection's transport that holds the response head back until the body's first
    write, so a response leaves in one write (one system call, one TCP segment) instead of two.

    uvicorn writes the head on `http.response.start` and the body on `http.response.body`; a response always
    writes its body (an empty one too) except to HEAD, which gets no holding. `close` writes what is held first.
    An interim response (100 Continue) is never held.
    """

    __slots__ = ("_transport", "_held", "_first")

    def __init__(self, transport: Any, hold: bool):
        self._transport = transport
        self._held: bytes | None = None
        self._first = hold

    def write(self, data: bytes) -> None:
        held, self._held = self._held, None
        if self._first and data[9:10] != b"1":  # "HTTP/1.1 1xx": interim, goes out now
            self._first = False
            self._held = data
        elif held is None:
            self._transport.write(data)
        elif len(data) <= _SMALL_BODY:
            self._transport.write(held + data)
        else:
            self._transport.write(held)
            self._transport.write(data)

    def close(self) -> None:
        if self._held is not None:
            self._transport.write(self._held)
            self._held = None
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, ...: the connection's
        return getattr(self._transport, name)


if HttpToolsProtocol is not None:

    class BoundedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc, valid-type]
        """uvicorn's httptools protocol with the limits above; without a LimitsState only the head size."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_bytes = 0
            self._in_head = True
            self._in_body = False
            self._count_chunks = False  # a body without Content-Length: reserve bytes as they arrive
            self._reserved = 0  # budget bytes the message being parsed holds
            self._timer: TimerHandle | None = None
            self._body_start = self._body_seen = 0.0
            self._state: LimitsState | None = self.app_state.get(STATE_KEY)
            if self._state is not None:  # a connection that never sends a byte is cut off too
                self._state.request_tasks = self.tasks
                self._arm(self._state.limits.header_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._end_message()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes = 0
            self._in_head = True

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._cancel_timer()
            refusal = self._admit()
            if refusal is None:
                super().on_headers_complete()
                if self.cycle is not None:
                    hold = self.scope["method"] != "HEAD"
                    self.cycle.transport = OneWriteTransport(self.transport, hold)  # type: ignore[assignment]
                return
            app, self.app = self.app, refusal
            try:
                super().on_headers_complete()
            finally:
                self.app = app

        def on_body(self, body: bytes) -> None:
            if self.transport.is_closing():
                return
            if self._count_chunks:
                assert self._state is not None
                if not self._state.reserve(len(body)):
                    self._abort(503, self._over_budget())
                    return
                self._reserved += len(body)
            if self._timer is not None:
                self._body_seen = self.loop.time()
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._end_message()
            super().on_message_complete()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.parser is None or self.transport.is_closing():
                return
            if self._in_head:
                self._head_bytes += len(data)  # counted only while the head is still incomplete after this chunk
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._refuse_head()
                elif self._timer is None and self._state is not None:
                    self._arm(self._state.limits.header_timeout_s)
            elif self._timer is None and self._state is not None:
                if self._in_body:
                    self._body_start = self._body_seen = self.loop.time()
                    self._arm(min(self._state.limits.body_timeout_s, self._state.limits.body_deadline_s))
                elif self.timeout_keep_alive_task is None and (self.cycle is None or self.cycle.response_complete):
                    self._in_head = True  # bytes between requests (CRLFs) stopped the keep-alive timer
                    self._arm(self._state.limits.header_timeout_s)

        def _admit(self) -> Any:
            """None to run the app, or the refusal app to run instead (431, 503); reserves the body's bytes."""
            size, length, chunked = _head_info(self.url, self.headers)
            if size > MAX_HEAD_BYTES:
                return self._refuse(431, HEAD_TOO_LARGE)
            st = self._state
            if st is None:
                return None
            if len(self.connections) > st.limits.max_connections:
                return self._refuse(503, f"the server has {st.limits.max_connections} connections open, its limit; "
                                         "retry later")
            self._in_body = chunked or (length is not None and length != b"0")
            if length is not None:
                if length.isdigit() and 0 < int(length) <= st.max_body_bytes:  # larger: the app answers 413
                    if not st.reserve(int(length)):
                        self._in_body = False
                        return self._refuse(503, self._over_budget())
                    self._reserved = int(length)
            elif chunked:
                self._count_chunks = True
            return None

        def _over_budget(self) -> str:
            assert self._state is not None
            return (f"the server is receiving {self._state.limits.max_inflight_body_bytes} bytes of request bodies "
                    "at once, its limit; retry later")

        def _refuse(self, status: int, message: str) -> Any:
            self.logger.warning("%s from %s: %s", status, self.client, message)
            if self._state is not None:
                self._state.count(status)
            return refusal_app(status, message)

        def _refuse_head(self) -> None:
            self.logger.warning("request head over %d bytes from %s: refused", MAX_HEAD_BYTES, self.client)
            if self._state is not None:
                self._state.count(431)
            self.transport.write(_refusal())
            self.transport.close()

        def _end_message(self) -> None:
            self._in_body = self._count_chunks = False
            self._cancel_timer()
            if self._reserved and self._state is not None:
                self._state.release(self._reserved)
            self._reserved = 0

        def _arm(self, delay: float) -> None:
            self._cancel_timer()
            self._timer = self.loop.call_later(delay, self._on_timer)

        def _cancel_timer(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _on_timer(self) -> None:
            self._timer = None
            st = self._state
            if st is None or self.transport.is_closing() or not (self._in_head or self._in_body):
                return
            lim, now = st.limits, self.loop.time()
            if self.flow.read_paused:  # the server stopped reading (pipelining, a busy app), not the client
                self._body_seen = now
                self._arm(lim.header_timeout_s if self._in_head else lim.body_timeout_s)
            elif self._in_head:
                self._abort(408, f"the request head was not complete within {lim.header_timeout_s:g} s")
            elif now >= self._body_start + lim.body_deadline_s:
                self._abort(408, f"the request body was not complete within {lim.body_deadline_s:g} s")
            elif now >= self._body_seen + lim.body_timeout_s:
                self._abort(408, f"no bytes of the request body arrived for {lim.body_timeout_s:g} s")
            else:
                wake = min(self._body_seen + lim.body_timeout_s, self._body_start + lim.body_deadline_s)
                self._timer = self.loop.call_at(wake, self._on_timer)

        def _abort(self, status: int, message: str) -> None:
            """Answer `status` on the socket unless a response is under way there, then close the connection."""
            self.logger.warning("%s from %s: %s", status, self.client, message)
            if self._state is not None:
                self._state.count(status)
            # in a body, self.cycle is this message's; in a head, the previous message's (or None)
            cycle, in_body = self.cycle, self._in_body
            if in_body:
                free = not cycle.response_started
                cycle.scope[ABORTED_KEY] = status  # type: ignore[literal-required]
            else:
                free = cycle is None or cycle.response_complete
            if free and not self.pipeline:  # a pipelined message waits behind a response being written
                self.transport.write(raw_response(status, message))
            self._end_message()
            self.transport.close()
            if in_body:
                cycle.disconnected = True  # the app's receive() sees http.disconnect, its send() is dropped
                cycle.message_event.set()


def uvicorn_http_options(limits: Limits | None = None) -> dict[str, Any]:
    """The `uvicorn.Config` keywords for the limits, whichever HTTP implementation is installed.

    With httptools (uvicorn[standard], a dependency) BoundedHttpToolsProtocol enforces them all; with h11 only
    the head size, the keep-alive timeout and the connection count (uvicorn's limit_concurrency: 503 without
    Retry-After) apply.
    """
    limits = limits or Limits()
    options: dict[str, Any] = {"h11_max_incomplete_event_size": MAX_HEAD_BYTES,
                               "timeout_keep_alive": limits.keep_alive_s}
    try:
        import httptools  # noqa: F401
    except ImportError:
        have_httptools = False
    else:
        have_httptools = True
    if not have_httptools or HttpToolsProtocol is None:
        # uvicorn counts the new connection itself: limit + 1 lets `max_connections` be served
        return {**options, "http": "h11", "limit_concurrency": limits.max_connections + 1}
    return {**options, "http": BoundedHttpToolsProtocol}
