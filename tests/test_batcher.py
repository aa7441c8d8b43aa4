"""The batcher's scheduling: which requests meet in one `session.run`, where it runs, and how long a batch waits.

A fake runner records every call (the rows it got and the thread it ran on), so each test asserts the batches
the batcher formed. Waits are bounded by the batcher's own `max_delay_ms`; nothing sleeps to synchronise.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from deployc.serve import batcher as batcher_mod
from deployc.serve.batcher import Batcher


class Recorder:
    batchable = True
    cfg = None

    def __init__(self, cost_s: float = 0.0):
        self.calls: list[tuple[int, str]] = []  # (rows, thread name)
        self.cost_s = cost_s

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.cost_s:
            time.sleep(self.cost_s)  # stands in for inference time (releases the GIL like onnxruntime)
        x = feed["x"]
        self.calls.append((x.shape[0], threading.current_thread().name))
        return [x * 2]


def row(v: float) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 3), v, np.float32)}


def run(coro_fn: Any, rec: Recorder, *, enabled: bool = True, max_delay_ms: float = 20.0) -> Any:
    async def main() -> Any:
        b = Batcher(rec, enabled, 32, max_delay_ms, lambda n: None)  # type: ignore[arg-type]
        b.start()
        try:
            return await coro_fn(b)
        finally:
            await b.stop()

    return asyncio.run(main())


def test_a_lone_request_of_a_fast_model_runs_on_the_event_loop() -> None:
    rec = Recorder()

    async def go(b: Batcher) -> list[float]:
        outs = [await b.infer(row(i), 1) for i in range(4)]
        return [float(o[0][0, 0]) for o in outs]

    assert run(go, rec) == [0.0, 2.0, 4.0, 6.0]
    # the first run measures the model on the worker thread; the next ones, alone and fast, stay on the loop
    assert rec.calls[0] == (1, "deployc-infer_0")
    assert [t for _, t in rec.calls[1:]] == ["MainThread"] * 3


def test_requests_that_arrive_together_share_one_run_on_the_worker_thread() -> None:
    rec = Recorder()

    async def go(b: Batcher) -> list[float]:
        await b.infer(row(0), 1)  # measured: the model is fast enough to run inline
        outs = await asyncio.gather(*(b.infer(row(i), 1) for i in range(8)))
        return [float(o[0][0, 0]) for o in outs]

    assert run(go, rec) == [2.0 * i for i in range(8)]
    assert rec.calls[1] == (8, "deployc-infer_0")  # one batch, each request got its own rows back
    assert len(rec.calls) == 2


def test_after_a_burst_a_batch_waits_for_the_clients_seen_then_stops_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak concurrency is remembered for PEAK_WINDOW_S: a lone request then waits (within max_delay_ms) for
    the others' next requests; once the window passes it runs at once again."""
    monkeypatch.setattr(batcher_mod, "PEAK_WINDOW_S", 0.2)
    rec = Recorder()

    async def go(b: Batcher) -> tuple[float, float, int]:
        await asyncio.gather(*(b.infer(row(i), 1) for i in range(8)))
        assert b.expected() == 8
        t0 = time.perf_counter()
        await b.infer(row(1), 1)  # alone, but 8 clients were seen: waits up to max_delay_ms (20 ms)
        waited = time.perf_counter() - t0
        await asyncio.sleep(0.45)  # two windows later the peak is forgotten
        t0 = time.perf_counter()
        await b.infer(row(1), 1)
        return waited, time.perf_counter() - t0, b.expected()

    waited, quick, expected = run(go, rec)
    assert 0.015 <= waited < 1.0
    assert quick < 0.015
    assert expected == 1


def test_a_waiting_batch_closes_as_soon_as_the_expected_companions_are_in() -> None:
    rec = Recorder(cost_s=0.002)

    async def go(b: Batcher) -> list[int]:
        await asyncio.gather(*(b.infer(row(i), 1) for i in range(4)))  # 4 clients seen

        async def client(i: int, delay: float) -> None:
            await asyncio.sleep(delay)
            await b.infer(row(i), 1)

        rec.calls.clear()
        t0 = time.perf_counter()
        await asyncio.gather(client(0, 0), client(1, 0.003), client(2, 0.004), client(3, 0.005))
        assert time.perf_counter() - t0 < 0.5
        return [n for n, _ in rec.calls]

    assert run(go, rec, max_delay_ms=200.0) == [4]  # one batch of 4, without waiting out the 200 ms


def test_with_batching_off_requests_never_share_a_run() -> None:
    rec = Recorder()

    async def go(b: Batcher) -> None:
        await asyncio.gather(*(b.infer(row(i), 1) for i in range(6)))

    run(go, rec, enabled=False)
    assert sorted(n for n, _ in rec.calls) == [1] * 6
    assert all(t.startswith("deployc-infer") for _, t in rec.calls)  # never on the loop: the pool runs in parallel
