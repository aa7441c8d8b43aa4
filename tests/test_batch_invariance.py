"""Batch invariance: an int8-dynamic model's answer for one request depends on who else is in its batch.

The measurement (deployc/ml/invariance.py) on fp32 and int8-dynamic models, the batching decision it drives in
serving.json and report.md, the build error for `enabled: true` without the opt-in, and the coupling itself
through a real `deployc serve`: with cross-request batching forced on, one client's rows scaled x1000 change
another client's predictions; with the default build (batching off for this model) nothing changes.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_support import Server, make_mlp, v2_body

from deployc.api import build
from deployc.errors import SpecError
from deployc.targets.bundle import ENABLED_FIELD, OPT_IN_FIELD
from deployc.targets.invariance import batching_decision
from deployc.targets.local import Batching

DIMS = (16, 64, 64, 5)
ROWS = 64
ROUNDS = 8  # rounds of concurrent requests
PER_ROUND = 4  # client A's and client B's requests per round


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("inv")
    make_mlp(d / "fp32.onnx", dims=DIMS, seed=1)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(d / "fp32.onnx"), str(d / "int8.onnx"), weight_type=QuantType.QInt8)
    x = np.random.default_rng(7).standard_normal((ROWS, DIMS[0])).astype(np.float32)
    return {"dir": d, "fp32": d / "fp32.onnx", "int8": d / "int8.onnx", "x": x}


def test_fp32_model_is_batch_invariant(models: dict[str, Any]) -> None:
    from deployc.ml.invariance import RELATIVE_TOLERANCE, measure

    r = measure(models["fp32"], models["x"], "classification")
    assert r["invariant"] is True and r["measured"] and r["batch_dependent_ops"] == []
    assert r["rows"] == ROWS and r["changed_predictions"] == 0 and r["non_finite_outputs"] == 0
    assert r["relative_diff"] <= RELATIVE_TOLERANCE and r["mixed_batches"] > 2 * ROWS // 16


def test_int8_dynamic_model_is_not_and_the_figures_say_why(models: dict[str, Any]) -> None:
    from deployc.ml.invariance import measure

    r = measure(models["int8"], models["x"], "classification")
    assert r["invariant"] is False and r["batch_dependent_ops"] == ["DynamicQuantizeLinear"]
    hostile, ordinary = r["by_companions"]["hostile"], r["by_companions"]["eval"]
    assert hostile["changed_predictions"] > 0 and hostile["max_abs_diff"] > 1e-2
    assert 0 < ordinary["max_abs_diff"] < hostile["max_abs_diff"]  # ordinary traffic drifts too, less
    assert r["max_abs_diff"] == hostile["max_abs_diff"] and r["changed_predictions"] >= hostile["changed_predictions"]


def test_scan_finds_batch_dependent_operators_without_data(models: dict[str, Any]) -> None:
    from deployc.ml.invariance import scan

    assert scan(models["fp32"]) == [] and scan(models["int8"]) == ["DynamicQuantizeLinear"]


NOT_INVARIANT = {"measured": True, "batchable": True, "invariant": False, "rows": 64, "max_abs_diff": 0.31,
                 "relative_diff": 0.5, "changed_predictions": 9, "relative_tolerance": 1e-5,
                 "batch_dependent_ops": ["DynamicQuantizeLinear"]}
INVARIANT = {**NOT_INVARIANT, "invariant": True, "max_abs_diff": 0.0, "relative_diff": 0.0,
             "changed_predictions": 0, "batch_dependent_ops": []}


@pytest.mark.parametrize("batching, figures, enabled, error", [
    ({}, INVARIANT, True, False),
    ({}, NOT_INVARIANT, False, False),
    ({"enabled": False}, INVARIANT, False, False),
    ({"enabled": True}, INVARIANT, True, False),
    ({"enabled": True}, NOT_INVARIANT, False, True),
    ({"enabled": True, "allow_cross_request_variance": True}, NOT_INVARIANT, True, False),
    ({"allow_cross_request_variance": True}, NOT_INVARIANT, False, False),  # the opt-in alone turns nothing on
    ({}, {**NOT_INVARIANT, "batchable": False}, False, False),
    ({}, None, True, False),  # not measured (an emitter run outside a plan): the spec's value or on
])
def test_decision(batching: dict[str, Any], figures: dict[str, Any] | None, enabled: bool, error: bool) -> None:
    d = batching_decision(Batching.model_validate(batching), figures)
    assert d.enabled is enabled and (d.error is not None) is error
    if error:
        assert d.error.startswith(f"{ENABLED_FIELD}: true") and OPT_IN_FIELD in d.error
        assert "9 of 64 eval predictions changed class" in d.error and "0.31" in d.error


SPEC = """\
apiVersion: deployc/v1
name: mlp
version: 1.0.0
model: {path: model.onnx}
data:
  eval: {path: eval.npz, x: x}
optimize:
  - quantize: {mode: int8-dynamic}
measure: {min_seconds: 0.05}
targets:
  local: {port: 8080, batching: BATCHING}
"""


def _project(root: Path, models: dict[str, Any], name: str, batching: str) -> Path:
    d = root / name
    d.mkdir()
    (d / "model.onnx").write_bytes(models["fp32"].read_bytes())
    np.savez(d / "eval.npz", x=models["x"])
    (d / "deploy.yaml").write_text(SPEC.replace("BATCHING", batching))
    return d / "deploy.yaml"


@pytest.fixture(scope="module")
def builds(models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root, cache = tmp_path_factory.mktemp("projects"), tmp_path_factory.mktemp("cache")
    out = {}
    for name, batching in (("auto", "{max_delay_ms: 200}"),
                           ("forced", "{enabled: true, allow_cross_request_variance: true, max_delay_ms: 200}")):
        out[name] = build(_project(root, models, name, batching), root / f"{name}-build", cache).out_dir
    return out


def test_build_turns_batching_off_for_an_int8_dynamic_model_and_says_why(builds: dict[str, Path]) -> None:
    serving = json.loads((builds["auto"] / "local" / "serving.json").read_text())
    b = serving["batching"]
    assert b["enabled"] is False and b["max_delay_ms"] == 200
    inv = b["batch_invariant"]
    assert inv["invariant"] is False and inv["measured"] is True and inv["rows"] == ROWS
    assert inv["changed_predictions"] > 0 and inv["max_abs_diff"] > 1e-2
    report = json.loads((builds["auto"] / "report.json").read_text())
    assert report["batching"]["enabled"] is False and report["batching"]["batch_invariant"]["invariant"] is False
    line = next(x for x in (builds["auto"] / "report.md").read_text().splitlines() if "batching" in x)
    assert line.startswith("Cross-request batching: off (auto): not batch-invariant")
    forced = json.loads((builds["forced"] / "local" / "serving.json").read_text())["batching"]
    assert forced["enabled"] is True and forced["batch_invariant"] == inv
    assert "allow_cross_request_variance" in (builds["forced"] / "report.md").read_text()


def test_enabled_true_without_the_opt_in_is_a_build_error(models: dict[str, Any], tmp_path: Path) -> None:
    spec = _project(tmp_path, models, "explicit", "{enabled: true}")
    with pytest.raises(SpecError) as e:
        build(spec, tmp_path / "out", tmp_path / "cache")
    (problem,) = e.value.problems  # located at the field, like a validate error
    line = next(i for i, text in enumerate(spec.read_text().splitlines(), 1) if "enabled: true" in text)
    assert (problem.path, problem.line) == (ENABLED_FIELD, line)
    assert problem.message.startswith("true, but the shipped model is not batch-invariant")
    assert OPT_IN_FIELD in str(e.value) and "eval predictions changed class" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_without_eval_data_the_graph_decides(models: dict[str, Any], tmp_path: Path) -> None:
    d = tmp_path / "noeval"
    d.mkdir()
    (d / "model.onnx").write_bytes(models["fp32"].read_bytes())
    (d / "deploy.yaml").write_text(SPEC.replace("data:\n  eval: {path: eval.npz, x: x}\n", "")
                                   .replace("BATCHING", "{}"))
    out = build(d / "deploy.yaml", tmp_path / "out", tmp_path / "cache").out_dir
    b = json.loads((out / "local" / "serving.json").read_text())["batching"]
    assert b["enabled"] is False
    assert b["batch_invariant"]["measured"] is False and b["batch_invariant"]["rows"] == 0
    assert b["batch_invariant"]["batch_dependent_ops"] == ["DynamicQuantizeLinear"]
    assert "data.eval is not set" in (out / "report.md").read_text()


@pytest.mark.parametrize("runtime, planned", [("deployc", True), ("onnx", False)])
def test_every_target_shipping_serving_json_gets_the_step(models: dict[str, Any], tmp_path: Path, runtime: str,
                                                          planned: bool) -> None:
    from deployc.api import plan

    spec = _project(tmp_path, models, "kserve", "{}")
    text = spec.read_text().replace("  local: {port: 8080, batching: {}}\n", "")
    kserve = ("  kserve: {storage_uri: 's3://models/mlp', runtime: RUNTIME"
              + (", image: 'ghcr.io/acme/deployc-serve:0.1.0'}\n" if runtime == "deployc" else "}\n"))
    spec.write_text(text + kserve.replace("RUNTIME", runtime))
    ids = [s.id for s in plan(spec, tmp_path / "cache").plan.steps]
    assert ("local:batch-invariance" in ids) is planned and ids.count("local:batch-invariance") <= 1


def _predict(server: Server, rows: np.ndarray) -> np.ndarray:
    status, body = server.json("POST", "/v2/models/mlp/infer", v2_body(rows))
    assert status == 200, body
    out = body["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def _mixed_traffic(bundle: Path, x: np.ndarray) -> tuple[float, int, str]:
    """Client A sends one eval row per request while client B, at the same moment, sends rows x1000 (several
    threads each, so the batcher has companions to merge). Returns the largest difference of A's outputs from
    batch 1, how many of A's top-1 classes changed, and the server log."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(bundle / "local" / "model.onnx"), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    n = ROUNDS * PER_ROUND
    alone = np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(n)])
    got = np.full_like(alone, np.nan)
    hostile = x[n:n + 4] * 1000.0
    with Server(bundle / "local") as s:
        for r in range(ROUNDS):
            gate = threading.Barrier(2 * PER_ROUND)

            def client_a(i: int, gate: threading.Barrier = gate) -> None:
                gate.wait()
                got[i] = _predict(s, x[i:i + 1])[0]

            def client_b(gate: threading.Barrier = gate) -> None:
                gate.wait()
                _predict(s, hostile)

            threads = [threading.Thread(target=client_a, args=(r * PER_ROUND + k,)) for k in range(PER_ROUND)]
            threads += [threading.Thread(target=client_b) for _ in range(PER_ROUND)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        log = s.text()
    assert np.isfinite(got).all(), "a request of client A got no answer"
    changed = int(np.sum(got.argmax(axis=1) != alone.argmax(axis=1)))
    return float(np.max(np.abs(got - alone))), changed, log


def test_server_couples_requests_only_when_batching_is_forced(builds: dict[str, Path],
                                                               models: dict[str, Any]) -> None:
    x = models["x"]
    forced_diff, forced_changed, forced_log = _mixed_traffic(builds["forced"], x)
    assert forced_diff > 1e-2, "the batcher merged no request with another client's (or int8 got invariant)"
    assert "batching on" in forced_log and "not batch-invariant" in forced_log  # the server warns
    auto_diff, auto_changed, auto_log = _mixed_traffic(builds["auto"], x)
    assert auto_diff == 0.0 and auto_changed == 0, f"batch 1 vs served: {auto_diff}, {auto_changed} changed"
    assert "batching off" in auto_log
    print(f"forced: max abs diff {forced_diff:.4g}, {forced_changed}/{ROUNDS * PER_ROUND} classes changed; "
          f"auto: {auto_diff:g}, {auto_changed}/{ROUNDS * PER_ROUND}")
