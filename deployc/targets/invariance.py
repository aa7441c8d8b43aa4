"""The `local:batch-invariance` step and the batching decision it drives, for every target that can merge
concurrent requests into one model run (local's serving.json, triton's `dynamic_batching`).

The step measures whether the shipped model's outputs for a row depend on the other rows of its batch
(deployc/ml/invariance.py). It keeps its id and key whichever target plans it, so a build plans it once and every
target reads the same cached result: `local` plans it for every spec that ships a serving.json, another target
that needs it plans it too (`invariance_step`), and the plan keeps the one copy.

`batching_decision` turns the measurement and a target's setting into on or off: `enabled` as written wins when
the model allows it; unset means on exactly when the model is batch-invariant; `true` on a model that is not is an
error unless the setting's `allow_cross_request_variance` opt-in is true.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from deployc.compiler.steps import Step, StepContext, data_files

if TYPE_CHECKING:
    from deployc.schema.spec import DeploySpec

INVARIANCE = "local:batch-invariance"


class BatchingSetting(Protocol):
    """What a target's config says about cross-request batching."""

    @property
    def enabled(self) -> bool | None: ...

    @property
    def allow_cross_request_variance(self) -> bool: ...


@dataclass(frozen=True)
class DecisionFields:
    """Where a target's batching setting lives in the spec, for the messages that name it."""

    enabled: str  # e.g. targets.local.batching.enabled
    opt_in: str  # e.g. targets.local.batching.allow_cross_request_variance
    doc: str  # the page that explains the rule


LOCAL_FIELDS = DecisionFields("targets.local.batching.enabled",
                              "targets.local.batching.allow_cross_request_variance", "docs/serving.md")


@dataclass(frozen=True)
class BatchingDecision:
    enabled: bool
    reason: str  # one sentence for report.md
    figures: dict[str, Any] | None  # the step's result; None when the build did not plan the step
    error: str | None = None  # set when the spec asks for something the measured model does not allow


def invariance_step(spec: DeploySpec, spec_dir: Path, model_step: str) -> Step:
    eval_set = spec.data.eval.model_dump(mode="json") if spec.data.eval is not None else None
    return Step(INVARIANCE, "measure batch invariance: eval rows alone vs in mixed and hostile batches",
                partial(run_invariance, model_step=model_step), deps=(model_step,),
                params={"data": {"eval": eval_set}, "task": spec.model.task},
                input_files=data_files(spec, spec_dir, "eval"), libs=("onnx", "onnxruntime", "numpy"))


def run_invariance(ctx: StepContext, model_step: str) -> dict[str, Any]:
    from deployc.compiler.ops import model_path
    from deployc.ml.invariance import measure, unmeasured

    model = model_path(ctx.deps[model_step])
    if "eval" not in ctx.resolved.data:
        result = unmeasured(model, "data.eval is not set")
    else:
        x, _ = ctx.data("eval")
        result = measure(model, x, ctx.resolved.task)
    ctx.log(evidence(result))
    return result


def evidence(fig: dict[str, Any]) -> str:
    """What the measurement found, in words."""
    if fig.get("batchable") is False:
        return "the model has no free batch axis"
    if not fig["measured"]:
        ops = ", ".join(fig["batch_dependent_ops"])
        found = f"the graph holds {ops} (activation scales computed per batch)" if ops else \
            "the graph holds no batch-dependent operator"
        return f"{found}; {fig.get('not_measured', 'data.eval is not set')}, so nothing was measured"
    classes = (f"{fig['changed_predictions']} of {fig['rows']} eval predictions changed class, "
               if fig.get("changed_predictions") is not None else "")
    verdict = "batch-invariant" if fig["invariant"] else "not batch-invariant"
    text = (f"{verdict}: in mixed batches (other eval rows, rows x{fig.get('hostile_scale', 1000):g}) {classes}"
            f"outputs moved by up to {fig['max_abs_diff']:g} from batch 1 (relative {fig['relative_diff']:g}, "
            f"tolerance {fig['relative_tolerance']:g}) over {fig['rows']} rows")
    ordinary = fig.get("by_companions", {}).get("eval")
    if not fig["invariant"] and ordinary:
        text += f"; with other eval rows only, by up to {ordinary['max_abs_diff']:g}"
    return text


def batching_decision(batching: BatchingSetting, figures: dict[str, Any] | None,
                      fields: DecisionFields = LOCAL_FIELDS) -> BatchingDecision:
    """`enabled` as written wins when the model allows it; unset means on exactly when it is batch-invariant."""
    if batching.enabled is False:
        return BatchingDecision(False, f"off: {fields.enabled} is false", figures)
    if figures is None:
        return BatchingDecision(True, "on: batch invariance was not measured", None)
    found = evidence(figures)
    if figures.get("batchable") is False:
        return BatchingDecision(False, f"off: {found}", figures)
    if figures["invariant"]:
        return BatchingDecision(True, f"on: {found}", figures)
    if batching.enabled is None:
        return BatchingDecision(False, f"off (auto): {found}; each request runs on its own", figures)
    if batching.allow_cross_request_variance:
        return BatchingDecision(True, f"on ({fields.opt_in}): {found}", figures)
    error = (f"{fields.enabled}: true, but the shipped model is {found}. A request's answer would depend on "
             f"the other requests in its batch: remove `enabled` (the build then serves each request on its own), "
             f"or set {fields.opt_in}: true to batch anyway ({fields.doc})")
    return BatchingDecision(False, f"refused: {found}", figures, error)


__all__ = ["INVARIANCE", "LOCAL_FIELDS", "BatchingDecision", "BatchingSetting", "DecisionFields",
           "batching_decision", "evidence", "invariance_step", "run_invariance"]
