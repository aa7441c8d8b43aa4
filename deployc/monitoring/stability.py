"""Stability SLOs: the live predicted-class distribution against the reference embedded in the rules.

PSI = sum_c (q_c - p_c) * ln(q_c / p_c) with both shares floored at PSI_EPSILON; TV = 1/2 sum_c |q_c - p_c|.
q_c is the share of class c among predictions counted over `window`; p_c is the reference model's share on
data.eval, computed by the build.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from deployc import conventions as C
from deployc.monitoring.model import DriftSLO, num
from deployc.monitoring.promql import selector, slo_selector
from deployc.monitoring.rules import with_user_annotations


def drift_name(slo: DriftSLO) -> str:
    return C.SLO_DRIFT.format(metric=slo.metric)


def reference_rules(slo: DriftSLO, model: str) -> list[dict[str, Any]]:
    return [{"record": C.SLO_REFERENCE_SHARE, "expr": f"vector({float(p)!r})",
             "labels": {C.LABEL_SLO: slo.name, C.LABEL_MODEL: model, C.LABEL_CLASS: cls}}
            for cls, p in zip(slo.classes, slo.reference, strict=True)]


def live_rules(slo: DriftSLO, model: str) -> list[dict[str, Any]]:
    labels = {C.LABEL_SLO: slo.name, C.LABEL_MODEL: model}
    preds = f"increase({selector(C.METRIC_PREDICTIONS, model)}[{slo.window}])"
    ref = slo_selector(C.SLO_REFERENCE_SHARE, slo.name, model)
    # Classes never predicted have no series; the reference's classes fill them in with 0.
    per_class = (f"(sum by ({C.LABEL_CLASS}) ({preds}) or on({C.LABEL_CLASS}) "
                 f"0 * sum by ({C.LABEL_CLASS}) ({ref}))")
    live = slo_selector(C.SLO_LIVE_SHARE, slo.name, model)
    eps = num(C.PSI_EPSILON)
    if slo.metric == "psi":
        q, p = f"clamp_min({live}, {eps})", f"clamp_min({ref}, {eps})"
        drift = f"sum(({q} - {p}) * ln({q} / {p}))"
    else:
        drift = f"0.5 * sum(abs({live} - {ref}))"
    return [
        {"record": C.SLO_WINDOW_PREDICTIONS, "expr": f"sum({preds})", "labels": dict(labels)},
        {"record": C.SLO_LIVE_SHARE, "expr": f"{per_class} / on() group_left() sum({preds})",
         "labels": dict(labels)},
        {"record": drift_name(slo), "expr": drift, "labels": dict(labels)},
    ]


def alert_rule(slo: DriftSLO, model: str) -> dict[str, Any]:
    drift = slo_selector(drift_name(slo), slo.name, model)
    count = slo_selector(C.SLO_WINDOW_PREDICTIONS, slo.name, model)
    metric = "population stability index" if slo.metric == "psi" else "total variation distance"
    ann = {
        "summary": "{{ $labels.model }}: predicted classes drift from the reference (SLO {{ $labels.slo }})",
        "description": (f"The {metric} between the predicted-class distribution over the last {slo.window} and "
                        f"the reference on data.eval exceeded {num(slo.max_drift)} for {slo.for_} "
                        f"(with at least {slo.min_requests} predictions in the window)."
                        + (f" {slo.description}" if slo.description else "")),
    }
    return {
        "alert": C.ALERT_DRIFT,
        "expr": f"{drift} > {num(slo.max_drift)} and on({C.LABEL_SLO}, {C.LABEL_MODEL}) {count} >= {slo.min_requests}",
        "for": slo.for_,
        "labels": {"severity": slo.severity, **slo.alerting.labels},
        "annotations": with_user_annotations(ann, slo.alerting),
    }


def drift_groups(slo: DriftSLO, model: str) -> list[dict[str, Any]]:
    """One group per SLO, evaluated in order: reference shares, live shares, drift, then the alert."""
    rules = reference_rules(slo, model) + live_rules(slo, model) + ([alert_rule(slo, model)] if slo.enabled else [])
    return [{"name": f"deployc-{model}-{slo.name}", "rules": rules}]


def drift_value(metric: str, live: Sequence[float], reference: Sequence[float]) -> float:
    """The drift the rules compute, in Python: used to pick test scenarios and by tests as the oracle."""
    if metric == "tv":
        return 0.5 * sum(abs(q - p) for q, p in zip(live, reference, strict=True))
    eps = C.PSI_EPSILON
    pairs = ((max(q, eps), max(p, eps)) for q, p in zip(live, reference, strict=True))
    return sum((q - p) * math.log(q / p) for q, p in pairs)
