"""Stage 3: lower the validated spec into the plan: ordered steps, each with a content hash.

The plan is data: `deployc plan` prints it, `deployc build` executes it, `plan.json` records it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from deployc.compiler import ops
from deployc.compiler.steps import Step, code_fingerprint, data_files, step_key
from deployc.schema.passes import KERAS_PASSES, pass_config, pass_name
from deployc.schema.spec import DeploySpec, resolved_format

TF_LIBS = ("tensorflow", "keras", "numpy")
ONNX_LIBS = ("onnx", "onnxruntime", "numpy")


@dataclass(frozen=True)
class Plan:
    spec: DeploySpec
    spec_path: Path
    spec_dir: Path
    spec_sha256: str
    steps: tuple[Step, ...]
    keys: dict[str, str]
    final_step: str  # the step whose output is the shipped ONNX model
    keras_step: str | None  # the step whose output is the final Keras-stage model (None for ONNX input)
    evaluations: tuple[str, ...] = ()  # steps whose result holds {"artifact", "evaluation"}
    shipped: tuple[str, ...] = ()  # evaluation steps of artifacts that ship (gated)
    targets: tuple[str, ...] = field(default_factory=tuple)
    checks: tuple[Callable[[str, dict[str, Any]], None], ...] = ()  # run on each step's result, cached or not

    def to_json(self, cached: dict[str, bool] | None = None) -> dict[str, Any]:
        steps = []
        for s in self.steps:
            row: dict[str, Any] = {"id": s.id, "description": s.description, "key": self.keys[s.id],
                                   "deps": list(s.deps)}
            if cached is not None:
                row["cached"] = cached[s.id]
            steps.append(row)
        return {"name": self.spec.name, "version": self.spec.version, "spec_sha256": self.spec_sha256,
                "steps": steps, "targets": list(self.targets)}


def _data_params(spec: DeploySpec, *which: str) -> dict[str, Any]:
    return {w: getattr(spec.data, w).model_dump(mode="json") for w in which if getattr(spec.data, w) is not None}


def make_plan(spec: DeploySpec, spec_path: Path, spec_text: str) -> Plan:
    spec_dir = spec_path.parent.resolve()
    fmt = resolved_format(spec.model)
    steps: list[Step] = []
    has_eval = spec.data.eval is not None
    measure = spec.measure.model_dump(mode="json")

    steps.append(Step("source", f"read the {fmt} model {spec.model.path}", ops.source,
                      params={"format": fmt, "path_suffix": Path(spec.model.path).suffix,
                              "allow_python_code": spec.model.allow_python_code},
                      input_files=_model_files(spec_dir, spec.model.path, fmt),
                      libs=("onnx",) if fmt == "onnx" else ()))
    if has_eval:
        steps.append(Step(ops.REFERENCE, "run the original model on data.eval", ops.reference, deps=("source",),
                          params={"data": _data_params(spec, "eval"), "task": spec.model.task},
                          input_files=data_files(spec, spec_dir, "eval"),
                          libs=TF_LIBS + ONNX_LIBS if fmt != "onnx" else ONNX_LIBS))
    evaluations: list[str] = []
    prev = "source"
    keras_step: str | None = None if fmt == "onnx" else "source"
    for i, item in enumerate(spec.optimize):
        name, cfg = pass_name(item), pass_config(item)
        if name not in KERAS_PASSES:
            continue
        sid = f"optimize[{i}].{name}"
        deps = (prev, ops.REFERENCE) if has_eval else (prev,)
        files = data_files(spec, spec_dir, "train", "eval")
        student = getattr(cfg, "student", None)
        if student:
            files += (spec_dir / student,)
        steps.append(Step(sid, f"{name} the Keras model", partial(ops.run_pass, name=name, index=i, prev=prev),
                          deps=deps, params={"config": cfg.model_dump(mode="json"),
                                             "data": _data_params(spec, "train", "eval")},
                          input_files=files, libs=TF_LIBS))
        prev = keras_step = sid
    if fmt != "onnx":
        steps.append(Step("convert", "convert to ONNX (fp32)", partial(ops.convert, prev=prev), deps=(prev,),
                          params={"inputs": [t.model_dump(mode="json") for t in spec.model.inputs or []]},
                          libs=TF_LIBS + ("tf2onnx", "onnx")))
        prev = "convert"
    if has_eval:
        steps.append(_evaluate_step("evaluate:onnx-fp32", prev, "onnx-fp32", measure, spec, spec_dir))
        evaluations.append(steps[-1].id)
    for i, item in enumerate(spec.optimize):
        name, cfg = pass_name(item), pass_config(item)
        if name in KERAS_PASSES:
            continue
        sid = f"optimize[{i}].{name}"
        deps = (prev, ops.REFERENCE) if has_eval else (prev,)
        steps.append(Step(sid, f"{name} the ONNX model ({getattr(cfg, 'mode', '')})".replace(" ()", ""),
                          partial(ops.run_pass, name=name, index=i, prev=prev), deps=deps,
                          params={"config": cfg.model_dump(mode="json"), "gates": spec.gates.model_dump(mode="json"),
                                  "measure": measure, "data": _data_params(spec, "calibration", "eval")},
                          input_files=data_files(spec, spec_dir, "calibration", "eval"), libs=ONNX_LIBS))
        prev = sid
        if has_eval:
            artifact = f"{name}-{getattr(cfg, 'mode', i)}"
            steps.append(_evaluate_step(f"evaluate:optimize[{i}]", prev, artifact, measure, spec, spec_dir))
            evaluations.append(steps[-1].id)
    shipped = [evaluations[-1]] if evaluations else []
    targets = tuple(t for t in _target_order() if getattr(spec.targets, t) is not None)
    # local plans `local:batch-invariance` for every target that ships a serving.json, so it runs even unset
    for t in targets if "local" in targets else ("local", *targets):
        from deployc.targets import get_target

        extra = get_target(t).steps(spec, spec_dir, prev, keras_step)
        steps.extend(extra)
        for s in extra:
            if s.id.endswith(":verify"):
                evaluations.append(s.id)
                shipped.append(s.id)
    keys: dict[str, str] = {}
    for s in steps:
        keys[s.id] = step_key(s, keys, code_fingerprint(), spec_dir)
    return Plan(spec=spec, spec_path=spec_path, spec_dir=spec_dir,
                spec_sha256=hashlib.sha256(spec_text.encode()).hexdigest(), steps=tuple(steps), keys=keys,
                final_step=prev, keras_step=keras_step, evaluations=tuple(evaluations), shipped=tuple(shipped),
                targets=targets, checks=_checks(spec, spec_dir))


def _checks(spec: DeploySpec, spec_dir: Path) -> tuple[Callable[[str, dict[str, Any]], None], ...]:
    if not spec.model.labels:
        return ()
    from deployc.compiler.content import read_labels

    return (partial(_labels_match, spec.model.labels, len(read_labels(spec_dir / spec.model.labels))),)


def _labels_match(rel: str, count: int, step_id: str, result: dict[str, Any]) -> None:
    """The labels file names one class per model output, checked as soon as a step reveals the class count."""
    from deployc.errors import SpecFieldError

    if "distribution" in result:
        classes = len(result["distribution"])
    elif result.get("outputs") and len(result["outputs"][0]["shape"]) == 2:
        classes = result["outputs"][0]["shape"][-1]
    else:
        return
    if classes > 1 and classes != count:
        raise SpecFieldError(("model", "labels"), f"{rel} lists {count} class names, but the model has {classes} "
                             f"outputs (found by step {step_id})")


def _model_files(spec_dir: Path, rel: str, fmt: str) -> tuple[Path, ...]:
    """The model file or folder, and for ONNX the external data files it names: all of it feeds the key."""
    model = spec_dir / rel
    if fmt != "onnx":
        return (model,)
    from deployc.compiler.content import onnx_external_files

    return (model, *onnx_external_files(model))


def _evaluate_step(sid: str, prev: str, artifact: str, measure: dict[str, Any], spec: DeploySpec,
                   spec_dir: Path) -> Step:
    return Step(sid, f"verify and measure {artifact} against the original",
                partial(ops.evaluate, artifact_step=prev, artifact=artifact), deps=(prev, ops.REFERENCE),
                params={"measure": measure, "data": _data_params(spec, "eval"), "task": spec.model.task},
                input_files=data_files(spec, spec_dir, "eval"), libs=ONNX_LIBS)


def _target_order() -> tuple[str, ...]:
    from deployc.targets import REGISTRY

    return tuple(REGISTRY)
