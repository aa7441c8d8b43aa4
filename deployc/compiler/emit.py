"""Stage 5: build the EmitContext once (with the monitoring model) and run every target's emitter, in the
order their `after` declarations give."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from deployc import conventions as c
from deployc.compiler import results
from deployc.compiler.cache import Cache
from deployc.compiler.ops import model_path
from deployc.compiler.plan import Plan
from deployc.compiler.steps import PROFILE, StepOutput, hash_path
from deployc.errors import DeploycError
from deployc.targets import EmitContext, get_target


def labels(plan: Plan) -> tuple[str, ...] | None:
    if plan.resolved.labels is None:
        return None
    from deployc.compiler.content import read_labels

    return read_labels(plan.resolved.labels)


def latency_buckets(plan: Plan) -> tuple[float, ...]:
    try:
        from deployc.monitoring import latency_buckets as buckets
    except ImportError:
        return tuple(c.DEFAULT_LATENCY_BUCKETS)
    return tuple(buckets(plan.spec))


def emit_all(plan: Plan, outputs: dict[str, StepOutput], spec_file: str) -> dict[str, bytes]:
    """Every file of the build: the monitoring folder, then each target's files, in their declared order."""
    ins, outs = results.model_io(outputs)
    onnx_model = model_path(outputs[plan.final_step])
    ref = results.reference(outputs)
    reference = ref.distribution if ref is not None else None
    names = labels(plan)
    monitoring = None
    if plan.spec.slos:
        from deployc.monitoring import build_monitoring

        prof = outputs.get(PROFILE)
        monitoring = build_monitoring(plan.spec, spec_file=spec_file, reference_distribution=reference,
                                      class_names=names,
                                      input_profile=prof.result["input_monitor"] if prof is not None else None)
    ctx = EmitContext(
        spec=plan.spec,
        spec_file=spec_file,
        onnx_model=onnx_model,
        onnx_sha256=hash_path(onnx_model),
        inputs=ins,
        outputs=outs,
        labels=names,
        reference_distribution=reference,
        latency_buckets=latency_buckets(plan),
        step_outputs={k: Path(v.dir) for k, v in outputs.items()},
        step_results={k: v.result for k, v in outputs.items()},
        monitoring=monitoring,
        resolved=plan.resolved,
        model_format=str(outputs[plan.final_step].result.get("format") or "onnx"),
    )
    files: dict[str, bytes] = dict(monitoring.files()) if monitoring is not None else {}
    for name in plan.resolved.target_names():  # in emit order (each after the targets it names in `after`)
        target = get_target(name)
        takes = target.formats(target.config(plan.spec))
        if ctx.model_format not in takes:  # validate refuses such specs
            raise DeploycError(f"targets.{name} cannot take the shipped {ctx.model_format} artifact (it takes "
                               f"{', '.join(takes)})")
        for rel, data in target.emit(ctx).items():
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
