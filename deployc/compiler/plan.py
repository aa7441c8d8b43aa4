"""Stage 3: lower the validated spec into the plan: ordered steps, each with a content hash.

The plan is data: `deployc plan` prints it, `deployc build` executes it, `plan.json` records it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from deployc.compiler import ops
from deployc.compiler.resolved import PassUse, Resolved, resolve
from deployc.compiler.steps import CONVERT, EXPLAIN, PROFILE, REFERENCE, SOURCE, Step, code_fingerprint, step_key
from deployc.errors import DeploycError
from deployc.schema.slo import InputDriftSLO
from deployc.schema.spec import DeploySpec
from deployc.targets import configured, target_steps


class PlanError(DeploycError):
    """The steps planned do not form one plan (two different steps under one id)."""


@dataclass(frozen=True)
class Plan:
    spec: DeploySpec
    spec_path: Path
    spec_dir: Path
    spec_sha256: str
    steps: tuple[Step, ...]
    keys: dict[str, str]
    resolved: Resolved  # the spec lowered once, defaults filled: what the build reads
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
        return {"name": self.resolved.name, "version": self.resolved.version, "spec_sha256": self.spec_sha256,
                "steps": steps, "targets": list(self.targets)}


@dataclass
class _Chain:
    """The model steps in order: the source, the reference, the Keras-format passes, the conversion to ONNX, the
    ONNX-format passes, and an evaluation of each ONNX artifact. `prev` is the step whose model comes next."""

    r: Resolved
    steps: list[Step] = field(default_factory=list)
    evaluations: list[str] = field(default_factory=list)
    prev: str = SOURCE
    keras_step: str | None = None
    in_onnx: bool = False  # past the conversion (or the input is ONNX)
    explained: bool = False  # the `explain:reference` step is planned: evaluations compare explanations

    def evaluate(self, sid: str, artifact: str) -> None:
        if "eval" in self.r.data:
            self.steps.append(_evaluate_step(sid, self.prev, artifact, self.r, self.explained))
            self.evaluations.append(sid)

    def enter_onnx(self) -> None:
        """Convert the Keras-stage model (unless the input is ONNX) and evaluate the fp32 ONNX model, once."""
        if self.in_onnx:
            return
        if self.r.format != "onnx":
            self.steps.append(Step(CONVERT, "convert to ONNX (fp32)", partial(ops.convert, prev=self.prev),
                                   deps=(self.prev,), libs=ops.CONVERT_LIBS,
                                   params={"inputs": [t.to_json() for t in self.r.declared_inputs]}))
            self.prev = CONVERT
        self.in_onnx = True
        if self.r.explain is not None and "eval" in self.r.data:
            self.steps.append(_explain_step(self.r, self.prev))
            self.explained = True
        self.evaluate("evaluate:onnx-fp32", "onnx-fp32")

    def add_pass(self, use: PassUse) -> None:
        p, config = use.impl, use.config
        if p.input_format == "onnx":
            self.enter_onnx()
        elif self.in_onnx:  # refused by the spec's validation (deployc.schema.passes.optimize_problems)
            raise ValueError(f"{use.step_id} runs on the Keras model, after an ONNX-format pass")
        step = _pass_step(self.r, use, self.prev, self.explained)
        self.steps.append(step)
        self.prev = step.id
        if p.output_format == "keras":
            self.keras_step = step.id
        else:
            variant = p.variant(config)
            self.evaluate(f"evaluate:optimize[{use.index}]",
                          f"{p.name}-{use.index if variant is None else variant}")


def _model_chain(r: Resolved) -> _Chain:
    """Every step that makes or checks a model, from the source to the shipped ONNX model (the targets follow)."""
    fmt = r.format
    chain = _Chain(r, keras_step=None if fmt == "onnx" else SOURCE)
    chain.steps.append(Step(SOURCE, f"read the {fmt} model {r.model_file}", ops.source,
                            params={"format": fmt, "path_suffix": Path(r.model_file).suffix,
                                    "allow_python_code": r.allow_python_code},
                            input_files=_model_files(r.spec_dir, r.model_file, fmt),
                            libs=("onnx",) if fmt == "onnx" else ()))
    if "eval" in r.data:
        chain.steps.append(Step(REFERENCE, "run the original model on data.eval", ops.reference,
                                deps=(SOURCE,), params={"data": r.data_params("eval"), **r.judged()},
                                input_files=r.data_files("eval"),
                                libs=ops.ONNX_LIBS if fmt == "onnx" else ops.TF_LIBS + ops.ONNX_LIBS))
    if fmt == "onnx":
        chain.enter_onnx()
    for use in r.passes:
        chain.add_pass(use)
    chain.enter_onnx()
    if chain.evaluations:  # the last ONNX artifact is the one that ships: the gates apply to it
        shipped = chain.evaluations[-1]
        chain.steps = [replace(s, gated=True) if s.id == shipped else s for s in chain.steps]
    return chain


def _pass_step(r: Resolved, use: PassUse, prev: str, explained: bool = False) -> Step:
    """A pass's step, keyed by exactly what the pass reads: its settings, the model `prev` made, the data sets and
    files it declares, and its libraries (a plugin's own distribution too). A pass that needs data.eval compares
    models with the reference, so it also depends on the reference step and on the gates and measure settings."""
    p, config, entry = use.impl, use.config, use.entry
    needed = p.data_needed_for(config)
    sets = tuple(dict.fromkeys((*needed, *p.data_optional)))
    params: dict[str, Any] = {"config": config.model_dump(mode="json"), "data": r.data_params(*sets)}
    deps: tuple[str, ...] = (prev,)
    if "eval" in needed:
        params.update(gates=r.gates.to_json(), measure=r.measure.to_json(), **r.judged())
        deps = (prev, REFERENCE)
        if explained:  # its evaluations compare explanations too (the attribution gate)
            params["explain"] = r.explain_params()
            deps = (prev, REFERENCE, EXPLAIN)
    files = r.data_files(*sets) + tuple(r.spec_dir / rel for rel in p.input_files(config))
    description, libs = p.describe(config), p.libs_for(config)
    if not entry.builtin:
        description, libs = f"{description}, from {entry.distribution} {entry.version}", (*libs, entry.distribution)
    return Step(use.step_id, description,
                partial(ops.run_pass, name=p.name, index=use.index, prev=prev, data_sets=sets), deps=deps,
                params=params, input_files=files, libs=libs)


def make_plan(spec: DeploySpec, spec_path: Path, spec_text: str) -> Plan:
    """The steps of a build of the validated `spec`, each keyed by a hash of everything it reads."""
    spec_dir = spec_path.parent.resolve()
    resolved = resolve(spec, spec_dir)
    chain = _model_chain(resolved)
    planned: list[tuple[str, Step]] = [("the model chain", s) for s in chain.steps]
    profile = _profile_step(spec, resolved, chain)
    if profile is not None:
        planned.append(("input monitoring", profile))
    targets = configured(spec)
    # local plans `local:batch-invariance` for every target that ships a serving.json, so it runs even unset
    for t in targets if "local" in targets else ("local", *targets):
        # a plugin's version is in its steps' keys
        planned += [(f"targets.{t}", s) for s in target_steps(t, spec, spec_dir, chain.prev, chain.keras_step)]
    steps, keys = keyed(planned, spec_dir)
    shipped = [s.id for s in steps if s.gated]
    evaluations = [*chain.evaluations, *(sid for sid in shipped if sid not in chain.evaluations)]
    return Plan(spec=spec, spec_path=spec_path, spec_dir=spec_dir,
                spec_sha256=hashlib.sha256(spec_text.encode()).hexdigest(), steps=tuple(steps), keys=keys,
                resolved=resolved, final_step=chain.prev, keras_step=chain.keras_step, evaluations=tuple(evaluations),
                shipped=tuple(shipped), targets=targets, checks=_checks(spec, spec_dir))


def keyed(planned: list[tuple[str, Step]], spec_dir: Path) -> tuple[list[Step], dict[str, str]]:
    """The steps in plan order with their keys, from (who planned it, step) pairs. A step that two planners share
    (same id, same key) is kept once; one id planned with two different keys is refused."""
    keys: dict[str, str] = {}
    owners: dict[str, str] = {}
    kept: list[Step] = []
    for owner, s in planned:
        key = step_key(s, keys, code_fingerprint(), spec_dir)
        if s.id not in keys:
            keys[s.id], owners[s.id] = key, owner
            kept.append(s)
        elif keys[s.id] != key:
            raise PlanError(f"step {s.id!r} is planned by {owners[s.id]} and by {owner} with different inputs "
                            f"(keys {keys[s.id][:12]} and {key[:12]}); a step id names one piece of work")
    return kept, keys


def _checks(spec: DeploySpec, spec_dir: Path) -> tuple[Callable[[str, dict[str, Any]], None], ...]:
    if not spec.model.labels:
        return ()
    from deployc.compiler.content import read_labels

    if spec.model.task == "regression":
        return ()
    return (partial(_labels_match, spec.model.labels, len(read_labels(spec_dir / spec.model.labels)),
                    spec.model.prediction, spec.model.task),)


def _labels_match(rel: str, count: int, prediction: str | None, task: str, step_id: str, result: dict[str, Any]
                  ) -> None:
    """The labels file names one class per column of the prediction output (two for a binary sigmoid column),
    checked as soon as a step reveals the count."""
    from deployc.errors import SpecFieldError

    outputs = [o for o in result.get("outputs") or [] if isinstance(o, dict)]  # a model step's tensors
    out = next((o for o in outputs if o.get("name") == prediction), outputs[0] if outputs else None)
    if "distribution" in result:
        classes = len(result["distribution"])
    elif out is not None and len(out["shape"]) == 2:
        classes = 2 if task == "binary" and out["shape"][-1] == 1 else out["shape"][-1]
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


def _evaluate_step(sid: str, prev: str, artifact: str, r: Resolved, explained: bool = False) -> Step:
    params: dict[str, Any] = {"measure": r.measure.to_json(), "data": r.data_params("eval"), **r.judged()}
    if explained:
        params["explain"] = r.explain_params()
    return Step(sid, f"verify and measure {artifact} against the original" + (", explain it" if explained else ""),
                partial(ops.evaluate, artifact_step=prev, artifact=artifact),
                deps=(prev, REFERENCE, EXPLAIN) if explained else (prev, REFERENCE),
                params=params, input_files=r.data_files("eval"),
                libs=(*ops.ONNX_LIBS, *ops.EXPLAIN_LIBS) if explained else ops.ONNX_LIBS)


def _profile_step(spec: DeploySpec, r: Resolved, chain: _Chain) -> Step | None:
    """`profile:inputs` (deployc.compiler.profile), where there is data.eval and an explanation or an input-drift
    SLO to follow: input ranges and reference bins of the watched features, for serving.json and the SLO rules."""
    drift = next(((i, s) for i, s in enumerate(spec.slos) if isinstance(s, InputDriftSLO)), None)
    if "eval" not in r.data or (r.explain is None and drift is None):
        return None
    features = list(drift[1].features) if drift is not None and drift[1].features else None
    top_k = drift[1].top_k if drift is not None else (r.explain.top_k if r.explain is not None else 5)
    bins = drift[1].bins if drift is not None else 10
    where: tuple[str | int, ...] = ("slos", drift[0], "features") if drift is not None else ("explain",)
    deps = (chain.prev, EXPLAIN) if chain.explained else (chain.prev,)
    return Step(PROFILE, "profile data.eval's inputs for input monitoring",
                partial(ops.profile_inputs, model_step=chain.prev, features=features, top_k=top_k, bins=bins,
                        where=where), deps=deps,
                params={"data": r.data_params("eval"), "features": features, "top_k": top_k, "bins": bins},
                input_files=r.data_files("eval"), libs=ops.ONNX_LIBS)


def _explain_step(r: Resolved, onnx_step: str) -> Step:
    """The original model's explanation on data.eval's first rows; `onnx_step`'s model names the inputs."""
    ex = r.explain
    assert ex is not None
    return Step(EXPLAIN, f"explain the original model ({ex.method}, {ex.sample} rows of data.eval)",
                partial(ops.explain_reference, onnx_step=onnx_step),
                deps=tuple(dict.fromkeys((SOURCE, REFERENCE, onnx_step))),
                params={"explain": r.explain_params(), "data": r.data_params("eval"), **r.judged()},
                input_files=r.data_files("eval"),
                libs=(*ops.TF_LIBS, *ops.ONNX_LIBS, *ops.EXPLAIN_LIBS) if r.format != "onnx"
                else (*ops.ONNX_LIBS, *ops.EXPLAIN_LIBS))
