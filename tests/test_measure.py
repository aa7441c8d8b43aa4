"""deployc.ml.measure: warm-up, the time and iteration floors, the percentile method, and that the ONNX, TFLite and
TF Serving verification steps all take their latency figures from it."""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployc.ml import measure
from deployc.ml.measure import Latency, measure_latency, measure_throughput, percentiles_ms


class FakeClock:
    """A clock that moves only when a fake model call says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def model(self, costs: Iterator[float]) -> Callable[[], object]:
        def run_one() -> object:
            self.calls += 1
            self.now += next(costs)
            return None

        return run_one


def constant(first: float, n_first: int, rest: float) -> Iterator[float]:
    for _ in range(n_first):
        yield first
    while True:
        yield rest


def test_warmup_calls_are_not_timed() -> None:
    clock = FakeClock()
    lat = measure_latency(clock.model(constant(1.0, 20, 1 / 1024)), min_seconds=0, clock=clock)
    assert lat.warmup_iterations == 20 and lat.iterations == 200 and clock.calls == 220
    assert lat.max_ms == lat.p99_ms == lat.p50_ms == pytest.approx(1000 / 1024)  # no 1 s warm-up call inside


def test_warmup_runs_for_its_time_floor_too() -> None:
    clock = FakeClock()
    lat = measure_latency(clock.model(constant(1 / 8, 0, 1 / 8)), min_seconds=0, warmup=2, warmup_seconds=0.5,
                          min_iterations=1, clock=clock)
    assert lat.warmup_iterations == 4  # 2 calls would be 0.25 s, under the 0.5 s floor
    clock = FakeClock()
    lat = measure_latency(clock.model(constant(1 / 4, 0, 1 / 4)), min_seconds=10, warmup=0, min_iterations=10,
                          clock=clock)
    assert lat.warmup_iterations == 4  # the default warm-up time: a tenth of min_seconds (1 s)


def test_timing_runs_at_least_min_seconds() -> None:
    clock = FakeClock()
    lat = measure_latency(clock.model(constant(0, 20, 1 / 64)), min_seconds=5, warmup_seconds=0, min_iterations=10,
                          clock=clock)
    assert lat.iterations == 320 and lat.seconds == 5.0  # 5 s of 1/64 s calls, well past the 10-call floor


def test_timing_runs_at_least_min_iterations() -> None:
    clock = FakeClock()
    lat = measure_latency(clock.model(constant(0, 20, 1 / 1024)), min_seconds=0.01, clock=clock)
    assert lat.iterations == measure.MIN_ITERATIONS == 200  # 0.01 s alone would be 11 calls
    clock = FakeClock()
    lat = measure_latency(clock.model(constant(0, 20, 1 / 1024)), min_seconds=1000, max_iterations=300, clock=clock)
    assert lat.iterations == 300  # the cap stops a fast model under a long min_seconds


def test_percentiles_are_numpys_linear_method() -> None:
    costs = [i / 1000 for i in range(1, 201)]  # 1 ms .. 200 ms, timed in random order
    random.Random(0).shuffle(costs)
    clock = FakeClock()
    lat = measure_latency(clock.model(iter([0.0] * 20 + costs)), min_seconds=0, warmup_seconds=0, clock=clock)
    assert lat.iterations == 200
    # linear: rank q/100 * (n - 1); p50 at 99.5 -> 100.5 ms, p99 at 197.01 -> 198 + 0.01 ms
    assert lat.p50_ms == pytest.approx(100.5) and lat.p99_ms == pytest.approx(198.01)
    assert lat.mean_ms == pytest.approx(100.5) and lat.max_ms == pytest.approx(200.0)
    assert percentiles_ms([0.001, 0.002, 0.003, 0.004]) == pytest.approx((2.5, 3.97))
    figures = Latency(p50_ms=1 / 3, p99_ms=2 / 3, mean_ms=0.5, max_ms=1.0, iterations=1, warmup_iterations=0,
                      seconds=0.0).figures()
    assert figures == {"latency_p50_ms": 0.3333, "latency_p99_ms": 0.6667}


def test_throughput_excludes_its_warmup_call() -> None:
    clock = FakeClock()
    rows_s = measure_throughput(clock.model(constant(10.0, 1, 1 / 4)), 64, min_seconds=1, clock=clock)
    assert rows_s == 256.0 and clock.calls == 5  # 4 timed batches of 64 rows in 1 s, after one untimed
    clock = FakeClock()
    assert measure_throughput(clock.model(constant(0, 0, 2.0)), 8, min_seconds=0.1, clock=clock) == 4.0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="min_iterations"):
        measure_latency(lambda: None, min_seconds=0.1, min_iterations=0)
    with pytest.raises(ValueError, match="min_iterations"):
        measure_latency(lambda: None, min_seconds=0.1, min_iterations=10, max_iterations=5)


# --- the three call sites ---------------------------------------------------------------------------------------


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Latency, int]]:
    """deployc.ml.measure.measure_latency, recorded: (what it returned, how often it ran the callable)."""
    calls: list[tuple[Latency, int]] = []
    real = measure.measure_latency

    def recorded(run_one: Callable[[], object], **kwargs: Any) -> Latency:
        n = 0

        def counted() -> object:
            nonlocal n
            n += 1
            return run_one()

        lat = real(counted, **kwargs)
        calls.append((lat, n))
        return lat

    monkeypatch.setattr(measure, "measure_latency", recorded)
    return calls


def _check(spy: list[tuple[Latency, int]], figures: dict[str, Any]) -> None:
    (lat, n), = spy
    assert n == lat.warmup_iterations + lat.iterations and lat.iterations >= measure.MIN_ITERATIONS
    assert {k: figures[k] for k in lat.figures()} == lat.figures()
    dist = figures["latency_percentiles_ms"]  # the report's latency chart: percentiles of the same calls
    assert list(dist) == [str(q) for q in measure.DISTRIBUTION]
    assert dist["50"] == figures["latency_p50_ms"] and dist["99"] == figures["latency_p99_ms"]
    assert list(dist.values()) == sorted(dist.values())


def test_onnx_latency_comes_from_the_module(spy: list[tuple[Latency, int]], tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from deployc.ml.evaluate import measure_onnx

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.ones(12, dtype=np.float32).tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    figures = measure_onnx(tmp_path / "m.onnx", np.zeros((5, 4), np.float32), batch_size=16, min_seconds=0.01)
    _check(spy, figures)
    assert figures["batch_size"] == 16 and figures["throughput_rows_s"] > 0


@pytest.fixture(scope="module")
def tf_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """saved_model/ (serving_default: x[None, 4] -> output = 2x) and model.tflite converted from it."""
    from deployc.ml.convert import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    class Double(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: Any) -> Any:
            return {"output": x * 2.0}

    root = tmp_path_factory.mktemp("tf-models")
    m = Double()
    tf.saved_model.save(m, str(root / "saved_model"), signatures={"serving_default": m.serve})
    conv = tf.lite.TFLiteConverter.from_saved_model(str(root / "saved_model"))
    (root / "model.tflite").write_bytes(conv.convert())
    return root


@pytest.mark.slow
def test_tflite_latency_comes_from_the_module(spy: list[tuple[Latency, int]], tf_models: Path) -> None:
    from deployc.ml.tflite import measure_tflite

    figures = measure_tflite(tf_models / "model.tflite", np.ones((3, 4), np.float32), min_seconds=0.01)
    _check(spy, figures)


@pytest.mark.slow
def test_tfserving_latency_comes_from_the_module(spy: list[tuple[Latency, int]], tf_models: Path,
                                                 tmp_path: Path) -> None:
    from deployc.compiler.steps import StepContext, StepOutput
    from deployc.schema import DeploySpec
    from deployc.targets.tfserving import EXPORT, run_verify

    spec = DeploySpec.model_validate({"apiVersion": "deployc/v1", "name": "double", "version": "1",
                                      "model": {"path": "model.keras"}, "measure": {"min_seconds": 0.01},
                                      "targets": {"tfserving": {}}})
    from deployc.compiler.resolved import resolve

    ctx = StepContext(out_dir=tmp_path, deps={EXPORT: StepOutput(tf_models, {})}, resolved=resolve(spec, tmp_path),
                      log=lambda _msg: None)
    result = run_verify(ctx)
    _check(spy, result["evaluation"])
    assert result["verified"] is False
