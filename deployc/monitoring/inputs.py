"""Input-drift SLOs: the live distribution of each watched feature against its bins on data.eval, and the share
of bad input values (docs/monitoring.md, "input-drift").

The server counts each row of an inference request in one bin per watched feature (`deployc_feature_bin_total`)
and each input value that is non-finite or outside data.eval's range. Per feature f:
PSI_f = sum_b (q_b - p_b) * ln(q_b / p_b), both shares floored at PSI_EPSILON, q_b the share of the rows over
`window` in bin b, p_b data.eval's share (computed by the build, embedded in the rules). Per input i: the bad
share = (non-finite + out-of-range values) / values over `window`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from deployc import conventions as C
from deployc.monitoring.model import InputSLO, num
from deployc.monitoring.promql import selector, slo_selector
from deployc.monitoring.rules import with_user_annotations


def reference_rules(slo: InputSLO, model: str) -> list[dict[str, Any]]:
    return [{"record": C.SLO_FEATURE_REFERENCE_SHARE, "expr": f"vector({float(p)!r})",
             "labels": {C.LABEL_SLO: slo.name, C.LABEL_MODEL: model, C.LABEL_FEATURE: f.name, C.LABEL_BIN: str(b)}}
            for f in slo.features for b, p in enumerate(f.reference)]


def live_rules(slo: InputSLO, model: str) -> list[dict[str, Any]]:
    labels = {C.LABEL_SLO: slo.name, C.LABEL_MODEL: model}
    fb = f"{C.LABEL_FEATURE}, {C.LABEL_BIN}"
    rows = f"increase({selector(C.METRIC_FEATURE_BINS, model)}[{slo.window}])"
    ref = slo_selector(C.SLO_FEATURE_REFERENCE_SHARE, slo.name, model)
    per_bin = f"(sum by ({fb}) ({rows}) or on({fb}) 0 * sum by ({fb}) ({ref}))"  # empty bins count 0
    live = slo_selector(C.SLO_FEATURE_LIVE_SHARE, slo.name, model)
    eps = num(C.PSI_EPSILON)
    q, p = f"clamp_min({live}, {eps})", f"clamp_min({ref}, {eps})"

    def inc(metric: str) -> str:
        return f"sum by ({C.LABEL_INPUT}) (increase({selector(metric, model)}[{slo.window}]))"

    bad = (f"({inc(C.METRIC_INPUT_NONFINITE)} + {inc(C.METRIC_INPUT_OUT_OF_RANGE)}) "
           f"/ {inc(C.METRIC_INPUT_VALUES)}")
    return [
        {"record": C.SLO_FEATURE_WINDOW_ROWS, "expr": f"sum by ({C.LABEL_FEATURE}) ({rows})", "labels": dict(labels)},
        {"record": C.SLO_FEATURE_LIVE_SHARE,
         "expr": f"{per_bin} / on({C.LABEL_FEATURE}) group_left() sum by ({C.LABEL_FEATURE}) ({rows})",
         "labels": dict(labels)},
        {"record": C.SLO_FEATURE_DRIFT, "expr": f"sum by ({C.LABEL_FEATURE}) (({q} - {p}) * ln({q} / {p}))",
         "labels": dict(labels)},
        {"record": C.SLO_INPUT_BAD_SHARE, "expr": bad, "labels": dict(labels)},
    ]


def alert_rules(slo: InputSLO, model: str) -> list[dict[str, Any]]:
    drift = slo_selector(C.SLO_FEATURE_DRIFT, slo.name, model)
    rows = slo_selector(C.SLO_FEATURE_WINDOW_ROWS, slo.name, model)
    bad = slo_selector(C.SLO_INPUT_BAD_SHARE, slo.name, model)
    extra = f" {slo.description}" if slo.description else ""
    drift_ann = {
        "summary": "{{ $labels.model }}: input feature {{ $labels.feature }} drifts from data.eval "
                   "(SLO {{ $labels.slo }})",
        "description": (f"The population stability index of feature {{{{ $labels.feature }}}} over the last "
                        f"{slo.window} against its bins on data.eval exceeded {num(slo.max_psi)} for {slo.for_} "
                        f"(with at least {slo.min_rows} rows in the window).{extra}"),
    }
    bad_ann = {
        "summary": "{{ $labels.model }}: bad values in input {{ $labels.input }} (SLO {{ $labels.slo }})",
        "description": (f"More than {num(slo.max_bad_share * 100)}% of the values of input {{{{ $labels.input }}}} "
                        f"over the last {slo.window} were NaN, infinite or outside the range seen in data.eval, "
                        f"for {slo.for_}.{extra}"),
    }
    labels = {"severity": slo.severity, **slo.alerting.labels}
    on = f"on({C.LABEL_SLO}, {C.LABEL_MODEL}, {C.LABEL_FEATURE})"
    return [
        {"alert": C.ALERT_INPUT_DRIFT, "expr": f"{drift} > {num(slo.max_psi)} and {on} {rows} >= {slo.min_rows}",
         "for": slo.for_, "labels": dict(labels), "annotations": with_user_annotations(drift_ann, slo.alerting)},
        {"alert": C.ALERT_INPUT_QUALITY, "expr": f"{bad} > {num(slo.max_bad_share)}", "for": slo.for_,
         "labels": dict(labels), "annotations": with_user_annotations(bad_ann, slo.alerting)},
    ]


def input_groups(slo: InputSLO, model: str) -> list[dict[str, Any]]:
    """One group, evaluated in order: reference shares, live shares and rows, PSI and bad share, the alerts."""
    rules = reference_rules(slo, model) + live_rules(slo, model) + (alert_rules(slo, model) if slo.enabled else [])
    return [{"name": f"deployc-{model}-{slo.name}", "rules": rules}]


def psi(live: Sequence[float], reference: Sequence[float]) -> float:
    """PSI as the rules compute it, in Python (the promtool tests' oracle)."""
    eps = C.PSI_EPSILON
    pairs = ((max(q, eps), max(p, eps)) for q, p in zip(live, reference, strict=True))
    return sum((q - p) * math.log(q / p) for q, p in pairs)
