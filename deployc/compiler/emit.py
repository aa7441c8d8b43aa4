"""Stage 5: build the EmitContext once (with the monitoring model) and run every target's emitter, in the
order their `after` declarations give."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from deployc import conventions as c
from deployc.compiler.cache import Cache
from deployc.compiler.ops import model_path
from deployc.compiler.plan import Plan
from deployc.compiler.steps import StepOutput, hash_path
from deployc.errors import DeploycError
from deployc.targets import EmitContext, TensorInfo, emit_order, get_target


def _io(plan: Plan, outputs: dict[str, StepOutput]) -> tuple[list[dict], list[dict]]:
    for sid in ("convert", "source"):
        if sid in outputs and "inputs" in outputs[sid].result:
            return outputs[sid].result["inputs"], outputs[sid].result["outputs"]
    raise AssertionError("the plan has no step that records the model's inputs and outputs")


def labels(plan: Plan) -> tuple[str, ...] | None:
    if not plan.spec.model.labels:
        return None
    from deployc.compiler.content import read_labels

    return read_labels(plan.spec_dir / plan.spec.model.labels)


def latency_buckets(plan: Plan) -> tuple[float, ...]:
    try:
        from deployc.monitoring import latency_buckets as buckets
    except ImportError:
        return tuple(c.DEFAULT_LATENCY_BUCKETS)
    return tuple(buckets(plan.spec))


def emit_all(plan: Plan, outputs: dict[str, StepOutput], spec_file: str) -> dict[str, bytes]:
    """Every file of the build: the monitoring folder, then each target's files, in their declared order."""
    ins, outs = _io(plan, outputs)
    onnx_model = model_path(outputs[plan.final_step])
    ref = outputs.get("reference")
    reference = tuple(ref.result["distribution"]) if ref and "distribution" in ref.result else None
    names = labels(plan)
    monitoring = None
    if plan.spec.slos:
        from deployc.monitoring import build_monitoring

        monitoring = build_monitoring(plan.spec, spec_file=spec_file, reference_distribution=reference,
                                      class_names=names)
    ctx = EmitContext(
        spec=plan.spec,
        spec_file=spec_file,
        onnx_model=onnx_model,
        onnx_sha256=hash_path(onnx_model),
        inputs=tuple(TensorInfo(t["name"], t["datatype"], tuple(t["shape"])) for t in ins),
        outputs=tuple(TensorInfo(t["name"], t["datatype"], tuple(t["shape"])) for t in outs),
        labels=names,
        reference_distribution=reference,
        latency_buckets=latency_buckets(plan),
        step_outputs={k: Path(v.dir) for k, v in outputs.items()},
        step_results={k: v.result for k, v in outputs.items()},
        monitoring=monitoring,
    )
    files: dict[str, bytes] = dict(monitoring.files()) if monitoring is not None else {}
    for name in emit_order(plan.targets):
        for rel, data in get_target(name).emit(ctx).items():
            if rel in files:
                raise DeploycError(f"targets.{name} emits {rel}, which the build already holds")
            files[rel] = data
    return files


def post_write_check(plan: Plan, cache: Cache) -> Callable[[Path], None] | None:
    """Checks run on the written temporary folder before it replaces the old build: promtool on the rules.

    A passing check is remembered in the cache under the hash of the files it read, so a no-op rebuild does not
    run promtool's unit tests again.
    """
    if not plan.spec.slos:
        return None

    def check(tmp: Path) -> None:
        from deployc.monitoring import run_promtool

        folder = tmp / c.MONITORING_DIR
        marker = cache.root / "checks" / f"promtool-{hash_path(folder)}"
        if marker.is_file():
            return
        result = run_promtool(folder)
        if result.get("promtool") == "passed":
            with contextlib.suppress(OSError):  # a read-only cache only loses this shortcut
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(str(result.get("promtool_version", "")))

    return check
