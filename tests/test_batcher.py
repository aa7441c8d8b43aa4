"""The batcher's scheduling: which requests meet in one `session.run`, and how long a batch waits.

A fake runner records every call (the rows it got and the thread it ran on), so each test asserts the batches
the batcher formed. Waits are bounded by the batcher's own `max_delay_ms`; nothing sleeps to synchronise.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np

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


def test_a_lone_request_never_waits_for_companions() -> None:
    rec = Recorder()

    async def go(b: Batcher) -> tuple[list[float], float]:
        t0 = time.perf_counter()
        outs = [await b.infer(row(i), 1) for i in range(4)]
        return [float(o[0][0, 0]) for o in outs], time.perf_counter() - t0

    values, took = run(go, rec, max_delay_ms=500.0)
    assert values == [0.0, 2.0, 4.0, 6.0]
    assert took < 0.5  # four requests in a row, none waited out max_delay_ms
    assert [n for n, _ in rec.calls] == [1, 1, 1, 1]


def test_requests_that_arrive_together_share_one_run_on_the_worker_thread() -> None:
    rec = Recorder()

    async def go(b: Batcher) -> list[float]:
        outs = await asyncio.gather(*(b.infer(row(i), 1) for i in range(8)))
        return [float(o[0][0, 0]) for o in outs]

    assert run(go, rec) == [2.0 * i for i in range(8)]  # each request got its own rows back
    assert rec.calls == [(8, "deployc-infer_0")]


def test_a_batch_waits_for_a_request_still_being_decoded() -> None:
    """`arriving` holds the batch (within max_delay_ms) for a request whose body is in but not yet decoded."""
    rec = Recorder()

    async def go(b: Batcher) -> list[int]:
        async def late() -> None:
            b.arriving += 1
            await asyncio.sleep(0.005)  # decoding
            b.arrived()
            await b.infer(row(1), 1)

        await asyncio.gather(b.infer(row(0), 1), late())
        return [n for n, _ in rec.calls]

    assert run(go, rec, max_delay_ms=200.0) == [2]


def test_with_batching_off_requests_never_share_a_run() -> None:
    rec = Recorder()

    async def go(b: Batcher) -> None:
        await asyncio.gather(*(b.infer(row(i), 1) for i in range(6)))

    run(go, rec, enabled=False)
    assert sorted(n for n, _ in rec.calls) == [1] * 6


class FastRecorder(Recorder):
    batch1_s = 0.0001  # what ModelRunner.warm_up measured: 0.1 ms at batch 1


def test_a_lone_short_request_runs_on_the_loop_thread() -> None:
    """No thread hand-off for a request the HTTP server saw alone, when the model answers it within 1 ms."""
    rec = FastRecorder()

    async def go(b: Batcher) -> None:
        await b.infer(row(1), 1, lone=True)
        await b.infer({"x": np.ones((10, 3), np.float32)}, 10, lone=True)  # 10 x 0.1 ms: still within 1 ms
        await b.infer({"x": np.ones((11, 3), np.float32)}, 11, lone=True)  # 1.1 ms: to the worker
        await b.infer(row(1), 1)  # not known to be alone (gRPC, or other HTTP requests in the process)

    run(go, rec)
    assert rec.calls == [(1, "MainThread"), (10, "MainThread"), (11, "deployc-infer_0"), (1, "deployc-infer_0")]


def test_no_request_runs_on_the_loop_while_a_batch_computes() -> None:
    rec = FastRecorder(cost_s=0.05)

    async def go(b: Batcher) -> None:
        first = asyncio.ensure_future(b.infer(row(1), 1))  # queued: runs on the worker for 50 ms
        while not rec.calls and b._computing == 0:
            await asyncio.sleep(0.001)
        await b.infer(row(2), 1, lone=True)  # must wait for the worker, not stall the loop beside it
        await first

    run(go, rec)
    assert [name for _, name in rec.calls] == ["deployc-infer_0", "deployc-infer_0"]


def test_a_slow_model_never_runs_on_the_loop_thread() -> None:
    rec = Recorder()
    rec.batch1_s = 0.002  # type: ignore[attr-defined]  # 2 ms at batch 1: over the 1 ms bound

    async def go(b: Batcher) -> None:
        await b.infer(row(1), 1, lone=True)

    run(go, rec)
    assert rec.calls == [(1, "deployc-infer_0")]


def test_with_batching_off_a_lone_short_request_runs_on_the_loop_too() -> None:
    rec = FastRecorder()

    async def go(b: Batcher) -> None:
        await b.infer(row(1), 1, lone=True)
        await b.infer(row(1), 1)

    run(go, rec, enabled=False)
    assert [name for _, name in rec.calls] == ["MainThread", "deployc-infer_0"]
