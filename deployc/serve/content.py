"""HTTP content negotiation and content codings: `Accept` and `Accept-Encoding` q-values (RFC 9110 §12), gzip and
deflate request bodies decoded incrementally under the body limit, responses compressed when the client asks.

A compressed body counts against `server.max_body_bytes` twice: its bytes on the wire and its decompressed bytes.
Decompression runs in steps of at most the bytes still allowed (`zlib.decompressobj` with `max_length`), so a
zip bomb is refused with 413 after producing at most `limit + 1` bytes, never by inflating it whole.
"""
from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from deployc.serve.codec import ClientError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

CODINGS = ("gzip", "deflate")  # in order of preference when a client accepts both equally
_ALIASES = {"x-gzip": "gzip"}  # RFC 9110 §8.4.1.3: x-gzip is gzip
MIN_COMPRESS_BYTES = 1024  # smaller bodies fit in one packet anyway; compressing them only costs time
COMPRESS_LEVEL = 1  # nginx's default gzip_comp_level: most of the size gain for a fraction of the time


def _qvalue(params: list[str]) -> float | None:
    """The `q` parameter of one list member (1 when absent); None when it is not a valid qvalue (0 to 1)."""
    for p in params:
        key, _, value = p.partition("=")
        if key.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return None
            return q if 0.0 <= q <= 1.0 else None
    return 1.0


def parse_qlist(header: str) -> list[tuple[str, float]]:
    """`a;q=0.5, b` -> [("a", 0.5), ("b", 1.0)], names lowercased, members with an invalid q dropped."""
    out = []
    for member in header.split(","):
        name, *params = member.split(";")
        name = name.strip().lower()
        q = _qvalue(params)
        if name and q is not None:
            out.append((name, q))
    return out


def _media_q(offered: str, ranges: list[tuple[str, float]]) -> tuple[float, int]:
    """q of `offered` from its most specific matching range (type/subtype > type/* > */*), and that range's
    position in the header (earlier wins ties); (0, 0) when no range matches."""
    kind = offered.split("/")[0] + "/*"
    best: tuple[int, float, int] | None = None  # (specificity, q, position)
    for pos, (rng, q) in enumerate(ranges):
        spec = 3 if rng == offered else 2 if rng == kind else 1 if rng == "*/*" else 0
        if spec and (best is None or spec > best[0]):
            best = (spec, q, pos)
    return (0.0, 0) if best is None else (best[1], best[2])


def choose_media(header: str | None, offered: tuple[str, ...]) -> str | None:
    """The offered media type the client prefers: highest q, then the earliest range in its header, then the
    server's order. No header (or a blank one) accepts anything: the first offered. None: nothing acceptable."""
    if header is None or not header.strip():
        return offered[0]
    ranges = parse_qlist(header)
    scored = []
    for i, media in enumerate(offered):
        q, pos = _media_q(media, ranges)
        if q > 0:
            scored.append((-q, pos, i, media))
    return min(scored)[3] if scored else None


def choose_encoding(header: str | None) -> str | None:
    """The coding to compress a response with, or None for identity (RFC 9110 §12.5.3)."""
    if not header:
        return None
    given = {_ALIASES.get(name, name): q for name, q in parse_qlist(header)}
    star = given.get("*", 0.0)
    scored = [(-given.get(c, star), i, c) for i, c in enumerate(CODINGS)]
    best = min(scored)
    return best[2] if best[0] < 0 else None


def compress(body: bytes, coding: str) -> bytes:
    """gzip (wbits 31) or deflate in its HTTP meaning, the zlib format (wbits 15)."""
    return zlib.compress(body, COMPRESS_LEVEL, wbits=31 if coding == "gzip" else 15)


def compress_response(request: Request, resp: Response) -> Response:
    """Compress `resp` in place when the client accepts gzip or deflate and the body is worth it."""
    body = getattr(resp, "body", b"")
    if len(body) < MIN_COMPRESS_BYTES or "content-encoding" in resp.headers:
        return resp
    resp.headers.append("Vary", "Accept-Encoding")
    coding = choose_encoding(request.headers.get("accept-encoding"))
    if coding is not None:
        resp.body = compress(body, coding)
        resp.headers["Content-Length"] = str(len(resp.body))
        resp.headers["Content-Encoding"] = coding
    return resp


def request_coding(header: str | None) -> str | None:
    """The request body's content coding from `Content-Encoding` (None: identity); 415 for any other."""
    if header is None:
        return None
    codings = [c.strip().lower() for c in header.split(",") if c.strip() and c.strip().lower() != "identity"]
    codings = [_ALIASES.get(c, c) for c in codings]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in CODINGS:
        raise ClientError(415, f"unsupported Content-Encoding {header!r}; send one of {', '.join(CODINGS)} "
                               "or an uncompressed body", {"Accept-Encoding": ", ".join(CODINGS)})
    return codings[0]


def _is_zlib_header(head: bytes) -> bool:
    """RFC 1950: CM 8 (deflate), a window of at most 32 KiB, and the check bits."""
    return head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and ((head[0] << 8) | head[1]) % 31 == 0


class BodyDecoder:
    """Decompresses a request body chunk by chunk, refusing (413) past `limit` decompressed bytes."""

    def __init__(self, coding: str, limit: int):
        self.coding = coding
        self.limit = limit
        self._left = limit  # decompressed bytes still allowed
        self._z: zlib._Decompress | None = None  # type: ignore[name-defined]
        self._pending = b""  # deflate: the first byte, until the second tells zlib format from raw deflate
        if coding == "gzip":
            self._z = zlib.decompressobj(wbits=31)

    def _start(self, data: bytes) -> bytes:
        """deflate: pick the zlib format (RFC 9110) or raw deflate (which some clients send) from the header."""
        data = self._pending + data
        if len(data) < 2:
            self._pending = data
            return b""
        self._pending = b""
        self._z = zlib.decompressobj(wbits=15 if _is_zlib_header(data) else -15)
        return data

    def feed(self, chunk: bytes) -> list[bytes]:
        """The decompressed pieces of `chunk` (possibly none)."""
        if self._z is None:
            chunk = self._start(chunk)
            if self._z is None:
                return []
        z = self._z
        if z.eof:
            if chunk:
                raise ClientError(400, f"the {self.coding} body has data after the end of its compressed stream")
            return []
        out: list[bytes] = []
        data = chunk
        while True:
            try:
                piece = z.decompress(data, self._left + 1)
            except zlib.error as e:
                raise ClientError(400, f"the body is not valid {self.coding} data ({e})") from None
            self._left -= len(piece)
            if self._left < 0:
                raise ClientError(413, f"the body is larger than the limit of {self.limit} bytes once "
                                       f"decompressed ({self.coding})")
            if piece:
                out.append(piece)
            data = z.unconsumed_tail
            if z.eof or (not data and not piece):
                break
        if z.unused_data:
            raise ClientError(400, f"the {self.coding} body has data after the end of its compressed stream")
        return out

    def finish(self) -> list[bytes]:
        """The last pieces; 400 when the compressed stream stops before its end."""
        out = self.feed(b"") if self._z is not None else []
        if self._z is None or not self._z.eof:
            raise ClientError(400, f"the {self.coding} body is truncated (its compressed stream does not end)")
        return out
