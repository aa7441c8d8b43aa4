"""Request bodies in, JSON bodies out: the HTTP plumbing the app, the route handlers and the OpenAPI route share."""
from __future__ import annotations

from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from deployc.serve import codec, content
from deployc.serve.codec import ClientError
from deployc.serve.state import ServerState

JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(codec.dumps(obj), status_code=status, media_type=JSON, headers=headers)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": message}, status, headers)


async def read_body(request: Request, limit: int) -> bytes:
    """Read the body, answering 413 as soon as it passes `limit` (from Content-Length, or while streaming).

    A gzip or deflate body (`Content-Encoding`) is decompressed as it arrives; its decompressed size counts
    against `limit` too (deployc/serve/content.py). Any other coding is a 415, before the body is read.
    """
    coding = content.request_coding(request.headers.get("content-encoding"))
    decoder = None if coding is None else content.BodyDecoder(coding, limit)
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ClientError(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise ClientError(413, f"the body ({declared} bytes) is larger than the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ClientError(413, f"the body is larger than the limit of {limit} bytes")
        if decoder is None:
            chunks.append(chunk)
        else:
            chunks += decoder.feed(chunk)
    if decoder is not None:
        chunks += decoder.finish()
    return b"".join(chunks)


def outputs_json(state: ServerState, outs: list[np.ndarray], wanted: list[str] | None) -> list[dict[str, Any]]:
    specs = state.cfg.outputs
    chosen = [i for i, s in enumerate(specs) if wanted is None or s.name in wanted]
    return [{"name": specs[i].name, "datatype": codec.v2_datatype(outs[i]), "shape": list(outs[i].shape),
             "data": np.ascontiguousarray(outs[i]).ravel()} for i in chosen]
