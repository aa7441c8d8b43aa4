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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deployc import conventions as C
from deployc.errors import InputError
from deployc.monitoring.model import num
from deployc.monitoring.promql import quote, selector, slo_selector
from deployc.monitoring.rules import with_user_annotations
from deployc.schema.base import duration_seconds
from deployc.schema.slo import AlertMeta, InputDriftSLO, slo_name


@dataclass(frozen=True)
class WatchedFeature:
    name: str  # input[i]
    reference: tuple[float, ...]  # data.eval's share of rows in each bin ("0", "1", ...)


@dataclass(frozen=True)
class InputSLO:
    """An input-drift SLO, resolved with the build's input profile."""

    name: str
    description: str | None
    max_psi: float
    max_bad_share: float
    window: str
    for_: str
    min_rows: int
    features: tuple[WatchedFeature, ...]
    inputs: tuple[str, ...]  # inputs whose values are range-checked
    severity: str
    enabled: bool
    alerting: AlertMeta


def resolve_input_slo(s: InputDriftSLO, profile: Mapping[str, Any] | None) -> InputSLO:
    if profile is None:
        raise InputError("an input-drift SLO needs the build's input profile (step profile:inputs, on data.eval)")
    feats = []
    for f in profile.get("features", []):
        ref = tuple(float(p) for p in f["reference"])
        if not ref or any(not math.isfinite(p) or p < 0 for p in ref) or abs(sum(ref) - 1) > 1e-6:
            raise InputError(f"feature {f['name']}: reference bin shares must sum to 1, got {list(ref)}")
        feats.append(WatchedFeature(str(f["name"]), ref))
    return InputSLO(name=slo_name(s), description=s.description, max_psi=s.max_psi, max_bad_share=s.max_bad_share,
                    window=s.window, for_=s.for_, min_rows=s.min_rows, features=tuple(feats),
                    inputs=tuple(sorted(profile.get("inputs", {}))), severity=s.alerting.severity,
                    enabled=s.alerting.enabled, alerting=s.alerting)


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


# --- promtool unit tests ------------------------------------------------------------------------------------------

def _minutes(text: str) -> int:
    return int(duration_seconds(text) // 60)


def unit_tests(slo: InputSLO, model: str, version: str, eval_minutes: int) -> list[dict[str, Any]]:
    """Every watched feature at its reference shares (quiet, PSI checked), the first feature all in its rarest bin
    (its alert fires, the others' do not), the same with fewer rows than min_rows (quiet), and one input with too
    many bad values (the quality alert fires for it alone)."""
    from deployc.monitoring.promtests import _close_to, _expected_alert, _series

    if not slo.features and not slo.inputs:
        return []
    minutes = (-(-(_minutes(slo.window) + _minutes(slo.for_) + 10) // eval_minutes) + 1) * eval_minutes
    at = f"{minutes}m"
    base = {C.LABEL_SLO: slo.name, C.LABEL_MODEL: model}
    per_minute = max(1000, 2 * slo.min_rows)
    drift_rule, bad_rule = alert_rules(slo, model)

    def bins(counts: dict[str, list[float]]) -> list[dict[str, str]]:
        return [_series(C.METRIC_FEATURE_BINS, {C.LABEL_MODEL: model, C.LABEL_VERSION: version,
                                                 C.LABEL_FEATURE: f, C.LABEL_BIN: str(b)}, n, minutes)
                for f, row in counts.items() for b, n in enumerate(row) if n > 0]

    def drift_case(name: str, counts: dict[str, list[float]], check: bool) -> dict[str, Any]:
        expected = []
        for f in slo.features:
            row = counts[f.name]
            value = psi([n / sum(row) for n in row], f.reference)
            if slo.enabled and value > slo.max_psi and sum(row) * _minutes(slo.window) >= slo.min_rows:
                labels = {**base, C.LABEL_FEATURE: f.name, **drift_rule["labels"]}
                expected.append(_expected_alert(labels, drift_rule["annotations"]))
        t: dict[str, Any] = {"name": f"{slo.name}: {name}", "interval": "1m", "input_series": bins(counts),
                             "alert_rule_test": [{"eval_time": at, "alertname": C.ALERT_INPUT_DRIFT,
                                                  "exp_alerts": expected}]}
        if check:
            t["promql_expr_test"] = [
                _close_to(f"{C.SLO_FEATURE_DRIFT}{{{C.LABEL_SLO}={quote(slo.name)},{C.LABEL_MODEL}={quote(model)},"
                          f"{C.LABEL_FEATURE}={quote(f.name)}}}",
                          psi([n / sum(counts[f.name]) for n in counts[f.name]], f.reference),
                          {**base, C.LABEL_FEATURE: f.name}, at) for f in slo.features]
        return t

    tests = []
    if slo.features:
        matching = {f.name: [float(round(p * per_minute)) for p in f.reference] for f in slo.features}
        tests.append(drift_case("every feature at its reference shares", matching, True))
        first = slo.features[0]
        rare = min(range(len(first.reference)), key=lambda i: (first.reference[i], i))
        shifted = dict(matching, **{first.name: [float(per_minute) if i == rare else 0.0
                                                 for i in range(len(first.reference))]})
        if psi([n / per_minute for n in shifted[first.name]], first.reference) > slo.max_psi * 1.05:
            tests.append(drift_case(f"{first.name}: every row in its rarest bin", shifted, True))
            if slo.min_rows > 1:
                scale = slo.min_rows / (2 * _minutes(slo.window) * per_minute)
                few = {f: [n * scale for n in row] for f, row in shifted.items()}
                tests.append(drift_case(f"same drift, fewer than {slo.min_rows} rows", few, False))
    if slo.inputs:
        share = min(0.5, max(2 * slo.max_bad_share, 0.01))
        values = 10_000.0
        series = []
        expected = []
        for k, name in enumerate(slo.inputs):
            labels = {C.LABEL_MODEL: model, C.LABEL_VERSION: version, C.LABEL_INPUT: name}
            series.append(_series(C.METRIC_INPUT_VALUES, labels, values, minutes))
            bad = values * share if k == 0 else 0.0
            series.append(_series(C.METRIC_INPUT_NONFINITE, labels, bad / 2, minutes))
            series.append(_series(C.METRIC_INPUT_OUT_OF_RANGE, labels, bad / 2, minutes))
            if k == 0 and slo.enabled and share > slo.max_bad_share:
                expected.append(_expected_alert({**base, C.LABEL_INPUT: name, **bad_rule["labels"]},
                                                bad_rule["annotations"]))
        tests.append({"name": f"{slo.name}: {num(share * 100)}% bad values in input {slo.inputs[0]}",
                      "interval": "1m", "input_series": series,
                      "alert_rule_test": [{"eval_time": at, "alertname": C.ALERT_INPUT_QUALITY,
                                           "exp_alerts": expected}],
                      "promql_expr_test": [_close_to(
                          f"{C.SLO_INPUT_BAD_SHARE}{{{C.LABEL_SLO}={quote(slo.name)},{C.LABEL_MODEL}={quote(model)},"
                          f"{C.LABEL_INPUT}={quote(name)}}}", share if k == 0 else 0.0,
                          {**base, C.LABEL_INPUT: name}, at) for k, name in enumerate(slo.inputs)]})
    return tests


def panels(slo: InputSLO, model: str) -> list[dict[str, Any]]:
    """Grafana panels: PSI per watched feature, bad-value share per input."""
    from deployc.monitoring.dashboard import _panel  # it imports this module

    return [_panel(f"Input drift (PSI per feature over {slo.window})",
                   [(slo_selector(C.SLO_FEATURE_DRIFT, slo.name, model), "{{feature}}")], "none",
                   description=f"Alert above {num(slo.max_psi)} (SLO {slo.name})."),
            _panel(f"Bad input values (share over {slo.window})",
                   [(slo_selector(C.SLO_INPUT_BAD_SHARE, slo.name, model), "{{input}}")], "percentunit",
                   description="NaN, infinite or outside data.eval's range.")]
