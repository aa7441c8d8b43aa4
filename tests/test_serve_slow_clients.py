"""`deployc serve` against slow and hostile clients: head/body/keep-alive timeouts, oversized heads in one read,
the connection limit and the in-flight body budget (memory and latency of normal traffic under a stalled-body
attack). Timeouts are configured short in serving.json so that every test takes seconds; loops are bounded."""
from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from deployc.errors import InputError
from deployc.serve.config import load_config
from deployc.serve.limits import Limits
from deployc.serve.protocol import MAX_HEAD_BYTES

try:  # tests/ may or may not be a package
    from tests.prom_support import wait_for
    from tests.serve_support import Server, latencies, rss_bytes, stalled_bodies, v2_body, write_bundle
except ImportError:
    from prom_support import wait_for
    from serve_support import Server, latencies, rss_bytes, stalled_bodies, v2_body, write_bundle

INFER = "/v2/models/iris/infer"
GOOD = json.dumps(v2_body(np.array([[0.1, 0.2, 0.3, 0.4]], np.float32))).encode()
SHORT = {"header_timeout_s": 1, "body_timeout_s": 1, "body_deadline_s": 3, "keep_alive_s": 1,
         "max_connections": 24, "max_inflight_body_bytes": 16 << 20}
MiB = 1 << 20


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    bundle = write_bundle(tmp_path_factory.mktemp("short") / "iris", server={"max_body_bytes": 8 * MiB}, limits=SHORT)
    with Server(bundle) as s:
        yield s


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _read_all(sock: socket.socket, deadline: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection (or `deadline`); and when it closed."""
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return data, time.monotonic()
        if not chunk:
            return data, time.monotonic()
        data += chunk
    raise AssertionError(f"the server did not close the connection; got {data[:200]!r}")


def _metric(server: Server, code: int) -> float:
    _, _, text = server.request("GET", "/metrics")
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith("deployc_requests_total{") and 'route="infer"' in line and f'code="{code}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_slowloris_connections_get_408_and_are_closed_within_the_header_timeout(short: Server) -> None:
    socks = [_connect(short.port) for _ in range(20)]
    t0 = time.monotonic()
    for s in socks:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
    for _ in range(8):  # one byte of head every 0.25 s, for 2 s: the head never completes
        time.sleep(0.25)
        for s in socks:
            with contextlib.suppress(OSError):
                s.send(b"X")
    for s in socks:
        data, closed_at = _read_all(s, t0 + 5)
        assert data.startswith(b"HTTP/1.1 408 ") and b"not complete within 1 s" in data, data[:200]
        assert closed_at - t0 < 1 + 1.5  # header_timeout_s plus scheduling slack
        s.close()
    assert short.request("GET", "/v2/health/live")[0] == 200


def test_a_connection_that_sends_nothing_is_closed(short: Server) -> None:
    with _connect(short.port) as s:
        t0 = time.monotonic()
        data, closed_at = _read_all(s, t0 + 5)
    assert data.startswith(b"HTTP/1.1 408 ") and closed_at - t0 < 2.5


def test_idle_keep_alive_connections_are_closed_after_keep_alive_s(short: Server) -> None:
    with _connect(short.port) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        t0 = time.monotonic()
        data, closed_at = _read_all(s, t0 + 5)
    assert data.startswith(b"HTTP/1.1 200 ") and b"408" not in data
    assert 0.8 < closed_at - t0 < 2.5


def _stall(port: int, declared: int, pieces: list[bytes], gap: float) -> tuple[bytes, float]:
    with _connect(port) as s:
        s.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {declared}\r\n\r\n".encode())
        t0 = time.monotonic()
        for piece in pieces:
            try:
                s.sendall(piece)
            except OSError:  # the server cut the body off
                break
            time.sleep(gap)
        data, closed_at = _read_all(s, t0 + 8)
    return data, closed_at - t0


def test_a_stalled_body_gets_408_and_is_counted(short: Server) -> None:
    before = _metric(short, 408)
    data, took = _stall(short.port, len(GOOD), [GOOD[:10]], 0)
    assert data.startswith(b"HTTP/1.1 408 ") and b"no bytes of the request body arrived for 1 s" in data
    assert b"connection: close" in data.lower() and took < 2.5
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]
    deadline = time.monotonic() + 5
    while _metric(short, 408) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(short, 408) == before + 1  # recorded as 408 for the infer route, not as a 499


def test_a_trickled_body_hits_the_body_deadline(short: Server) -> None:
    pieces = [GOOD[i:i + 1] for i in range(8)]  # a byte every 0.5 s: never idle for 1 s, never done
    data, took = _stall(short.port, len(GOOD), pieces, 0.5)
    assert data.startswith(b"HTTP/1.1 408 ") and b"not complete within 3 s" in data
    assert 2.8 < took < 5


def test_a_slow_but_steady_body_is_served(short: Server) -> None:
    with _connect(short.port) as s:
        s.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(GOOD)}\r\n\r\n".encode())
        half = len(GOOD) // 2
        for piece in (GOOD[:half], GOOD[half:]):
            time.sleep(0.6)  # under body_timeout_s each time
            s.sendall(piece)
        s.settimeout(5)
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("size", [65 * 1024, 100 * 1024, 127 * 1024])
def test_a_64_to_128_kib_head_in_one_read_gets_431(short: Server, size: int) -> None:
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * size + b"\r\n\r\n"
    with _connect(short.port) as s:
        s.sendall(head)
        data, _ = _read_all(s, time.monotonic() + 5)
    assert data.startswith(b"HTTP/1.1 431 ") and f"larger than {MAX_HEAD_BYTES} bytes".encode() in data


def test_a_head_just_under_the_limit_is_served(short: Server) -> None:
    pad = MAX_HEAD_BYTES - 200
    status, _, _ = short.request("GET", "/v2/health/live", headers={"X-Padding": "a" * pad})
    assert status == 200


def test_connections_past_max_connections_get_503_with_retry_after(short: Server) -> None:
    held = [_connect(short.port) for _ in range(SHORT["max_connections"])]
    try:
        # no wait needed: the listening socket accepts in arrival order, so the held connections are open
        # server-side before this one's head is read
        with _connect(short.port) as s:
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            data, _ = _read_all(s, time.monotonic() + 5)
    finally:
        for h in held:
            h.close()
    assert data.startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 1\r\n" in data.lower() and b"connections open" in data
    # once the server has seen the held connections close, a new one is served again
    wait_for(lambda: short.request("GET", "/v2/health/live")[0] == 200, 10, "a connection below the limit",
             interval_s=0.02)


def test_chunked_bodies_count_against_the_in_flight_budget(short: Server) -> None:
    socks: list[socket.socket] = []
    chunk = b"%x\r\n" % MiB + b" " * MiB + b"\r\n"
    try:
        for _ in range(3):  # 3 x 6 MiB of chunked bodies > the 16 MiB budget
            s = _connect(short.port)
            socks.append(s)
            s.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n".encode())
            try:
                for _ in range(6):
                    s.sendall(chunk)
            except OSError:
                pass
        answers = [b""] * len(socks)

        def all_answered() -> bool:  # one is refused at once, the others time out after body_timeout_s
            for i, more in enumerate(_answers(socks)):
                answers[i] += more
            return all(answers)

        wait_for(all_answered, 10, "every connection to be answered", interval_s=0.02)
    finally:
        for s in socks:
            s.close()
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503 ")]
    assert len(refused) == 1 and b"retry-after: 1" in refused[0].lower(), answers


def _answers(socks: list[socket.socket]) -> list[bytes]:
    """What each connection has been sent so far (b"" for nothing yet), without waiting."""
    out = []
    for s in socks:
        s.setblocking(False)
        try:
            out.append(s.recv(4096))
        except OSError:  # BlockingIOError included: nothing sent yet
            out.append(b"")
    return out


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Default timeouts (the attack must outlast the measurement), a 32 MiB budget, a long batching delay: a
    stalled body that made batches wait would add 20 ms to every request."""
    bundle = write_bundle(tmp_path_factory.mktemp("attack") / "iris", server={"max_body_bytes": 8 * MiB},
                          batching={"max_delay_ms": 20.0}, limits={"max_inflight_body_bytes": 32 * MiB})
    with Server(bundle) as s:
        yield s


def test_stalled_body_attack_keeps_memory_and_latency_bounded(attacked: Server) -> None:
    latencies(attacked.port, GOOD, 0.3)  # warm up
    quiet = float(np.median(latencies(attacked.port, GOOD, 1.0, max_requests=2000)))
    rss0 = rss_bytes(attacked.proc.pid)
    socks = stalled_bodies(attacked.port, 64, 7 * MiB, 3 * MiB)  # 192 MiB sent if nothing refused
    try:
        under = float(np.median(latencies(attacked.port, GOOD, 1.0, max_requests=2000)))
        grown = rss_bytes(attacked.proc.pid) - rss0
        answers = _answers(socks)
    finally:
        for s in socks:
            s.close()
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503 ")]
    assert len(refused) >= 64 - 32 // 7, "bodies past the 32 MiB budget must be refused"
    assert all(b"retry-after: 1" in a.lower() for a in refused)
    # stated bound: the 32 MiB budget plus 48 MiB for buffers and allocator slack (without it: 192 MiB)
    assert grown < 80 * MiB, f"RSS grew by {grown / MiB:.0f} MiB"
    # stated bound: p50 within 3x the quiet p50 + 5 ms (a batch waiting for stalled bodies adds 20 ms)
    assert under < 3 * quiet + 0.005, f"p50 {under * 1000:.2f} ms under attack vs {quiet * 1000:.2f} ms quiet"


def _bundle_with(tmp_path: Path, limits: dict[str, object]) -> Path:
    return write_bundle(tmp_path / "iris", server={"max_body_bytes": 8 * MiB}, limits=limits)


def test_limits_are_read_from_serving_json_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(_bundle_with(tmp_path, {"header_timeout_s": 2, "max_connections": 7}))
    assert cfg.limits == Limits(header_timeout_s=2.0, max_connections=7)


@pytest.mark.parametrize("limits,message", [
    ({"header_timeout": 2}, "unknown key(s) ['header_timeout']"),
    ({"body_timeout_s": 0}, "limits.body_timeout_s: must be > 0"),
    ({"max_connections": 1.5}, "limits.max_connections: expected int"),
    ({"max_inflight_body_bytes": MiB}, "below server.max_body_bytes"),
])
def test_bad_limits_are_refused_before_serving(tmp_path: Path, limits: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=None) as e:
        load_config(_bundle_with(tmp_path, limits))
    assert message in str(e.value)


def test_spec_limits_reach_the_server_config(tmp_path: Path) -> None:
    from deployc.targets.local import LocalConfig as LocalTarget

    spec = LocalTarget.model_validate({"limits": {"body_timeout_s": 3, "max_inflight_body_bytes": 16 * MiB}})
    cfg = load_config(_bundle_with(tmp_path, spec.limits.model_dump()))  # what targets/local.py writes
    assert cfg.limits == Limits(body_timeout_s=3.0, max_inflight_body_bytes=16 * MiB)
    with pytest.raises(ValueError, match="at least max_body_bytes"):
        LocalTarget.model_validate({"limits": {"max_inflight_body_bytes": MiB}})


class _Writes:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_a_response_leaves_in_one_write() -> None:
    from deployc.serve.protocol import OneWriteTransport

    head, body = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", b"{}"
    t = _Writes()
    one = OneWriteTransport(t, hold=True)
    one.write(head)
    assert t.writes == []  # held for the body
    one.write(body)
    assert t.writes == [head + body] and not one.is_closing()

    t = _Writes()  # 100 Continue goes out at once; the real head is then held for its body
    one = OneWriteTransport(t, hold=True)
    one.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    one.write(head)
    one.write(body)
    assert t.writes == [b"HTTP/1.1 100 Continue\r\n\r\n", head + body]

    t = _Writes()  # a large body is not copied behind the head
    one = OneWriteTransport(t, hold=True)
    one.write(head)
    one.write(b"x" * (1 << 20))
    assert [len(w) for w in t.writes] == [len(head), 1 << 20]

    t = _Writes()  # the app failed after the head: close sends the head first
    one = OneWriteTransport(t, hold=True)
    one.write(head)
    one.close()
    assert t.writes == [head] and t.closed

    t = _Writes()  # HEAD: nothing follows the head, so nothing is held
    OneWriteTransport(t, hold=False).write(head)
    assert t.writes == [head]


def _head_of_response(sock: socket.socket) -> bytes:
    data = b""
    sock.settimeout(5)
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def test_head_and_100_continue_are_answered_on_a_kept_alive_connection(short: Server) -> None:
    with _connect(short.port) as sock:
        sock.sendall(b"HEAD /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _head_of_response(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Expect: 100-continue\r\nContent-Length: {len(GOOD)}\r\n\r\n".encode())
        assert _head_of_response(sock) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(GOOD)
        answer = _head_of_response(sock)
        assert answer.startswith(b"HTTP/1.1 200 ")
        length = int(answer.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        rest = answer.split(b"\r\n\r\n", 1)[1]
        while len(rest) < length:
            rest += sock.recv(65536)
        assert json.loads(rest)["outputs"][0]["name"]
