"""SLOs -> Prometheus recording and burn-rate alert rules (with promtool unit tests), a Grafana dashboard and
CloudWatch alarms. Pure: `compile_monitoring` returns files, the build writes them. See docs/monitoring.md."""
from __future__ import annotations

import math
from collections.abc import Sequence

from deployc import conventions as C
from deployc.errors import InputError
from deployc.monitoring.promtool import RULES_FILE, TESTS_FILE, run_promtool
from deployc.schema.slo import LatencySLO, StabilitySLO, threshold_seconds
from deployc.schema.spec import DeploySpec

__all__ = ["compile_monitoring", "latency_buckets", "run_promtool"]

RULES_PATH = f"{C.MONITORING_DIR}/{RULES_FILE}"
TESTS_PATH = f"{C.MONITORING_DIR}/{TESTS_FILE}"
DASHBOARD_PATH = f"{C.MONITORING_DIR}/grafana-dashboard.json"
CLOUDWATCH_PATH = C.CLOUDWATCH_ALARMS


def latency_buckets(spec: DeploySpec) -> tuple[float, ...]:
    """The server's request-duration buckets: the defaults plus every latency threshold, so each is an `le`."""
    extra = {threshold_seconds(s.threshold_ms) for s in spec.slos if isinstance(s, LatencySLO)}
    return tuple(sorted(set(C.DEFAULT_LATENCY_BUCKETS) | extra))


def _reference(spec: DeploySpec, dist: Sequence[float] | None,
               names: Sequence[str] | None) -> tuple[tuple[float, ...] | None, tuple[str, ...] | None]:
    if not any(isinstance(s, StabilitySLO) for s in spec.slos):
        return None, None
    if dist is None or len(dist) == 0:
        raise InputError("a stability SLO needs the reference model's predicted-class distribution on data.eval")
    ref = tuple(float(p) for p in dist)
    if any(not math.isfinite(p) or p < 0 for p in ref) or abs(sum(ref) - 1) > 1e-6:
        raise InputError(f"the reference class distribution must be shares summing to 1, got {list(ref)}")
    classes = tuple(str(n) for n in names) if names is not None else tuple(str(i) for i in range(len(ref)))
    if len(classes) != len(ref):
        raise InputError(f"{len(classes)} class names for {len(ref)} model outputs")
    if len(set(classes)) != len(classes):
        raise InputError("class names must be unique: they become the `class` label of the drift rules")
    return ref, classes


def compile_monitoring(spec: DeploySpec, *, spec_file: str, reference_distribution: Sequence[float] | None,
                       class_names: Sequence[str] | None) -> dict[str, bytes]:
    """Every monitoring file of the build, keyed by its path relative to the build folder ({} without SLOs)."""
    if not spec.slos:
        return {}
    from deployc.monitoring import cloudwatch
    from deployc.monitoring.dashboard import dashboard
    from deployc.monitoring.model import BudgetSLO, resolve
    from deployc.monitoring.promtests import unit_tests
    from deployc.monitoring.rules import budget_groups
    from deployc.monitoring.stability import drift_groups
    from deployc.render import dump_json, dump_yaml

    ref, classes = _reference(spec, reference_distribution, class_names)
    slos = resolve(spec, ref, classes)
    groups = []
    for s in slos:
        groups += budget_groups(s, spec.name) if isinstance(s, BudgetSLO) else drift_groups(s, spec.name)
    header = C.GENERATED_HEADER.format(spec=spec_file)
    files = {
        RULES_PATH: dump_yaml({"groups": groups}, header),
        TESTS_PATH: dump_yaml(unit_tests(slos, spec.name, RULES_FILE), header),
        DASHBOARD_PATH: dump_json(dashboard(slos, spec.name, spec.version, spec_file)),
    }
    if spec.targets.sagemaker is not None:
        files[CLOUDWATCH_PATH] = dump_json({
            "comment": header,
            "endpoint_name": spec.name,
            "variant_name": C.SAGEMAKER_VARIANT_NAME,
            "alarms": cloudwatch.alarms(spec, spec.name, C.SAGEMAKER_VARIANT_NAME),
        })
    return files
