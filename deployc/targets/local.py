"""`targets.local`: the ONNX model and the serving config `deployc serve` reads (docs/bundle.md).

The local target also owns the `local:batch-invariance` step: it measures whether the shipped model's outputs
for a row depend on the other rows of its batch (deployc/ml/invariance.py), and `batching_decision` turns that
into `batching.enabled` for every serving.json a build writes (local, sagemaker, kserve, vertex, azureml).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployc import conventions as c
from deployc.compiler.steps import Step, StepContext, data_files
from deployc.errors import SpecFieldError
from deployc.render import dump_json
from deployc.schema.local import Batching
from deployc.schema.local import LocalTarget as LocalConfig
from deployc.targets import serves_metrics
from deployc.targets.base import EmitContext, Target

if TYPE_CHECKING:
    from deployc.schema.spec import DeploySpec

INVARIANCE = "local:batch-invariance"
ENABLED_FIELD = "targets.local.batching.enabled"
OPT_IN_FIELD = "targets.local.batching.allow_cross_request_variance"
SERVED_FIGURES = ("invariant", "measured", "max_abs_diff", "relative_diff", "changed_predictions", "rows",
                  "relative_tolerance", "batch_dependent_ops")


def ships_serving_json(spec: DeploySpec) -> bool:
    """True when some target of the spec writes a `deployc serve` bundle (serving.json)."""
    return serves_metrics(spec)


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
    if ctx.spec.data.eval is None:
        result = unmeasured(model, "data.eval is not set")
    else:
        x, _ = ctx.data("eval")
        result = measure(model, x, ctx.spec.model.task)
    ctx.log(_evidence(result))
    return result


@dataclass(frozen=True)
class BatchingDecision:
    enabled: bool
    reason: str  # one sentence for report.md
    figures: dict[str, Any] | None  # the step's result; None when the build did not plan the step
    error: str | None = None  # set when the spec asks for something the measured model does not allow


def _evidence(fig: dict[str, Any]) -> str:
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


def batching_decision(batching: Batching, figures: dict[str, Any] | None) -> BatchingDecision:
    """`enabled` as written wins when the model allows it; unset means on exactly when it is batch-invariant."""
    if batching.enabled is False:
        return BatchingDecision(False, f"off: {ENABLED_FIELD} is false", figures)
    if figures is None:
        return BatchingDecision(True, "on: batch invariance was not measured", None)
    evidence = _evidence(figures)
    if figures.get("batchable") is False:
        return BatchingDecision(False, f"off: {evidence}", figures)
    if figures["invariant"]:
        return BatchingDecision(True, f"on: {evidence}", figures)
    if batching.enabled is None:
        return BatchingDecision(False, f"off (auto): {evidence}; each request runs on its own", figures)
    if batching.allow_cross_request_variance:
        return BatchingDecision(True, f"on ({OPT_IN_FIELD}): {evidence}", figures)
    error = (f"{ENABLED_FIELD}: true, but the shipped model is {evidence}. A request's answer would depend on "
             f"the other requests in its batch: remove `enabled` (the build then serves each request on its own), "
             f"or set {OPT_IN_FIELD}: true to batch anyway (docs/serving.md)")
    return BatchingDecision(False, f"refused: {evidence}", figures, error)


def decide(spec: DeploySpec, step_results: dict[str, dict[str, Any]]) -> BatchingDecision:
    cfg = spec.targets.local or LocalConfig()
    return batching_decision(cfg.batching, step_results.get(INVARIANCE))


def batching_section(ctx: EmitContext, cfg: LocalConfig) -> dict[str, Any]:
    """serving.json's `batching`: the decision, its settings and the figures it rests on (null: not measured)."""
    decision = batching_decision(cfg.batching, ctx.step_results.get(INVARIANCE))
    if decision.error:
        raise SpecFieldError(("targets", "local", "batching", "enabled"), decision.error.removeprefix(
            f"{ENABLED_FIELD}: "))
    fig = decision.figures
    return {
        "enabled": decision.enabled,
        "max_batch_size": cfg.batching.max_batch_size,
        "max_delay_ms": cfg.batching.max_delay_ms,
        "batch_invariant": {k: fig.get(k) for k in SERVED_FIGURES} if fig else None,
    }


def serving_config(ctx: EmitContext, cfg: LocalConfig, *, host: str | None = None, port: int | None = None
                   ) -> dict[str, Any]:
    """The `serving.json` document for a bundle folder holding model.onnx (and labels.txt)."""
    return {
        "format_version": c.SERVING_CONFIG_VERSION,
        "name": ctx.spec.name,
        "version": ctx.spec.version,
        "task": ctx.spec.model.task,
        "model": {
            "path": "model.onnx",
            "sha256": ctx.onnx_sha256,
            "inputs": [t.to_json() for t in ctx.inputs],
            "outputs": [t.to_json() for t in ctx.outputs],
        },
        "labels": "labels.txt" if ctx.labels else None,
        "server": {
            "host": host or cfg.host,
            "port": port or cfg.port,
            "workers": cfg.workers,
            "max_body_bytes": cfg.max_body_bytes,
            "auth_token_env": cfg.auth.token_env if cfg.auth else None,
            "grpc_port": cfg.grpc_port,
        },
        "runtime": {"intra_op_threads": cfg.threads.intra_op, "inter_op_threads": cfg.threads.inter_op},
        "batching": batching_section(ctx, cfg),
        "metrics": {"latency_buckets": list(ctx.latency_buckets)},
        "limits": cfg.limits.model_dump(),  # timeouts, connections, in-flight body bytes (docs/serving.md)
    }


def serving_files(ctx: EmitContext, cfg: LocalConfig | None = None, *, host: str | None = None,
                  port: int | None = None) -> dict[str, bytes]:
    """model.onnx, serving.json and labels.txt, relative to the bundle folder (also packed by sagemaker)."""
    cfg = cfg or LocalConfig()
    files = {
        "model.onnx": ctx.onnx_model.read_bytes(),
        "serving.json": dump_json(serving_config(ctx, cfg, host=host, port=port)),
    }
    if ctx.labels:
        files["labels.txt"] = ("\n".join(ctx.labels) + "\n").encode()
    return files


class LocalTarget(Target):
    name = "local"
    config_model = LocalConfig
    description = "A bundle `deployc serve` runs."
    serves = True

    def steps(self, spec: DeploySpec, spec_dir: Path, final_model_step: str, keras_model_step: str | None
              ) -> list[Step]:
        """Planned for every spec that ships a serving.json (also without targets.local), once."""
        return [invariance_step(spec, spec_dir, final_model_step)] if ships_serving_json(spec) else []

    def emit(self, ctx: EmitContext) -> dict[str, bytes]:
        files = serving_files(ctx, self.config(ctx.spec))
        return {f"{c.LOCAL_DIR}/{k}": v for k, v in files.items()}
