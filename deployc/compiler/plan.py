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
from deployc.passes import get_pass, pass_entries
from deployc.passes.base import Pass
from deployc.schema.passes import pass_config, pass_name
from deployc.schema.spec import DeploySpec, resolved_format
from deployc.targets import configured, target_steps


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


@dataclass
class _Chain:
    """The model steps in order: the source, the reference, the Keras-format passes, the conversion to ONNX, the
    ONNX-format passes, and an evaluation of each ONNX artifact. `prev` is the step whose model comes next."""

    spec: DeploySpec
    spec_dir: Path
    fmt: str
    steps: list[Step] = field(default_factory=list)
    evaluations: list[str] = field(default_factory=list)
    prev: str = "source"
    keras_step: str | None = None
    in_onnx: bool = False  # past the conversion (or the input is ONNX)

    def evaluate(self, sid: str, artifact: str) -> None:
        if self.spec.data.eval is not None:
            self.steps.append(_evaluate_step(sid, self.prev, artifact, self.spec, self.spec_dir))
            self.evaluations.append(sid)

    def enter_onnx(self) -> None:
        """Convert the Keras-stage model (unless the input is ONNX) and evaluate the fp32 ONNX model, once."""
        if self.in_onnx:
            return
        if self.fmt != "onnx":
            self.steps.append(Step("convert", "convert to ONNX (fp32)", partial(ops.convert, prev=self.prev),
                                   deps=(self.prev,), libs=ops.CONVERT_LIBS, params={
                                       "inputs": [t.model_dump(mode="json") for t in self.spec.model.inputs or []]}))
            self.prev = "convert"
        self.in_onnx = True
        self.evaluate("evaluate:onnx-fp32", "onnx-fp32")

    def add_pass(self, index: int, p: Pass, config: Any) -> None:
        if p.input_format == "onnx":
            self.enter_onnx()
        elif self.in_onnx:  # refused by the spec's validation (deployc.schema.passes.optimize_problems)
            raise ValueError(f"optimize[{index}].{p.name} runs on the Keras model, after an ONNX-format pass")
        step = _pass_step(self.spec, self.spec_dir, index, p, config, self.prev)
        self.steps.append(step)
        self.prev = step.id
        if p.output_format == "keras":
            self.keras_step = step.id
        else:
            variant = p.variant(config)
            self.evaluate(f"evaluate:optimize[{index}]", f"{p.name}-{index if variant is None else variant}")


def _model_chain(spec: DeploySpec, spec_dir: Path) -> _Chain:
    """Every step that makes or checks a model, from the source to the shipped ONNX model (the targets follow)."""
    fmt = resolved_format(spec.model)
    chain = _Chain(spec, spec_dir, fmt, keras_step=None if fmt == "onnx" else "source")
    chain.steps.append(Step("source", f"read the {fmt} model {spec.model.path}", ops.source,
                            params={"format": fmt, "path_suffix": Path(spec.model.path).suffix,
                                    "allow_python_code": spec.model.allow_python_code},
                            input_files=_model_files(spec_dir, spec.model.path, fmt),
                            libs=("onnx",) if fmt == "onnx" else ()))
    if spec.data.eval is not None:
        chain.steps.append(Step(ops.REFERENCE, "run the original model on data.eval", ops.reference,
                                deps=("source",), params={"data": _data_params(spec, "eval"), "task": spec.model.task},
                                input_files=data_files(spec, spec_dir, "eval"),
                                libs=ops.ONNX_LIBS if fmt == "onnx" else ops.TF_LIBS + ops.ONNX_LIBS))
    if fmt == "onnx":
        chain.enter_onnx()
    for i, item in enumerate(spec.optimize):
        chain.add_pass(i, get_pass(pass_name(item)), pass_config(item))
    chain.enter_onnx()
    return chain


def _pass_step(spec: DeploySpec, spec_dir: Path, index: int, p: Pass, config: Any, prev: str) -> Step:
    """A pass's step, keyed by exactly what the pass reads: its settings, the model `prev` made, the data sets and
    files it declares, and its libraries (a plugin's own distribution too). A pass that needs data.eval compares
    models with the reference, so it also depends on the reference step and on the gates and measure settings."""
    needed = p.data_needed_for(config)
    sets = tuple(dict.fromkeys((*needed, *p.data_optional)))
    params: dict[str, Any] = {"config": config.model_dump(mode="json"), "data": _data_params(spec, *sets)}
    deps: tuple[str, ...] = (prev,)
    if "eval" in needed:
        params.update(gates=spec.gates.model_dump(mode="json"), measure=spec.measure.model_dump(mode="json"))
        deps = (prev, ops.REFERENCE)
    files = data_files(spec, spec_dir, *sets) + tuple(spec_dir / rel for rel in p.input_files(config))
    entry, description, libs = pass_entries()[p.name], p.describe(config), p.libs
    if not entry.builtin:
        description, libs = f"{description}, from {entry.distribution} {entry.version}", (*libs, entry.distribution)
    return Step(f"optimize[{index}].{p.name}", description,
                partial(ops.run_pass, name=p.name, index=index, prev=prev, data_sets=sets), deps=deps,
                params=params, input_files=files, libs=libs)


def make_plan(spec: DeploySpec, spec_path: Path, spec_text: str) -> Plan:
    """The steps of a build of the validated `spec`, each keyed by a hash of everything it reads."""
    spec_dir = spec_path.parent.resolve()
    chain = _model_chain(spec, spec_dir)
    steps, evaluations, prev, keras_step = chain.steps, chain.evaluations, chain.prev, chain.keras_step
    shipped = [evaluations[-1]] if evaluations else []
    targets = configured(spec)
    # local plans `local:batch-invariance` for every target that ships a serving.json, so it runs even unset
    for t in targets if "local" in targets else ("local", *targets):
        extra = target_steps(t, spec, spec_dir, prev, keras_step)  # a plugin's version is in its steps' keys
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


def _evaluate_step(sid: str, prev: str, artifact: str, spec: DeploySpec, spec_dir: Path) -> Step:
    return Step(sid, f"verify and measure {artifact} against the original",
                partial(ops.evaluate, artifact_step=prev, artifact=artifact), deps=(prev, ops.REFERENCE),
                params={"measure": spec.measure.model_dump(mode="json"), "data": _data_params(spec, "eval"),
                        "task": spec.model.task},
                input_files=data_files(spec, spec_dir, "eval"), libs=ops.ONNX_LIBS)

