"""Dynamic batching: merge concurrent requests into one `session.run`, then split the outputs back.

The batch closes as soon as nothing else is queued, no other request is still being read or decoded
(`arriving`) *and* every client seen recently has a request in the batch, so a lone request never waits;
`max_delay_ms` only bounds the wait for requests that are on their way. "Seen recently" is the peak number of
requests in the batcher at once over the last `PEAK_WINDOW_S` (two half-windows): under a steady load of N
closed-loop clients (wrk, h2load, a pool of workers) the peak is N, and a batch that holds fewer than N waits,
within `max_delay_ms`, for the others' next requests, which are on the wire while their answers are written.
gRPC calls reach the server whole (grpc.aio shows no call that is still arriving), so without this estimate
its batches would close at 2-3 rows under load.

Inference runs on one worker thread, so the event loop keeps parsing the next requests while a batch computes
(onnxruntime releases the GIL). A batch of one request of one row, on a server with nothing else queued or
arriving and no other client seen recently, runs on the event loop itself when the model's recent batch-1 run
time is under `INLINE_MAX_S`: the hand-off to the worker thread and back costs a sizeable share of such a
model's inference, and nobody is waiting. Requests that arrive together still meet in the queue first: the
batcher runs after every handler that was ready in the same turn of the loop.

With batching off (serving.json says so, e.g. for a model the build measured as not batch-invariant), each
request's own rows still run as one batch, but never together with another request's.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployc.serve.runtime import ModelRunner

log = logging.getLogger("deployc.serve")
PEAK_WINDOW_S = 0.5  # how long a burst of concurrent clients keeps batches waiting for them after it ends
INLINE_MAX_S = 0.002  # longest recent run time of a model that an idle server runs on the event loop


@dataclass
class _Item:
    feed: dict[str, np.ndarray]
    rows: int
    key: tuple[tuple[int, ...], ...]  # non-batch axes: only items with equal keys can be concatenated
    future: asyncio.Future[list[np.ndarray]] = field(repr=False)


class Batcher:
    def __init__(self, runner: ModelRunner, enabled: bool, max_batch_size: int, max_delay_ms: float,
                 observe_batch: Callable[[int], None]):
        self.runner = runner
        self.enabled = enabled and runner.batchable
        if self.enabled and getattr(runner.cfg, "batch_invariant", None) is False:
            log.warning("cross-request batching is on for a model the build measured as not batch-invariant "
                        "(batching.allow_cross_request_variance): a request's outputs depend on its batch companions")
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000.0
        self.observe_batch = observe_batch
        self.arriving = 0  # requests admitted but not yet submitted (body being read or decoded)
        self.inflight = 0  # requests submitted and not yet answered (queued, in the batch running, or inline)
        self._peak = self._peak_prev = 0  # most requests in flight at once, this half-window and the previous
        self._peak_since = 0.0
        self._run_s = float("inf")  # recent batch-1 run time (unknown until measured)
        self._queue: deque[_Item] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        workers = 1 if self.enabled else max(1, min(4, os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deployc-infer")

    def start(self) -> None:
        if self.enabled:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="deployc-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.shutdown(wait=True)

    def arrived(self) -> None:
        """The request left the `arriving` state (submitted, or rejected): the batcher may stop waiting."""
        self.arriving -= 1
        if self._wake is not None:
            self._wake.set()

    async def infer(self, feed: dict[str, np.ndarray], rows: int) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        self.inflight += 1
        self._note_peak(loop.time())
        try:
            if not self.enabled:
                self.observe_batch(rows)
                return await loop.run_in_executor(self._pool, self._timed_run, feed)
            key = tuple(a.shape[1:] for a in feed.values())
            item = _Item(feed, rows, key, loop.create_future())
            self._queue.append(item)
            assert self._wake is not None
            self._wake.set()
            return await item.future
        finally:
            self.inflight -= 1

    def expected(self) -> int:
        """How many clients were in flight at once recently: the batch size a steady load will bring."""
        return max(self._peak, self._peak_prev)

    def _note_peak(self, now: float) -> None:
        if now - self._peak_since >= PEAK_WINDOW_S / 2:
            stale = now - self._peak_since >= PEAK_WINDOW_S
            self._peak_prev, self._peak, self._peak_since = (0 if stale else self._peak), 0, now
        self._peak = max(self._peak, self.inflight)

    def _timed_run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        outs = self.runner.run(feed)
        if next(iter(feed.values())).shape[:1] == (1,):
            dt = time.perf_counter() - t0
            self._run_s = dt if self._run_s == float("inf") else 0.8 * self._run_s + 0.2 * dt
        return outs

    async def _wait(self, timeout: float) -> None:
        assert self._wake is not None
        self._wake.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _collect(self) -> list[_Item]:
        first = self._queue.popleft()
        batch, rows = [first], first.rows
        deadline: float | None = None
        while rows < self.max_batch_size:
            if self._queue:
                nxt = self._queue[0]
                if nxt.key != first.key or rows + nxt.rows > self.max_batch_size:
                    break
                batch.append(self._queue.popleft())
                rows += nxt.rows
                continue
            if self.max_delay_s <= 0 or (self.arriving <= 0 and len(batch) >= self.expected()):
                break
            now = time.monotonic()
            deadline = deadline or now + self.max_delay_s
            if now >= deadline:
                break
            await self._wait(deadline - now)
        return batch

    async def _loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = await self._collect()
            batch = [it for it in batch if not it.future.done()]  # a client may have gone away
            if not batch:
                continue
            try:
                if self._inline(batch):
                    self._run_batch(batch, _resolve)
                else:
                    await loop.run_in_executor(self._pool, self._run_batch, batch)
            except Exception:  # never let one bad batch stop the batcher
                log.exception("batch failed")

    def _inline(self, batch: list[_Item]) -> bool:
        """Run on the event loop: a lone batch-1 request of a fast model on an otherwise idle server."""
        return (len(batch) == 1 and batch[0].rows == 1 and self._run_s < INLINE_MAX_S and not self._queue
                and self.arriving <= 0 and self.expected() <= 1)

    def _run_batch(self, batch: list[_Item], deliver: Callable[..., None] | None = None) -> None:
        """Runs on the worker thread (results are handed back to the loop thread-safely), or on the loop itself
        with `deliver` given."""
        if deliver is None:
            loop = batch[0].future.get_loop()

            def deliver(*args: Any) -> None:
                loop.call_soon_threadsafe(_resolve, *args)
        if len(batch) == 1:
            groups = [batch]
        else:
            try:
                feed = {k: np.concatenate([it.feed[k] for it in batch]) for k in batch[0].feed}
                rows = sum(it.rows for it in batch)
                outs = self.runner.run(feed)
                if any(o.shape[0] != rows for o in outs):
                    raise ValueError("an output's first axis does not follow the batch")
                self.observe_batch(rows)
                start = 0
                for it in batch:
                    part = [o[start:start + it.rows] for o in outs]
                    start += it.rows
                    deliver(it.future, part, None)
                return
            except Exception:  # fall back to one run per request, so one bad request fails alone
                groups = [[it] for it in batch]
        for (it,) in groups:
            try:
                self.observe_batch(it.rows)
                deliver(it.future, self._timed_run(it.feed), None)
            except Exception as e:
                deliver(it.future, None, e)


def _resolve(fut: asyncio.Future[list[np.ndarray]], value: list[np.ndarray] | None, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)  # type: ignore[arg-type]
