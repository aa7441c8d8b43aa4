"""The `deployc serve` bundle: the model (model.onnx, or model.xml and model.bin for an OpenVINO artifact),
serving.json and labels.txt (docs/bundle.md).

Every target that runs `deployc serve` ships one (local, sagemaker, kserve, vertex, azureml), so it lives here,
not in one of them. Its `batching` section follows the `local:batch-invariance` measurement
(deployc/targets/invariance.py) and the spec's `targets.local.batching` (defaults when `local` is not set).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deployc import conventions as c
from deployc.compiler.steps import EXPLAIN, PROFILE
from deployc.errors import SpecFieldError
from deployc.render import dump_json
from deployc.signing import serving_fields
from deployc.targets import get_target, serves_metrics
from deployc.targets.base import EmitContext
from deployc.targets.invariance import INVARIANCE, LOCAL_FIELDS, BatchingDecision, batching_decision

if TYPE_CHECKING:
    from deployc.schema.spec import DeploySpec
    from deployc.targets.local import LocalConfig  # it imports this module

ENABLED_FIELD = LOCAL_FIELDS.enabled
OPT_IN_FIELD = LOCAL_FIELDS.opt_in
SERVED_FIGURES = ("invariant", "measured", "max_abs_diff", "relative_diff", "changed_predictions", "rows",
                  "relative_tolerance", "batch_dependent_ops")


def ships_serving_json(spec: DeploySpec) -> bool:
    """True when some target of the spec writes a `deployc serve` bundle (serving.json)."""
    return serves_metrics(spec)


def local_config(spec: DeploySpec) -> LocalConfig:
    """`targets.local`, or its defaults: the serving settings of every serving.json the spec ships."""
    cfg: LocalConfig = get_target("local").config_or_default(spec)
    return cfg


def decide(spec: DeploySpec, step_results: dict[str, dict[str, Any]]) -> BatchingDecision:
    """Whether the spec's serving.json files batch across requests, from the spec and the measurement."""
    cfg = local_config(spec)
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


def serving_config(ctx: EmitContext, cfg: LocalConfig, *, host: str | None = None, port: int | None = None,
                   capture: bool = False) -> dict[str, Any]:
    """The `serving.json` document for a bundle folder holding the model (and labels.txt); with `capture`, its
    `capture` section when the spec's `monitoring.capture` is on (absent otherwise)."""
    return {
        "format_version": c.SERVING_CONFIG_VERSION,
        "name": ctx.spec.name,
        "version": ctx.spec.version,
        "task": ctx.spec.model.task,
        **prediction_fields(ctx),
        "model": {
            **model_section(ctx),
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
        **explain_fields(ctx),
        **(capture_fields(ctx) if capture else {}),
        **serving_fields(ctx.spec),  # `signature`: servers verify the bundle before they load it
    }


MB = 1 << 20
ONNX_FILE = "model.onnx"
OPENVINO_FILES = ("model.xml", "model.bin")  # the graph, then the weights (OpenVINO reads the .bin beside the .xml)


def model_files(ctx: EmitContext) -> dict[str, bytes]:
    """The shipped artifact's files, by their names in a bundle folder."""
    if ctx.model_format == "openvino":
        return {name: (ctx.onnx_model / name).read_bytes() for name in OPENVINO_FILES}
    return {ONNX_FILE: ctx.onnx_model.read_bytes()}


def model_section(ctx: EmitContext) -> dict[str, Any]:
    """serving.json's model file(s), their sha256 and the runtime that runs them (docs/bundle.md)."""
    if ctx.model_format != "openvino":
        return {"path": ONNX_FILE, "sha256": ctx.onnx_sha256, "runtime": "onnxruntime"}
    from deployc.compiler.steps import file_digest
    from deployc.ml.openvino import settings_of

    xml, weights = (ctx.onnx_model / name for name in OPENVINO_FILES)
    return {"path": OPENVINO_FILES[0], "sha256": file_digest(xml), "runtime": "openvino",
            "weights": {"path": OPENVINO_FILES[1], "sha256": file_digest(weights)},
            "openvino": settings_of(ctx.onnx_model)}


def capture_fields(ctx: EmitContext) -> dict[str, Any]:
    """serving.json's `capture` (docs/serving.md, Capture): the sampling rate, the captured tensors by the
    artifact's names, each field's mask (a salt's variable name, never a salt) and the files' bounds."""
    mon = ctx.spec.monitoring
    cap = mon.capture if mon is not None else None
    if cap is None or not cap.enabled:
        return {}
    inputs = [t.name for t in ctx.inputs] if cap.inputs is None else list(cap.inputs)
    outputs = [t.name for t in ctx.outputs] if cap.outputs is None else list(cap.outputs)
    f = cap.files
    return {"capture": {
        "sampling_percent": float(cap.sampling_percent),
        "inputs": inputs,
        "outputs": outputs,
        "fields": {name: rule.to_json() for name, rule in sorted(cap.fields.items())},
        "request_id": cap.request_id.to_json(),
        "parameters": cap.parameters.to_json(),
        "files": {"folder": f.folder, "max_file_bytes": int(f.max_file_mb * MB),
                  "max_total_bytes": int(f.max_total_mb * MB), "max_files": f.max_files,
                  "queue_size": f.queue_size},
    }}


EXPLAIN_BASELINE = "explain.npz"  # beside serving.json: the explanation's baseline row of each input


def explain_fields(ctx: EmitContext) -> dict[str, Any]:
    """serving.json's `explain` (the route's method and limits, docs/serving.md) and `input_monitor` (the input
    ranges and reference feature bins the server counts against), where the build made them."""
    found: dict[str, Any] = {}
    ex = ctx.spec.explain
    ref = ctx.step_results.get(EXPLAIN)
    if ex is not None and ex.serve.enabled and ref is not None:
        found["explain"] = {"method": ex.method, "steps": ex.steps, "samples": ex.samples,
                            "max_rows": ex.serve.max_rows, "top_k": ex.top_k, "baseline": EXPLAIN_BASELINE,
                            "features": list(ref["features"])}
    prof = ctx.step_results.get(PROFILE)
    if prof is not None:
        found["input_monitor"] = prof["input_monitor"]
    return found


def prediction_fields(ctx: EmitContext) -> dict[str, Any]:
    """serving.json's `prediction` (the output the predicted-class counter watches: model.prediction, by the
    artifact's name of it) and, for sigmoid tasks, `threshold`; absent where they say nothing new."""
    m = ctx.spec.model
    found: dict[str, Any] = {}
    names = [t.name for t in ctx.outputs]
    if m.prediction is not None and len(names) > 1:
        found["prediction"] = m.prediction
    if m.task in ("binary", "multilabel"):
        found["threshold"] = m.threshold if m.threshold is not None else 0.5
    return found


def serving_files(ctx: EmitContext, cfg: LocalConfig | None = None, *, host: str | None = None,
                  port: int | None = None, capture: bool | None = None) -> dict[str, bytes]:
    """The model's files, serving.json and labels.txt, relative to the bundle folder (also packed by sagemaker); `cfg`
    defaults to the spec's `targets.local` settings (or their defaults).

    `capture` (default: for the bundle that keeps the spec's own host, the local target's) writes the capture
    section: a platform's container either captures by itself (SageMaker's DataCaptureConfig) or has no folder
    that outlives it, so the bundles made for a platform address (`host`) leave it out unless asked.
    """
    cfg = cfg or local_config(ctx.spec)
    files = {
        **model_files(ctx),
        "serving.json": dump_json(serving_config(ctx, cfg, host=host, port=port,
                                                 capture=host is None if capture is None else capture)),
    }
    if ctx.labels:
        files["labels.txt"] = ("\n".join(ctx.labels) + "\n").encode()
    if "explain" in explain_fields(ctx):
        files[EXPLAIN_BASELINE] = (ctx.step_outputs[EXPLAIN] / "baseline.npz").read_bytes()
    return files
