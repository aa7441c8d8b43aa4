"""Dynamic batching: merge concurrent requests into one `session.run`, then split the outputs back.

The batch closes as soon as nothing else is queued *and* no other request is still being read or decoded
(`arriving`), so a lone request never waits; `max_delay_ms` only bounds the wait for requests that are known to
be on their way. Inference runs on one worker thread, so the event loop keeps parsing the next requests while a
batch computes (onnxruntime releases the GIL).

A request that finds the server idle (the only HTTP request in the process, nothing queued, computing or being
decoded) and that the model answers within `INLINE_MAX_S` (its batch-1 time at warm-up, times its rows) runs on
the event loop thread instead: the two thread hand-offs cost more than so short a stall of the loop
(docs/serving.md, "Latency at low load").

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

import numpy as np

from deployc.serve.runtime import ModelRunner

log = logging.getLogger("deployc.serve")
INLINE_MAX_S = 0.001  # the longest a lone request may hold the event loop


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
        self._queue: deque[_Item] = deque()
        self._computing = 0  # batches (or requests, with batching off) handed to the worker threads
        self._inline_rows = _inline_rows(getattr(runner, "batch1_s", None))
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

    async def infer(self, feed: dict[str, np.ndarray], rows: int, lone: bool = False) -> list[np.ndarray]:
        """The model's outputs for this request's rows. `lone`: the caller knows no other request is on its way
        (the HTTP server counts the requests whose head has arrived), so a short one may run on the loop."""
        loop = asyncio.get_running_loop()
        if lone and rows <= self._inline_rows and not self._computing and self.arriving <= 0 and not self._queue:
            self.observe_batch(rows)
            return self.runner.run(feed)
        if not self.enabled:
            self.observe_batch(rows)
            self._computing += 1
            try:
                return await loop.run_in_executor(self._pool, self.runner.run, feed)
            finally:
                self._computing -= 1
        key = tuple(a.shape[1:] for a in feed.values())
        item = _Item(feed, rows, key, loop.create_future())
        self._queue.append(item)
        assert self._wake is not None
        self._wake.set()
        return await item.future

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
            if self.arriving <= 0 or self.max_delay_s <= 0:
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
            self._computing += 1
            try:
                await loop.run_in_executor(self._pool, self._run_batch, batch)
            except Exception:  # never let one bad batch stop the batcher
                log.exception("batch failed")
            finally:
                self._computing -= 1

    def _run_batch(self, batch: list[_Item]) -> None:
        """Runs on the worker thread; results are handed back to the loop thread-safely."""
        loop = batch[0].future.get_loop()
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
                    loop.call_soon_threadsafe(_resolve, it.future, part, None)
                return
            except Exception:  # fall back to one run per request, so one bad request fails alone
                groups = [[it] for it in batch]
        for (it,) in groups:
            try:
                self.observe_batch(it.rows)
                loop.call_soon_threadsafe(_resolve, it.future, self.runner.run(it.feed), None)
            except Exception as e:
                loop.call_soon_threadsafe(_resolve, it.future, None, e)


def _inline_rows(batch1_s: float | None) -> int:
    """How many rows a lone request may have to run on the loop thread (0: never), from the batch-1 time."""
    return int(INLINE_MAX_S / batch1_s + 1e-9) if batch1_s else 0


def _resolve(fut: asyncio.Future[list[np.ndarray]], value: list[np.ndarray] | None, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)  # type: ignore[arg-type]
