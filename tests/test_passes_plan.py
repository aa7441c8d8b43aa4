"""The plan's pass steps come from the passes' metadata: each step is keyed by exactly what its pass reads, the
order rule comes from the passes' formats, and the registry refuses classes that break the pass interface."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from conftest import run_deployc

from deployc.compiler.load import load_spec
from deployc.compiler.plan import Plan, make_plan
from deployc.compiler.steps import Step
from deployc.compiler.validate import validate
from deployc.passes import BUILTINS, pass_class
from deployc.passes.base import Format, Pass
from deployc.passes.keras import KerasPass
from deployc.passes.quantize import QuantizeConfig, QuantizePass
from deployc.plugins import Entry, PluginError
from deployc.schema.passes import PASS_STEP_MODELS, optimize_problems
from deployc.schema.spec import DeploySpec

GOOD = Path(__file__).parent / "specs" / "good"
KERAS_HEAD = """\
apiVersion: deployc/v1
name: p
model: {path: model.keras}
data:
  eval: {path: eval.npz, x: x, y: y}
  calibration: {path: calib.npz, x: x}
  train: {path: train.npz, x: x, y: y}
"""
ONNX_HEAD = KERAS_HEAD.replace("model.keras", "model.onnx").replace("  train: {path: train.npz, x: x, y: y}\n", "")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "spec"
    shutil.copytree(GOOD, d)
    return d


def plan_of(folder: Path, text: str) -> Plan:
    path = folder / "deploy.yaml"
    path.write_text(text)
    loaded = load_spec(path)
    return make_plan(validate(loaded), path, loaded.text)


def step(plan: Plan, sid: str) -> Step:
    return next(s for s in plan.steps if s.id == sid)


def test_registry_lists_the_builtins_and_builds_one_item_model_each() -> None:
    assert [name for name, _ in BUILTINS] == ["quantize", "prune", "distill"]
    assert {n: m.__name__ for n, m in PASS_STEP_MODELS.items()} == {
        "quantize": "QuantizeStep", "prune": "PruneStep", "distill": "DistillStep"}
    assert pass_class("quantize") is QuantizePass
    assert issubclass(pass_class("prune"), KerasPass) and issubclass(pass_class("distill"), KerasPass)


def test_onnx_pass_steps_hash_only_the_data_their_mode_reads(folder: Path) -> None:
    plan = plan_of(folder, ONNX_HEAD + "optimize:\n  - quantize: {mode: int8-dynamic}\n"
                   "  - quantize: {mode: int8-static}\n  - quantize: {mode: auto, candidates: [float16]}\n")
    dyn, static, auto = (step(plan, f"optimize[{i}].quantize") for i in range(3))
    assert dyn.deps == ("source",) and dict(dyn.params)["data"] == {}
    assert set(dyn.params) == {"config", "data"} and dyn.input_files == ()
    assert set(dict(static.params)["data"]) == {"calibration"} and static.input_files == (folder / "calib.npz",)
    assert static.deps == ("optimize[0].quantize",)
    assert auto.deps == ("optimize[1].quantize", "reference") and set(auto.params) == {
        "config", "data", "gates", "measure", "task", "prediction", "threshold"}
    assert set(dict(auto.params)["data"]) == {"eval"} and auto.input_files == (folder / "eval.npz",)
    assert all(s.libs == ("onnx", "onnxruntime") for s in (dyn, static, auto))
    assert [s.description for s in (dyn, static, auto)] == [
        "quantize the ONNX model (int8-dynamic)", "quantize the ONNX model (int8-static)",
        "quantize the ONNX model (auto)"]
    assert plan.evaluations[:4] == ("evaluate:onnx-fp32", "evaluate:optimize[0]", "evaluate:optimize[1]",
                                    "evaluate:optimize[2]")


def test_what_the_figures_judge_enters_the_keys_of_the_steps_that_judge(folder: Path) -> None:
    """model.prediction (and the task and threshold with it) change the reference run and every evaluation,
    not the rest."""
    text = ONNX_HEAD + "optimize:\n  - quantize: {mode: int8-dynamic}\n"
    named = text.replace("model: {", "model: {prediction: probs, ")
    assert named != text
    first, second = plan_of(folder, text).keys, plan_of(folder, named).keys
    changed = {sid for sid in first if first[sid] != second[sid]}
    assert {"reference", "evaluate:onnx-fp32", "evaluate:optimize[0]"} <= changed
    assert "source" not in changed and "optimize[0].quantize" not in changed


def test_a_data_set_a_step_does_not_read_leaves_its_key(folder: Path) -> None:
    text = ONNX_HEAD + "optimize:\n  - quantize: {mode: int8-dynamic}\n  - quantize: {mode: int8-static}\n"
    first = plan_of(folder, text).keys
    second = plan_of(folder, text.replace("calibration: {path: calib.npz, x: x}",
                                          "calibration: {path: calib.npz, x: x, limit: 10}")).keys
    assert first["optimize[0].quantize"] == second["optimize[0].quantize"]
    assert first["optimize[1].quantize"] != second["optimize[1].quantize"]


def test_keras_pass_steps_read_train_eval_and_the_student(folder: Path) -> None:
    plan = plan_of(folder, KERAS_HEAD + "optimize:\n  - distill: {student: model.keras}\n  - prune: {}\n"
                   "  - quantize: {}\n")
    distill, prune = step(plan, "optimize[0].distill"), step(plan, "optimize[1].prune")
    assert distill.deps == ("source",) and prune.deps == ("optimize[0].distill",)
    assert distill.input_files == (folder / "train.npz", folder / "eval.npz", folder / "model.keras")
    assert prune.input_files == (folder / "train.npz", folder / "eval.npz")
    assert set(dict(prune.params)) == {"config", "data"} and set(dict(prune.params)["data"]) == {"train", "eval"}
    assert prune.libs == ("keras", "numpy", "tensorflow") and prune.description == "prune the Keras model"
    assert step(plan, "convert").deps == ("optimize[1].prune",) and plan.keras_step == "optimize[1].prune"
    assert [s.id for s in plan.steps][:6] == ["source", "reference", "optimize[0].distill", "optimize[1].prune",
                                              "convert", "evaluate:onnx-fp32"]
    assert plan.final_step == "optimize[2].quantize"


def onnx_spec_with(*items: dict[str, dict[str, object]]) -> DeploySpec:
    """An ONNX spec whose optimize list is set without the cross-field check (to call the checks directly)."""
    spec = DeploySpec.model_validate({"apiVersion": "deployc/v1", "name": "n", "model": {"path": "m.onnx"}})
    return spec.model_copy(update={"optimize": [PASS_STEP_MODELS[next(iter(i))].model_validate(i) for i in items]})


def test_order_and_format_rules_come_from_the_pass_formats() -> None:
    spec = onnx_spec_with({"quantize": {}}, {"prune": {}})
    assert optimize_problems(spec, "onnx") == [
        (("optimize", 1, "prune"), "prune needs a Keras model (.keras or .h5); m.onnx is ONNX"),
        (("optimize", 1, "prune"), "prune runs on the Keras model, so it must come before quantize"),
        (("optimize", 1, "prune"), "prune fine-tunes on data.train, which is not set"),
    ]
    assert optimize_problems(onnx_spec_with({"quantize": {}}, {"quantize": {"mode": "float16"}}), "onnx") == []


def test_a_keras_pass_on_a_savedmodel_is_a_validate_error(tmp_path: Path) -> None:
    """Keras 3 loads a SavedModel for inference only, so prune and distill need the .keras file."""
    (tmp_path / "sm" / "variables").mkdir(parents=True)
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    np.savez(tmp_path / "train.npz", x=np.zeros((4, 3), np.float32), y=np.zeros(4, np.int64))
    (tmp_path / "deploy.yaml").write_text(
        "apiVersion: deployc/v1\nname: n\nmodel: {path: sm}\ndata: {train: {path: train.npz, x: x, y: y}}\n"
        "optimize:\n  - prune: {}\n  - distill: {}\ntargets: {local: {}}\n")
    r = run_deployc("validate", "deploy.yaml", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    for line, name in ((6, "prune"), (7, "distill")):
        assert (f"deploy.yaml:{line}:5: optimize[{line - 6}].{name}: {name} needs a Keras model (.keras or .h5); "
                "sm is a SavedModel, which Keras 3 cannot train") in r.stderr, r.stderr


class _NeedsTrain(QuantizePass):
    data_needed: ClassVar[tuple[str, ...]] = ("train",)
    data_needed_for = Pass.data_needed_for
    check = Pass.check


def test_default_check_requires_each_needed_data_set() -> None:
    spec = onnx_spec_with({"quantize": {}})
    problem = (("optimize", 0, "quantize"), "quantize needs data.train, which is not set")
    assert _NeedsTrain().check(spec, 0) == [problem]


class NotAPass:
    name = "odd"


class MixedFormats(Pass):
    name: ClassVar[str] = "mixed"
    config_model = QuantizeConfig
    input_format: ClassVar[Format] = "keras"
    output_format: ClassVar[Format] = "onnx"


class Misnamed(QuantizePass):
    name: ClassVar[str] = "other"


class OddData(QuantizePass):
    name: ClassVar[str] = "odd_data"
    data_optional: ClassVar[tuple[str, ...]] = ("validation",)


@pytest.mark.parametrize(("name", "attr", "message"), [
    ("odd", "NotAPass", "is not a subclass of deployc.passes.base.Pass"),
    ("mixed", "MixedFormats", "input_format and output_format are one of keras, onnx, and the same "
                              "(got 'keras' -> 'onnx')"),
    ("misnamed", "Misnamed", "has name 'other'; it is registered as 'misnamed'"),
    ("odd_data", "OddData", "declares data sets validation; deploy.yaml has eval, calibration, train"),
    ("odd-name", "QuantizePass", "a pass name is a Python identifier"),
])
def test_registry_refuses_classes_that_break_the_interface(monkeypatch: pytest.MonkeyPatch, name: str, attr: str,
                                                           message: str) -> None:
    import deployc.passes as registry

    monkeypatch.setattr(registry, "pass_entries",
                        lambda: {name: Entry(name, f"{__name__}:{attr}", "deployc-odd", "0.1")})
    with pytest.raises(PluginError, match="plugin pass") as exc:
        registry.pass_class.__wrapped__(name)  # type: ignore[attr-defined]
    assert message in str(exc.value) and "from deployc-odd 0.1" in str(exc.value)


KERAS_BUILD = """\
apiVersion: deployc/v1
name: digits
model: {path: model.keras}
data:
  eval: {path: data/eval.npz, x: x, y: y}
  calibration: {path: data/calib.npz, x: x, limit: 64}
  train: {path: data/train.npz, x: x, y: y, limit: 256}
optimize:
  - prune: {sparsity: 0.5, epochs: 1}
  - quantize: {mode: int8-static}
gates: {max_size_mb: GATE}
measure: {min_seconds: 0.05}
targets:
  local:
"""


@pytest.mark.slow
def test_build_runs_keras_then_onnx_passes_and_a_gate_change_keeps_them_cached(digits: Path, tmp_path: Path) -> None:
    import json


    (digits / "deploy.yaml").write_text(KERAS_BUILD.replace("GATE", "5"))
    cache, out = tmp_path / "cache", tmp_path / "out"
    r = run_deployc("build", "deploy.yaml", "--out", str(out), "-q", cwd=digits, cache_dir=cache)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    details = {p["step"]: p["details"] for p in report["passes"]}
    assert "eval_accuracy" in details["optimize[0].prune"]  # data.eval, declared optional, reaches the pass
    assert details["optimize[1].quantize"]["mode"] == "int8-static"
    assert [a["artifact"] for a in report["artifacts"]][:2] == ["onnx-fp32", "quantize-int8-static"]

    (digits / "deploy.yaml").write_text(KERAS_BUILD.replace("GATE", "4"))
    plan = json.loads(run_deployc("plan", "deploy.yaml", "--format", "json", cwd=digits, cache_dir=cache).stdout)
    cached = {s["id"]: s["cached"] for s in plan["steps"]}
    assert cached["optimize[0].prune"] and cached["convert"] and cached["optimize[1].quantize"]
