"""HTTP/1.1 with a bound on the request head (request line + headers).

uvicorn's httptools protocol buffers a request head of any size before the app sees it: one client sending a
100 MB header line grows the server by 100 MB, a few such clients exhaust its memory. This protocol counts the
bytes received while a head is still incomplete and answers 431 (then closes) past MAX_HEAD_BYTES, the way h11
does with `h11_max_incomplete_event_size` (used when httptools is not installed).
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

MAX_HEAD_BYTES = 64 * 1024  # AWS load balancers allow 64 KiB of headers, nginx 32 KiB by default

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: uvicorn uses h11, bounded by its own setting
    HttpToolsProtocol = None  # type: ignore[assignment, misc]


def _refusal() -> bytes:
    body = json.dumps({"error": f"the request line and headers are larger than {MAX_HEAD_BYTES} bytes"}).encode()
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


if HttpToolsProtocol is not None:

    class BoundedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc, valid-type]
        """uvicorn's httptools protocol, refusing request heads over MAX_HEAD_BYTES."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_bytes = 0
            self._in_head = True

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes = 0
            self._in_head = True

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._in_head or self.parser is None or self.transport.is_closing():
                return
            self._head_bytes += len(data)  # counted only while the head is still incomplete after this chunk
            if self._head_bytes > MAX_HEAD_BYTES:
                self.logger.warning("request head over %d bytes from %s: refused", MAX_HEAD_BYTES, self.client)
                self.transport.write(_refusal())
                self.transport.close()


def uvicorn_http_options() -> dict[str, Any]:
    """The `uvicorn.Config` keywords that bound request heads, whichever HTTP implementation is installed."""
    options: dict[str, Any] = {"h11_max_incomplete_event_size": MAX_HEAD_BYTES}
    try:
        import httptools  # noqa: F401
    except ImportError:
        return {**options, "http": "h11"}
    if HttpToolsProtocol is None:
        return {**options, "http": "h11"}
    return {**options, "http": BoundedHttpToolsProtocol}
