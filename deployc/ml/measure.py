"""Latency and throughput measurement: one definition for every artifact kind.

Every latency figure deployc reports (`latency_p50_ms` and `latency_p99_ms` in report.json, the value the
`max_latency_p99_ms` gate checks) comes from `measure_latency`, whatever runs the model: ONNX Runtime, the LiteRT
interpreter, or TensorFlow running the SavedModel that TF Serving loads. The caller passes a callable that runs one
batch-1 prediction of its artifact, input set and output read back, and the definition is the same for all:

1. Warm-up: the callable runs untimed until `warmup` calls (default 20) are done *and* `warmup_seconds` (default a
   tenth of `min_seconds`) have passed, at most `max_iterations` calls. First calls pay for lazy allocation,
   kernel selection, graph tracing and cold caches; none of them is timed.
2. Timing: each call is timed on its own with `time.perf_counter` (read just before the call and just after it
   returns). Calls go on until `min_seconds` (`measure.min_seconds` in the spec) have passed since the first timed
   call *and* `min_iterations` calls (default 200) were timed, whichever comes later, but stop at `max_iterations`
   (default 20,000) calls.
3. Figures: p50 and p99 are `numpy.percentile` of the per-call times in milliseconds with numpy's default `linear`
   method (the value at rank q/100 * (n - 1) of the sorted times, interpolated between the two nearest ranks),
   reported rounded to 4 decimals. With at least 200 calls the slowest call has no weight in p99 (at 200 calls it
   lies between the third and the second slowest), so no single outlier sets it.

Throughput (`measure_throughput`, ONNX only) times whole batches: one untimed call at the batch size, then calls
until `min_seconds` have passed (at least one); rows per second = rows run / elapsed seconds.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

WARMUP_CALLS = 20
MIN_ITERATIONS = 200
MAX_ITERATIONS = 20_000
WARMUP_SHARE = 0.1  # of min_seconds, when warmup_seconds is not given
PERCENTILE_METHOD: Final = "linear"  # numpy.percentile method
DECIMALS = 4
DISTRIBUTION: Final = (1, 5, 10, 25, 50, 75, 90, 95, 99)  # percentiles of report.json's latency_percentiles_ms

Clock = Callable[[], float]


@dataclass(frozen=True)
class Latency:
    """Batch-1 latency of one artifact (milliseconds), and how many calls it rests on."""

    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    iterations: int
    warmup_iterations: int
    seconds: float  # wall time of the timing loop
    distribution_ms: tuple[float, ...] = ()  # the DISTRIBUTION percentiles, in order (report.html's latency chart)

    def figures(self) -> dict[str, Any]:
        """The report.json keys, rounded as report.json shows them."""
        found: dict[str, Any] = {"latency_p50_ms": round(self.p50_ms, DECIMALS),
                                 "latency_p99_ms": round(self.p99_ms, DECIMALS)}
        if self.distribution_ms:
            found["latency_percentiles_ms"] = {str(q): round(v, DECIMALS)
                                               for q, v in zip(DISTRIBUTION, self.distribution_ms, strict=True)}
        return found


def percentiles_ms(seconds: list[float] | np.ndarray) -> tuple[float, float]:
    """(p50, p99) in milliseconds of per-call times in seconds, by the module's stated method."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p99 = np.percentile(ms, [50, 99], method=PERCENTILE_METHOD)
    return float(p50), float(p99)


def _warm_up(run_one: Callable[[], object], calls: int, seconds: float, cap: int, clock: Clock) -> int:
    done, start = 0, clock()
    while (done < calls or clock() - start < seconds) and done < cap:
        run_one()
        done += 1
    return done


def measure_latency(run_one: Callable[[], object], *, min_seconds: float, min_iterations: int = MIN_ITERATIONS,
                    warmup: int = WARMUP_CALLS, warmup_seconds: float | None = None,
                    max_iterations: int = MAX_ITERATIONS, clock: Clock = time.perf_counter) -> Latency:
    """Time `run_one` (one batch-1 prediction) as the module docstring defines; `clock` is replaceable for tests."""
    if min_seconds < 0 or warmup < 0 or not 1 <= min_iterations <= max_iterations:
        raise ValueError("measure_latency: need min_seconds >= 0, warmup >= 0, 1 <= min_iterations <= max_iterations")
    warm = _warm_up(run_one, warmup, min_seconds * WARMUP_SHARE if warmup_seconds is None else warmup_seconds,
                    max_iterations, clock)
    lat: list[float] = []
    start = end = clock()
    while (end - start < min_seconds or len(lat) < min_iterations) and len(lat) < max_iterations:
        t0 = clock()
        run_one()
        end = clock()
        lat.append(end - t0)
    p50, p99 = percentiles_ms(lat)
    ms = np.asarray(lat) * 1000.0
    dist = np.percentile(ms, DISTRIBUTION, method=PERCENTILE_METHOD)
    return Latency(p50_ms=p50, p99_ms=p99, mean_ms=float(ms.mean()), max_ms=float(ms.max()), iterations=len(lat),
                   warmup_iterations=warm, seconds=end - start, distribution_ms=tuple(float(v) for v in dist))


def measure_throughput(run_batch: Callable[[], object], rows: int, *, min_seconds: float, warmup: int = 1,
                       clock: Clock = time.perf_counter) -> float:
    """Rows per second of `run_batch` (one call runs `rows` rows): `warmup` untimed calls, then calls until
    `min_seconds` have passed, at least one."""
    for _ in range(warmup):
        run_batch()
    calls, start = 0, clock()
    elapsed = 0.0
    while calls == 0 or elapsed < min_seconds:
        run_batch()
        calls += 1
        elapsed = clock() - start
    return rows * calls / max(elapsed, 1e-9)
