"""Fuzzing `deployc serve` as a real process: malformed, oversized and hostile requests are 4xx, never 5xx.

Generated JSON bodies, structured-but-wrong v2 bodies, random bytes under random content types, huge declared
shapes, deep nesting, NaN/Infinity, oversized request heads and bursts of concurrent bad requests. After all of
it the process is alive, live, and its resident memory grew by less than MAX_RSS_GROWTH_KB. schemathesis, when
installed, then checks the server against its own OpenAPI document.
"""
from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fuzz_support import HOSTILE, rss_kb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_support import Server, v2_body, write_bundle

from deployc.serve.protocol import MAX_HEAD_BYTES

FUZZ = settings(deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                derandomize=True, database=None)
MAX_RSS_GROWTH_KB = 100 * 1024
INFER = "/v2/models/iris/infer"
ROUTES = [INFER, "/v2/models/iris/versions/1/infer", "/invocations"]
X = np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32)


class Watched:
    """The server and its resident memory once warm, for the growth check at the end of the module."""

    def __init__(self, server: Server):
        self.server = server
        for _ in range(20):
            assert server.request("POST", INFER, v2_body(X))[0] == 200
        self.rss_start = rss_kb(server.proc.pid)

    def post(self, path: str, body: bytes | dict[str, Any] | list[Any], headers: dict[str, str] | None = None
             ) -> tuple[int, bytes]:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        status, resp_headers, data = self.server.request("POST", path, body, hdrs)
        assert status < 500, (status, data[:300], body if isinstance(body, (dict, list)) else body[:300])
        if status == 400 and data == b"Invalid HTTP request received.":  # refused by the HTTP parser itself
            return status, data
        if status >= 400:
            assert resp_headers["content-type"] == "application/json"
            assert isinstance(json.loads(data)["error"], str)
        return status, data


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    with Server(write_bundle(tmp_path_factory.mktemp("fuzz-serve") / "iris")) as s:  # max_body_bytes 65536
        yield Watched(s)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=10), st.sampled_from(HOSTILE)),
    lambda kids: st.one_of(st.lists(kids, max_size=5),
                           st.dictionaries(st.sampled_from(["inputs", "outputs", "instances", "name", "shape", "data",
                                                            "datatype", "id", "parameters", "x"]), kids, max_size=5)),
    max_leaves=20)
names = st.one_of(st.just("x"), st.just("probabilities"), st.none(), st.integers(), st.just({}), st.just([]),
                  st.text(max_size=5))
shapes = st.one_of(st.lists(st.integers(-2, 2**63), max_size=4), st.just([1, 4]), st.just([2, 4]),
                   st.just([10**9, 4]), st.just([1, 1, 4]), st.lists(st.one_of(st.floats(), st.booleans(),
                                                                               st.text(max_size=2)), max_size=3),
                   st.none(), st.just("1,4"))
datas = st.one_of(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=12),
                  st.lists(st.integers(-2**64, 2**64), max_size=8),
                  st.lists(st.lists(st.floats(-10, 10), min_size=4, max_size=4), max_size=3),
                  st.lists(st.one_of(st.booleans(), st.none(), st.text(max_size=2)), max_size=4), json_values)


@st.composite
def v2_bodies(draw: Any) -> dict[str, Any]:
    tensors = [{k: v for k, v in {"name": draw(names), "shape": draw(shapes), "data": draw(datas),
                                  "datatype": draw(st.sampled_from(["FP32", "FP64", "INT64", "BOOL", "BYTES", "fp32"])),
                                  "parameters": draw(st.one_of(st.none(), json_values))}.items()
                if draw(st.integers(0, 9)) > 0} for _ in range(draw(st.integers(0, 3)))]
    body: dict[str, Any] = {"inputs": tensors}
    if draw(st.booleans()):
        body["outputs"] = draw(st.lists(st.one_of(st.fixed_dictionaries({"name": names}), json_values), max_size=3))
    if draw(st.booleans()):
        body["id"] = draw(json_values)
    return body


@settings(FUZZ, max_examples=120)
@given(body=json_values, route=st.sampled_from(ROUTES))
def test_arbitrary_json_is_never_a_server_error(srv: Watched, body: Any, route: str) -> None:
    srv.post(route, json.dumps(body).encode())


@settings(FUZZ, max_examples=200)
@given(body=v2_bodies(), route=st.sampled_from(ROUTES))
def test_structured_v2_bodies_are_answered_or_refused(srv: Watched, body: dict[str, Any], route: str) -> None:
    status, data = srv.post(route, json.dumps(body).encode())
    if status == 200:
        out = json.loads(data)["outputs"][0]
        assert out["name"] == "probabilities" and out["shape"][1] == 3
        assert len(out["data"]) == out["shape"][0] * 3


content_types = st.sampled_from(["application/json", "application/x-npy", "text/plain", "", "application/json; x=y",
                                 "multipart/form-data; boundary=x", "application/x-npy;\x7f", "\u00e9"])


@settings(FUZZ, max_examples=120)
@given(data=st.one_of(st.binary(max_size=400), st.binary(max_size=60).map(lambda b: b"\x93NUMPY\x01\x00" + b)),
       ctype=content_types, accept=st.sampled_from(["", "application/x-npy", "text/html", "*/*", "\x00"]),
       route=st.sampled_from(ROUTES))
def test_random_bytes_under_any_content_type(srv: Watched, data: bytes, ctype: str, accept: str, route: str) -> None:
    headers = {"Content-Type": ctype.encode("utf-8").decode("latin-1")}
    if accept:
        headers["Accept"] = accept
    srv.post(route, data, headers)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


GOOD = json.dumps(v2_body(X)).encode()
HOSTILE_BODIES = [
    ("huge declared shape", json.dumps({"inputs": [{"name": "x", "shape": [10**9, 4], "datatype": "FP32",
                                                    "data": [1, 2, 3, 4]}]}).encode(), "application/json"),
    ("shape past int64", json.dumps({"inputs": [{"name": "x", "shape": [2**63, 2**63], "datatype": "FP32",
                                                 "data": [1, 2, 3, 4]}]}).encode(), "application/json"),
    ("deep nesting", b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": '
     + b"[" * 20000 + b"]" * 20000 + b"}]}", "application/json"),
    ("nesting below the parser limit", b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": '
     + b"[" * 1000 + b"1" + b"]" * 1000 + b"}]}", "application/json"),
    ("NaN literal", GOOD.replace(b"0.1", b"NaN"), "application/json"),
    ("Infinity literal", GOOD.replace(b"0.1", b"-Infinity"), "application/json"),
    ("1e400", GOOD.replace(b"0.1", b"1e400"), "application/json"),
    ("unhashable input name", json.dumps({"inputs": [{"name": {}, "shape": [1, 4], "datatype": "FP32",
                                                      "data": [1, 2, 3, 4]}]}).encode(), "application/json"),
    ("list as input name", json.dumps({"inputs": [{"name": ["x"], "shape": [1, 4], "datatype": "FP32",
                                                   "data": [1, 2, 3, 4]}]}).encode(), "application/json"),
    ("unhashable output name", json.dumps({**v2_body(X), "outputs": [{"name": {"a": 1}}]}).encode(),
     "application/json"),
    ("npy declaring 4e9 values", b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, "
     b"'shape': (1000000000, 4), }" + b" " * 50 + b"\n", "application/x-npy"),
    ("npy object array", _npy(np.array([[1, 2, 3, 4]], dtype=np.float32)).replace(b"<f4", b"|O "),
     "application/x-npy"),
    ("npy strings", _npy(np.array([["a", "b", "c", "d"]])), "application/x-npy"),
    ("npy with NaN", _npy(np.full((1, 4), np.nan, np.float32)), "application/x-npy"),
    ("chunk of zeros", b"\0" * 60000, "application/json"),
]


@pytest.mark.parametrize("what,body,ctype", HOSTILE_BODIES, ids=[h[0] for h in HOSTILE_BODIES])
def test_hostile_bodies_are_client_errors(srv: Watched, what: str, body: bytes, ctype: str) -> None:
    for route in ROUTES if ctype == "application/json" else ["/invocations"]:
        status, data = srv.post(route, body, {"Content-Type": ctype})
        assert status in (400, 413), (what, route, status, data[:200])


def test_unhashable_names_get_a_message(srv: Watched) -> None:
    _, data = srv.post(INFER, HOSTILE_BODIES[7][1])
    assert json.loads(data)["error"] == "inputs[0]: unknown input name {}; the model takes ['x']"
    _, data = srv.post(INFER, HOSTILE_BODIES[9][1])
    assert json.loads(data)["error"] == "unknown output name(s) [{'a': 1}]; the model gives ['probabilities']"


def _raw(port: int, head: bytes, size: int) -> tuple[bytes, int]:
    """Send a request head padded with a `size`-byte header; the answer (if any) and the bytes sent."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=20) as c:
        try:
            c.sendall(head + b"X-Padding: ")
            while sent < size:
                chunk = b"a" * min(1 << 16, size - sent)
                c.sendall(chunk)
                sent += len(chunk)
            c.sendall(b"\r\n\r\n")
        except OSError:  # the server closed the connection: fine, read what it said
            pass
        try:
            return c.recv(4096), sent
        except OSError:
            return b"", sent


def test_oversized_request_heads_are_refused_without_buffering(srv: Watched) -> None:
    port, pid = srv.server.port, srv.server.proc.pid
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"
    answer, _ = _raw(port, head, MAX_HEAD_BYTES // 2)
    assert answer.startswith(b"HTTP/1.1 200 ")  # a large but acceptable header
    answer, _ = _raw(port, head, 4 * MAX_HEAD_BYTES)
    assert answer.startswith(b"HTTP/1.1 431 ") and b"larger than" in answer
    before = rss_kb(pid)
    answer, sent = _raw(port, b"POST " + INFER.encode() + b"?" + b"q" * 1000 + b" HTTP/1.1\r\n", 200 << 20)
    assert sent < 64 << 20, "the server kept reading a 200 MB header"
    assert rss_kb(pid) - before < 20 * 1024


def test_long_header_values_within_the_limit(srv: Watched) -> None:
    status, _, _ = srv.server.request("POST", INFER, v2_body(X), {"Content-Type": "application/json",
                                                                   "X-Trace": "t" * 30000,
                                                                   "Authorization": "Bearer " + "b" * 8000})
    assert status == 200


def test_many_concurrent_bad_requests(srv: Watched) -> None:
    bodies = [h[1] for h in HOSTILE_BODIES if h[2] == "application/json"] + [b"{", b"[]", b"null", GOOD]

    def hit(i: int) -> int:
        return srv.post(ROUTES[i % 3], bodies[i % len(bodies)])[0]

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(hit, range(300)))
    assert all(s < 500 for s in statuses) and statuses.count(200) >= 300 // len(bodies) // 2


def test_openapi_document_lists_every_route(srv: Watched) -> None:
    status, doc = srv.server.json("GET", "/v2/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.0.")
    assert set(doc["paths"]) == {
        "/v2/health/live", "/v2/health/ready", "/ping", "/v2", "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}", "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}/ready", "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer", "/invocations", "/metrics", "/v2/openapi.json"}
    schemas = doc["components"]["schemas"]
    assert schemas["RequestInput"]["properties"]["name"]["enum"] == ["x"]
    assert doc["paths"]["/v2/models/{name}/infer"]["post"]["parameters"][0]["schema"]["enum"] == ["iris"]
    for ops in doc["paths"].values():  # every operation documents its errors with the Error body
        for op in ops.values():
            for code, resp in op["responses"].items():
                if code.startswith("4"):
                    assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_schemathesis_against_the_openapi_document(srv: Watched, tmp_path: Path) -> None:
    """Positive and negative cases from the document: no 5xx, documented status codes, conforming bodies.

    `positive_data_acceptance` is left out: the document cannot say that `shape` must match `data`, so some
    schema-valid bodies are rightly refused with 400.
    """
    pytest.importorskip("schemathesis")
    st_cli = shutil.which("st", path=str(Path(sys.executable).parent))
    if st_cli is None:
        pytest.skip("schemathesis CLI not installed")
    url = f"http://127.0.0.1:{srv.server.port}/v2/openapi.json"
    t0 = time.monotonic()
    r = subprocess.run([st_cli, "run", url, "--max-examples", "25", "--seed", "1", "--mode", "all", "--checks", "all",
                        "--exclude-checks", "positive_data_acceptance", "--no-color", "--request-timeout", "10"],
                       capture_output=True, text=True, timeout=240, cwd=tmp_path)  # its cache folder goes there
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "generated" in r.stdout and time.monotonic() - t0 < 240


def test_zz_server_is_alive_and_memory_bounded(srv: Watched) -> None:
    """Runs last in the module (tests run in file order): after everything above, the server still serves."""
    s = srv.server
    assert s.proc.poll() is None
    assert s.request("GET", "/v2/health/live")[0] == 200
    assert s.request("POST", INFER, v2_body(X))[0] == 200
    growth = rss_kb(s.proc.pid) - srv.rss_start
    assert growth < MAX_RSS_GROWTH_KB, f"RSS grew by {growth} KiB"
    assert "Traceback" not in s.text()
