"""The resolved model (the spec lowered once, defaults filled), the plan's gated steps and its one-copy rule, and
the typed step results, which give back the cache's JSON byte for byte."""
from __future__ import annotations

import json
import shutil
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
from aws_support import tiny_onnx_project

from deployc import api
from deployc.compiler.cache import ENTRY, Cache
from deployc.compiler.load import load_spec
from deployc.compiler.plan import Plan, PlanError, keyed, make_plan
from deployc.compiler.resolved import ANY_INPUT, GateLimits, Resolved, Tensor, resolve
from deployc.compiler.results import ArtifactEvaluation, ModelResult, ReferenceResult, model_io
from deployc.compiler.steps import REFERENCE, SOURCE, Step
from deployc.compiler.validate import validate
from deployc.schema.spec import Gates
from deployc.targets.invariance import INVARIANCE
from deployc.targets.local import LocalConfig
from deployc.targets.triton import TritonTarget

ROOT = Path(__file__).resolve().parents[1]
GOOD = ROOT / "tests" / "specs" / "good"


def plan_of(path: Path) -> Plan:
    loaded = load_spec(path)
    return make_plan(validate(loaded), path, loaded.text)


def resolved_of(path: Path) -> Resolved:
    return resolve(validate(load_spec(path)), path.parent.resolve())


def test_full_spec_resolves_names_dtypes_shapes_data_and_defaults() -> None:
    r = resolved_of(GOOD / "full.yaml")
    assert (r.name, r.version, r.format, r.task) == ("full-example", "2.1.0", "keras", "classification")
    pixels = Tensor("pixels", "float32", (-1, 64))
    assert r.inputs == r.declared_inputs == (pixels,) and r.outputs == ()
    assert pixels.datatype == "FP32" and pixels.to_json() == {"name": "pixels", "dtype": "float32", "shape": [-1, 64]}
    assert r.model_path == GOOD / "model.keras" and r.labels == GOOD / "labels.txt"
    assert list(r.data) == ["eval", "calibration", "train"]
    train = r.data["train"]
    assert list(train.inputs) == ["pixels"]
    assert (train.x.file, train.x.key, train.x.limit) == (GOOD / "train.npz", "x", 1000)
    assert train.labels is not None and (train.labels.key, train.labels.limit) == ("y", 1000)
    assert r.data["calibration"].labels is None
    assert r.data_params("eval", "train") == {"eval": {"path": "eval.npz", "x": "x", "y": "y", "limit": None},
                                              "train": {"path": "train.npz", "x": "x", "y": "y", "limit": 1000}}
    assert r.gates == GateLimits(max_accuracy_drop=0.01, min_agreement=0.99, max_size_mb=5.0, max_latency_p99_ms=10.0)
    assert r.gates.limits() == (("max_accuracy_drop", 0.01), ("min_agreement", 0.99), ("max_size_mb", 5.0),
                                ("max_latency_p99_ms", 10.0))
    assert (r.measure.threads, r.measure.batch_size, r.measure.min_seconds) == (1, 64, 0.5)  # min_seconds: default
    assert [(u.step_id, u.entry.builtin) for u in r.passes] == [
        ("optimize[0].distill", True), ("optimize[1].prune", True), ("optimize[2].quantize", True)]
    quantize = r.passes[2].config
    assert quantize.mode == "auto" and quantize.candidates == [
        "int8-dynamic", "int8-static", "int8-static-per-tensor", "float16", "openvino-int8", "openvino-int8-batch1"]
    assert r.passes[1].config.epochs == 2  # a default the spec leaves out
    assert r.target_names() == ("local", "tflite", "sagemaker")
    assert r.local.port == 9000 and r.local is r.targets[0].config
    assert r.targets[1].config.max_size_kb == 512


def test_onnx_spec_reads_its_inputs_and_outputs_from_the_model_file() -> None:
    r = resolved_of(GOOD / "minimal.yaml")
    assert r.format == "onnx" and r.declared_inputs == ()
    assert r.inputs == (Tensor("x", "float32", (-1, 4)),)
    assert r.outputs == (Tensor("probs", "float32", (-1, 3)),)
    assert r.data == {} and r.passes == () and r.targets == ()
    assert r.gates == GateLimits() and r.gates.limits() == ()
    assert r.local == LocalConfig()  # unset: the defaults every serving.json would follow


def test_digits_example_names_its_input_from_the_keras_file(digits: Path) -> None:
    r = resolved_of(digits / "deploy.yaml")
    assert r.format == "keras" and r.declared_inputs == ()
    assert r.inputs == (Tensor("pixels", "float32", (-1, 64)),)  # the .keras archive's input layer
    assert r.outputs == ()  # known once the conversion has run
    assert {w: (list(ds.inputs), ds.x.key, ds.labels.key if ds.labels else None) for w, ds in r.data.items()} == {
        "eval": (["pixels"], "x", "y"), "calibration": (["pixels"], "x", None), "train": (["pixels"], "x", "y")}
    assert r.gates.limits() == (("max_accuracy_drop", 0.01), ("min_agreement", 0.98), ("max_size_mb", 1.0),
                                ("min_attribution_agreement", 0.8))
    assert r.explain is not None and r.explain.method == "integrated-gradients" and r.explain.sample == 64
    assert [(u.name, u.config.mode) for u in r.passes] == [("quantize", "int8-dynamic")]
    assert r.target_names() == ("local", "tflite", "sagemaker")
    assert (r.local.port, r.local.batching.max_batch_size, r.local.batching.max_delay_ms) == (8080, 32, 2.0)


def test_an_unnamed_input_keys_the_data_sets_by_position(tmp_path: Path) -> None:
    shutil.copy(GOOD / "eval.npz", tmp_path / "eval.npz")
    (tmp_path / "model").mkdir()  # a SavedModel folder: nothing names its inputs before the build
    (tmp_path / "model" / "saved_model.pb").write_bytes(b"")
    spec = validate(_loaded(tmp_path, "model: {path: model}\ndata:\n  eval: {path: eval.npz}\n"))
    r = resolve(spec, tmp_path)
    assert r.format == "savedmodel" and r.inputs == () and list(r.data["eval"].inputs) == [ANY_INPUT]


def _loaded(folder: Path, body: str) -> Any:
    path = folder / "deploy.yaml"
    path.write_text("apiVersion: deployc/v1\nname: t\n" + body)
    return load_spec(path)


def test_gate_limits_follow_the_schema_fields_in_order() -> None:
    assert [f.name for f in fields(GateLimits)] == list(Gates.model_fields)


def test_the_plan_carries_the_resolved_model_and_gates_exactly_the_verify_steps(digits: Path) -> None:
    plan = plan_of(digits / "deploy.yaml")
    assert plan.resolved == resolved_of(digits / "deploy.yaml")
    gated = [s.id for s in plan.steps if s.gated]
    assert gated == ["evaluate:optimize[0]", "tflite:verify"] == list(plan.shipped)
    assert plan.evaluations == ("evaluate:onnx-fp32", "evaluate:optimize[0]", "tflite:verify")
    assert not any(s.gated for s in plan.steps if s.id in (SOURCE, REFERENCE, "evaluate:onnx-fp32", "tflite:convert"))


def test_without_eval_data_nothing_is_gated() -> None:
    plan = plan_of(GOOD / "defaults-pass.yaml")
    assert not any(s.gated for s in plan.steps) and plan.shipped == plan.evaluations == ()


@pytest.fixture
def onnx_project(tmp_path: Path) -> Path:
    return tiny_onnx_project(
        tmp_path / "p", 16, "apiVersion: deployc/v1\nname: rt\nmodel: {path: model.onnx}\n"
        "data:\n  eval: {path: eval.npz, x: x, y: y, limit: 12}\n"
        "optimize:\n  - quantize: {mode: int8-dynamic}\n"
        "gates: {min_agreement: 0.5}\nmeasure: {min_seconds: 0.01}\n"
        "targets:\n  local:\n  triton:\n")


def test_a_step_two_targets_plan_alike_is_kept_once(onnx_project: Path) -> None:
    plan = plan_of(onnx_project / "deploy.yaml")
    ids = [s.id for s in plan.steps]
    assert ids.count(INVARIANCE) == 1 and len(ids) == len(set(ids)) == len(plan.keys)
    assert plan.resolved.inputs == (Tensor("x", "float32", (-1, 4)),)
    assert plan.resolved.data["eval"].inputs["x"].limit == 12


def test_one_step_id_planned_with_two_keys_is_refused(onnx_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = TritonTarget.steps

    def other(self: TritonTarget, *args: Any) -> list[Step]:
        return [replace(s, params={**s.params, "task": "regression"}) for s in original(self, *args)]

    monkeypatch.setattr(TritonTarget, "steps", other)
    with pytest.raises(PlanError, match=r"step 'local:batch-invariance' is planned by targets.local and by "
                                        r"targets.triton with different inputs \(keys [0-9a-f]{12} and "):
        plan_of(onnx_project / "deploy.yaml")


def test_keyed_keeps_a_repeated_step_once_and_refuses_a_changed_one(tmp_path: Path) -> None:
    def run(_: Any) -> dict[str, Any]:
        return {}

    a = Step("a", "first", run, params={"n": 1})
    b = Step("b", "second", run, deps=("a",))
    steps, keys = keyed([("x", a), ("x", b), ("y", replace(a, description="same work"))], tmp_path)
    assert [s.id for s in steps] == ["a", "b"] and set(keys) == {"a", "b"}
    with pytest.raises(PlanError, match="planned by x and by y"):
        keyed([("x", a), ("y", replace(a, params={"n": 2}))], tmp_path)


def _entry_bytes(cache: Cache, key: str) -> bytes:
    found = cache.get(key)
    assert found is not None
    return (found[0] / ENTRY).read_bytes()


def _round_trip(entry: bytes, typed: Any) -> bytes:
    """The cache entry written again with the typed result's JSON in place of the stored one."""
    doc = json.loads(entry)
    doc["result"] = typed.to_json()
    return json.dumps(doc, sort_keys=True, indent=1, allow_nan=False).encode()


def test_typed_results_give_back_a_real_builds_cached_json_byte_for_byte(onnx_project: Path, tmp_path: Path
                                                                         ) -> None:
    cache = Cache(tmp_path / "cache")
    built = api.build(onnx_project / "deploy.yaml", tmp_path / "out", cache.root)
    plan = plan_of(onnx_project / "deploy.yaml")
    entries = {s.id: _entry_bytes(cache, plan.keys[s.id]) for s in plan.steps}
    results = {sid: json.loads(raw)["result"] for sid, raw in entries.items()}

    source = ModelResult.from_json(results[SOURCE])
    assert (source.model, source.format, source.opset) == ("model.onnx", "onnx", None)
    assert source.inputs is not None and [t.to_json() for t in source.inputs] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    ref = ReferenceResult.from_json(results[REFERENCE])
    assert ref.distribution is not None and len(ref.distribution) == 3 and ref.evaluation["rows"] == 12
    quantized = ModelResult.from_json(results["optimize[0].quantize"])
    assert quantized.format == "onnx" and quantized.details is not None and quantized.inputs is None
    shipped = ArtifactEvaluation.from_json(results["evaluate:optimize[0]"], shipped=True)
    assert shipped.artifact == "quantize-int8-dynamic" and "agreement" in shipped.evaluation
    typed = {SOURCE: source, REFERENCE: ref, "optimize[0].quantize": quantized, "evaluate:optimize[0]": shipped,
             "evaluate:onnx-fp32": ArtifactEvaluation.from_json(results["evaluate:onnx-fp32"])}
    for sid, value in typed.items():
        assert _round_trip(entries[sid], value) == entries[sid], sid

    outputs = {sid: out for sid, out in ((s.id, cache.get(plan.keys[s.id])) for s in plan.steps) if out}
    from deployc.compiler.steps import StepOutput

    ins, outs = model_io({sid: StepOutput(*out) for sid, out in outputs.items()})
    assert [t.name for t in ins] == ["x"] and [t.to_json() for t in outs] == [
        {"name": "probs", "datatype": "FP32", "shape": [-1, 3]}]
    report = built.report
    assert [(a["artifact"], a["shipped"]) for a in report["artifacts"]] == [
        ("onnx-fp32", False), ("quantize-int8-dynamic", True)]
    assert [(g["artifact"], g["gate"]) for g in report["gates"]] == [("quantize-int8-dynamic", "min_agreement")]
    assert report["passes"][0]["details"] == dict(quantized.details)


KERAS_SPEC = """\
apiVersion: deployc/v1
name: digits
model: {path: model.keras, labels: labels.txt}
data:
  eval: {path: data/eval.npz, x: x, y: y}
measure: {min_seconds: 0.05}
targets:
  local:
"""


@pytest.mark.slow
def test_a_keras_builds_conversion_matches_the_resolved_inputs_and_round_trips(digits: Path, session_cache: Path,
                                                                               tmp_path: Path) -> None:
    """The input the resolved model reads from the .keras archive is the one the conversion gives the ONNX
    model; the conversion's cached result comes back byte for byte."""
    from deployc.compiler.steps import CONVERT, StepOutput

    (digits / "deploy.yaml").write_text(KERAS_SPEC)
    api.build(digits / "deploy.yaml", tmp_path / "out", session_cache)
    plan = plan_of(digits / "deploy.yaml")
    cache = Cache(session_cache)
    entry = _entry_bytes(cache, plan.keys[CONVERT])
    converted = ModelResult.from_json(json.loads(entry)["result"])
    assert (converted.model, converted.format) == ("model.onnx", "onnx") and converted.opset
    assert _round_trip(entry, converted) == entry
    outputs = {sid: StepOutput(*found) for sid in (SOURCE, CONVERT) if (found := cache.get(plan.keys[sid]))}
    ins, outs = model_io(outputs)
    assert [(t.name, t.datatype, t.shape) for t in ins] == [
        (t.name, t.datatype, t.shape) for t in plan.resolved.inputs] == [("pixels", "FP32", (-1, 64))]
    assert [(t.name, t.shape) for t in outs] == [("output", (-1, 10))]
    source = ModelResult.from_json(outputs[SOURCE].result)
    assert source.format == "keras" and source.inputs is None and source.to_json() == outputs[SOURCE].result
