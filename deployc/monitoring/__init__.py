"""SLOs -> Prometheus recording and burn-rate alert rules (with promtool unit tests), a Grafana dashboard and
CloudWatch alarms. Pure: `build_monitoring` returns the typed model every writer serializes from, and
`compile_monitoring` the monitoring folder's files; the build writes them. See docs/monitoring.md."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from deployc import conventions as C
from deployc.errors import InputError
from deployc.monitoring.promtool import run_promtool
from deployc.monitoring.resolved import CLOUDWATCH_PATH, DASHBOARD_PATH, RULES_PATH, TESTS_PATH, Monitoring
from deployc.schema.slo import LatencySLO, StabilitySLO, threshold_seconds

if TYPE_CHECKING:
    from deployc.schema.spec import DeploySpec

__all__ = ["CLOUDWATCH_PATH", "DASHBOARD_PATH", "RULES_PATH", "TESTS_PATH", "Monitoring", "build_monitoring",
           "compile_monitoring", "latency_buckets", "run_promtool"]


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


def build_monitoring(spec: DeploySpec, *, spec_file: str, reference_distribution: Sequence[float] | None,
                     class_names: Sequence[str] | None, input_profile: Mapping[str, Any] | None = None
                     ) -> Monitoring | None:
    """The resolved monitoring of a spec (None without SLOs): what every monitoring writer serializes from."""
    if not spec.slos:
        return None
    from deployc.monitoring.model import resolve

    ref, classes = _reference(spec, reference_distribution, class_names)
    return Monitoring(name=spec.name, version=spec.version, spec_file=spec_file,
                      slos=tuple(resolve(spec, ref, classes, input_profile=input_profile)))


def compile_monitoring(spec: DeploySpec, *, spec_file: str, reference_distribution: Sequence[float] | None,
                       class_names: Sequence[str] | None, input_profile: Mapping[str, Any] | None = None
                       ) -> dict[str, bytes]:
    """The monitoring folder of the build, keyed by path relative to the build folder ({} without SLOs).
    CloudWatch alarms are not in it: the target that deploys them writes them (`Monitoring.alarms_document`)."""
    model = build_monitoring(spec, spec_file=spec_file, reference_distribution=reference_distribution,
                             class_names=class_names, input_profile=input_profile)
    return model.files() if model is not None else {}
