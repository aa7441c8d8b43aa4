"""Compressed requests and responses (Content-Encoding, Accept-Encoding) through tritonclient and raw HTTP, bounded
by the body limit (a zip bomb is a 413 without inflating it); `Accept` q-values and an empty Content-Type on
/invocations.
"""
from __future__ import annotations

import gzip
import http.client
import io
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from deployc.serve.codec import ClientError
from deployc.serve.content import BodyDecoder, choose_encoding, choose_media

try:  # tests/ may or may not be a package
    from tests.serve_support import Server, reference, v2_body, write_bundle
except ImportError:
    from serve_support import Server, reference, v2_body, write_bundle

INFER = "/v2/models/iris/infer"
LIMIT = 65536  # write_bundle's server.max_body_bytes
X = np.random.default_rng(11).standard_normal((500, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with Server(write_bundle(tmp_path_factory.mktemp("b") / "iris")) as s:
        yield s


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident size (VmHWM): freed buffers cannot hide a past allocation."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


@pytest.mark.parametrize("req,resp", [("gzip", "gzip"), ("deflate", "deflate"), ("gzip", None), (None, "deflate")])
def test_tritonclient_with_compression(server: Server, req: str | None, resp: str | None) -> None:
    tritonhttp = pytest.importorskip("tritonclient.http")
    c = tritonhttp.InferenceServerClient(f"127.0.0.1:{server.port}")
    for binary in (True, False):
        inp = tritonhttp.InferInput("x", list(X.shape), "FP32")
        inp.set_data_from_numpy(X, binary_data=binary)
        outs = [tritonhttp.InferRequestedOutput("probabilities", binary_data=binary)]
        result = c.infer("iris", [inp], outputs=outs, request_compression_algorithm=req,
                         response_compression_algorithm=resp)
        np.testing.assert_allclose(result.as_numpy("probabilities"), reference(X), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("coding,compress", [("gzip", gzip.compress), ("x-gzip", gzip.compress),
                                             ("deflate", zlib.compress), ("deflate", raw_deflate),
                                             ("GZIP", gzip.compress), ("identity", lambda b: b)],
                         ids=["gzip", "x-gzip", "deflate-zlib", "deflate-raw", "upper-case", "identity"])
def test_compressed_json_requests(server: Server, coding: str, compress: object) -> None:
    body = compress(json.dumps(v2_body(X[:50])).encode())  # type: ignore[operator]
    status, _, data = server.request("POST", INFER, body, {"Content-Type": "application/json",
                                                            "Content-Encoding": coding})
    assert status == 200, data
    np.testing.assert_allclose(np.reshape(json.loads(data)["outputs"][0]["data"], (50, 3)), reference(X[:50]),
                               rtol=1e-6, atol=1e-7)


def test_compressed_chunked_request_and_invocations(server: Server) -> None:
    packed = gzip.compress(json.dumps({"instances": X[:40].tolist()}).encode())
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    try:  # an iterator body goes out with Transfer-Encoding: chunked, in small pieces
        conn.request("POST", "/invocations", body=iter([packed[i:i + 100] for i in range(0, len(packed), 100)]),
                     headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        resp = conn.getresponse()
        status, data = resp.status, resp.read()
    finally:
        conn.close()
    assert status == 200, data
    np.testing.assert_allclose(json.loads(data)["predictions"], reference(X[:40]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("accept,coding", [("gzip", "gzip"), ("deflate", "deflate"), ("gzip, deflate", "gzip"),
                                           ("deflate;q=1, gzip;q=0.5", "deflate"), ("*", "gzip"),
                                           ("gzip;q=0, *;q=0.3", "deflate"), ("gzip;q=0, deflate;q=0", None),
                                           ("br", None), ("identity", None), ("", None)])
def test_response_compression_follows_accept_encoding(server: Server, accept: str, coding: str | None) -> None:
    headers = {"Accept-Encoding": accept} if accept else {}
    status, resp_headers, data = server.request("POST", INFER, v2_body(X[:200]), headers)
    assert status == 200
    assert resp_headers.get("content-encoding") == coding
    assert resp_headers["vary"] == "Accept-Encoding" and int(resp_headers["content-length"]) == len(data)
    plain = {"gzip": gzip.decompress, "deflate": zlib.decompress, None: lambda b: b}[coding](data)
    np.testing.assert_allclose(np.reshape(json.loads(plain)["outputs"][0]["data"], (200, 3)), reference(X[:200]),
                               rtol=1e-6, atol=1e-7)
    if coding:
        assert len(data) < len(plain) / 2


def test_small_responses_and_metrics(server: Server) -> None:
    status, headers, _ = server.request("POST", INFER, v2_body(X[:1]), {"Accept-Encoding": "gzip"})
    assert status == 200 and "content-encoding" not in headers  # under MIN_COMPRESS_BYTES: not worth it
    status, headers, data = server.request("GET", "/metrics", None, {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"  # Prometheus asks for gzip
    assert b"deployc_requests_total" in gzip.decompress(data)


def test_decompressed_size_counts_against_the_limit(server: Server) -> None:
    head = json.dumps(v2_body(X[:1])).encode()
    exact = head + b" " * (LIMIT - len(head))  # whitespace is valid JSON padding: exactly the limit
    status, _, data = server.request("POST", INFER, gzip.compress(exact), {"Content-Encoding": "gzip"})
    assert status == 200, data
    status, headers, data = server.request("POST", INFER, gzip.compress(exact + b" "), {"Content-Encoding": "gzip"})
    assert status == 413 and headers["connection"] == "close"
    assert "larger than the limit of 65536 bytes once decompressed (gzip)" in json.loads(data)["error"]


def test_gzip_bomb_is_refused_without_inflating_it(server: Server) -> None:
    z = zlib.compressobj(9, wbits=31)
    bomb = b"".join(z.compress(b"\0" * (1 << 20)) for _ in range(48)) + z.flush()  # 48 MiB of zeros, 47 KiB
    assert len(bomb) < LIMIT  # passes the wire limit: only the decompressed size can stop it
    before = peak_rss_kib(server.proc.pid)
    for coding, body in (("gzip", bomb), ("deflate", zlib.compress(b"\0" * (48 << 20), 9))):
        status, _, data = server.request("POST", INFER, body, {"Content-Encoding": coding})
        assert status == 413, data
        assert "once decompressed" in json.loads(data)["error"]
    assert peak_rss_kib(server.proc.pid) - before < 16 * 1024, "the server inflated the bomb"


BAD_CODINGS = [  # (what, Content-Encoding, body, status, text in the error)
    ("deflate garbage", "deflate", b"\x78\x9c this is not deflate data", 400, "not valid deflate data"),
    ("raw garbage", "deflate", b"\xff\xff\xff\xff", 400, "not valid deflate data"),
    ("gzip garbage", "gzip", b"not gzip at all", 400, "not valid gzip data"),
    ("gzip truncated", "gzip", gzip.compress(json.dumps(v2_body(X[:5])).encode())[:-9], 400, "truncated"),
    ("empty gzip body", "gzip", b"", 400, "truncated"),
    ("data after the stream", "gzip", gzip.compress(json.dumps(v2_body(X[:1])).encode()) + b"junk", 400,
     "data after the end of its compressed stream"),
    ("brotli", "br", b"\x0b\x00\x80", 415, "unsupported Content-Encoding 'br'"),
    ("two codings", "gzip, deflate", b"x", 415, "unsupported Content-Encoding 'gzip, deflate'"),
    ("compress", "compress", b"x", 415, "unsupported Content-Encoding"),
]


@pytest.mark.parametrize("what,coding,body,status,text", BAD_CODINGS, ids=[b[0] for b in BAD_CODINGS])
def test_bad_content_encodings(server: Server, what: str, coding: str, body: bytes, status: int, text: str) -> None:
    for path in (INFER, "/invocations"):
        got, headers, data = server.request("POST", path, body, {"Content-Type": "application/json",
                                                                 "Content-Encoding": coding})
        assert got == status, (what, path, data)
        assert text in json.loads(data)["error"]
        if status == 415:
            assert headers["accept-encoding"] == "gzip, deflate"
    assert "Traceback" not in server.text()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


ACCEPTS = [  # Accept -> the Content-Type of the answer (None: 406)
    ("application/json;q=0.5, application/x-npy", "application/x-npy"),
    ("application/x-npy;q=0.9, application/json", "application/json"),
    ("application/x-npy, application/json", "application/x-npy"),  # equal q: the client's order
    ("*/*;q=0.1, application/json;q=0", "application/x-npy"),
    ("application/*;q=0.2, application/x-npy;q=0.1", "application/json"),
    ("*/*", "application/json"),
    ("text/html, */*;q=0.8", "application/json"),
    ("APPLICATION/X-NPY", "application/x-npy"),
    ("application/json; charset=utf-8", "application/json"),
    ("application/x-npy;q=abc, application/json;q=0.1", "application/json"),  # an invalid q drops that range
    ("   ", "application/json"),
    ("*/*;q=0", None),
    ("application/json;q=0, application/x-npy;q=0", None),
    ("text/csv, text/*", None),
]


@pytest.mark.parametrize("accept,answer", ACCEPTS, ids=[a[0] for a in ACCEPTS])
def test_invocations_accept_q_values(server: Server, accept: str, answer: str | None) -> None:
    status, headers, data = server.request("POST", "/invocations", {"instances": X[:2].tolist()}, {"Accept": accept})
    if answer is None:
        assert status == 406 and "cannot answer in" in json.loads(data)["error"]
        return
    assert status == 200 and headers["content-type"] == answer
    got = np.load(io.BytesIO(data)) if answer.endswith("npy") else np.array(json.loads(data)["predictions"])
    np.testing.assert_allclose(got, reference(X[:2]), rtol=1e-6)


@pytest.mark.parametrize("ctype", ["", "  ", ";charset=utf-8"])
def test_empty_content_type_is_json(server: Server, ctype: str) -> None:
    status, _, data = server.request("POST", "/invocations", json.dumps({"instances": X[:2].tolist()}).encode(),
                                     {"Content-Type": ctype})
    assert status == 200, data
    np.testing.assert_allclose(json.loads(data)["predictions"], reference(X[:2]), rtol=1e-6)
    status, _, data = server.request("POST", "/invocations", _npy(X[:2]), {"Content-Type": ""})
    assert status == 400 and "malformed JSON" in json.loads(data)["error"]  # empty means JSON, not a guess


def test_body_decoder_byte_by_byte() -> None:
    payload = bytes(range(256)) * 40 + b"a" * 20000
    for coding, packed in (("gzip", gzip.compress(payload)), ("deflate", zlib.compress(payload)),
                           ("deflate", raw_deflate(payload))):
        d = BodyDecoder(coding, len(payload))
        out = [piece for i in range(len(packed)) for piece in d.feed(packed[i:i + 1])] + d.finish()
        assert b"".join(out) == payload
        d = BodyDecoder(coding, len(payload) - 1)
        with pytest.raises(ClientError) as err:
            d.feed(packed)
            d.finish()
        assert err.value.status == 413


def test_negotiation_helpers() -> None:
    offered = ("application/json", "application/x-npy")
    assert choose_media(None, offered) == "application/json"
    assert choose_media("application/x-npy;q=1.5", offered) is None  # q over 1 is invalid: dropped
    assert choose_media("application/x-npy;q=0.001", offered) == "application/x-npy"
    assert choose_encoding("x-gzip") == "gzip" and choose_encoding("deflate;q=0.0") is None
    assert choose_encoding(",,;;q=,") is None
