"""promtool unit tests generated next to the rules: every alert fires on a burn it must catch and stays quiet
on one it must not; recorded SLI values are checked against the numbers fed in."""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from deployc import conventions as C
from deployc.monitoring.model import BudgetSLO, DriftSLO, num
from deployc.monitoring.promql import le_label, quote, sli_name, slo_selector
from deployc.monitoring.rules import ALERT_NAMES, alert_annotations, kind_text
from deployc.monitoring.stability import alert_rule, drift_name, drift_value
from deployc.schema.base import duration_seconds

PER_MINUTE = 1_000_000  # inference requests per minute in the synthetic series (more for tight objectives)
MINUTES = 120  # length of the budget scenarios; every window sees a constant ratio
TOLERANCE = "1e-09"
VERSION = "1.0.0"
_LABEL_REF = re.compile(r"\{\{\s*\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def expand(text: str, labels: dict[str, str]) -> str:
    """What Prometheus makes of `{{ $labels.x }}` (the only template the schema lets through)."""
    return _LABEL_REF.sub(lambda m: labels.get(m.group(1), ""), text)


def _series(metric: str, labels: dict[str, str], per_minute: float, minutes: int) -> dict[str, str]:
    body = ",".join(f"{k}={quote(v)}" for k, v in labels.items())
    return {"series": f"{metric}{{{body}}}", "values": f"0+{num(per_minute)}x{minutes}"}


def _expected_alert(labels: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
    return {"exp_labels": labels, "exp_annotations": {k: expand(v, labels) for k, v in annotations.items()}}


def _close_to(expr: str, value: float, labels: dict[str, str], eval_time: str) -> dict[str, Any]:
    """A value check with a tolerance: promtool compares samples exactly."""
    body = ",".join(f"{k}={quote(v)}" for k, v in sorted(labels.items()))
    return {"expr": f"abs({expr} - {float(value)!r}) < bool {TOLERANCE}",
            "eval_time": eval_time, "exp_samples": [{"labels": "{" + body + "}", "value": 1}]}


def _traffic(slo: BudgetSLO, model: str, bad: int, per_minute: int) -> list[dict[str, str]]:
    base = {C.LABEL_MODEL: model, C.LABEL_VERSION: VERSION, C.LABEL_ROUTE: C.INFER_ROUTES[0]}
    # Health-check failures are not inference traffic: they must not move the SLI.
    noise = _series(C.METRIC_REQUESTS, {**base, C.LABEL_ROUTE: "ready", C.LABEL_CODE: "503"}, per_minute, MINUTES)
    if slo.kind == "availability":
        return [_series(C.METRIC_REQUESTS, {**base, C.LABEL_CODE: "200"}, per_minute - bad, MINUTES),
                _series(C.METRIC_REQUESTS, {**base, C.LABEL_CODE: "500"}, bad, MINUTES), noise]
    assert slo.threshold_s is not None
    hist = C.METRIC_REQUEST_DURATION
    return [_series(hist + "_bucket", {**base, "le": le_label(slo.threshold_s)}, per_minute - bad, MINUTES),
            _series(hist + "_bucket", {**base, "le": "+Inf"}, per_minute, MINUTES),
            _series(hist + "_count", base, per_minute, MINUTES), noise]


def _pick_ratio(target: Fraction, others: list[Fraction], per_minute: int) -> int:
    """Bad requests per minute near `target`, kept 10% away from every other tier's threshold."""
    bad = max(1, round(target * per_minute))
    for t in others:
        r = Fraction(bad, per_minute)
        if abs(r - t) < t / 10:
            bad = max(1, round((t * 9 / 10 if r < t else t * 11 / 10) * per_minute))
    return min(bad, per_minute)


def budget_tests(slo: BudgetSLO, model: str) -> list[dict[str, Any]]:
    tiers = [t for t in slo.tiers if t.conditions]
    budget = Fraction(slo.budget)
    limits = {t.name: min(slo.factor(c) for c in t.conditions) * budget for t in tiers}
    labels = {C.LABEL_SLO: slo.name, C.LABEL_MODEL: model}
    eval_time = f"{MINUTES}m"
    per_minute = PER_MINUTE
    while limits and min(limits.values()) * per_minute < 1000:  # at least ~500 bad requests a minute when quiet
        per_minute *= 10
    tests = []
    for tier in tiers:
        limit = limits[tier.name]
        scenarios = [("quiet", limit / 2)]
        if limit < 1:
            scenarios.append(("fires", min(limit * 2, (limit + 1) / 2)))
        for what, ratio in scenarios:
            bad = _pick_ratio(ratio, [v for k, v in limits.items() if k != tier.name], per_minute)
            r = Fraction(bad, per_minute)
            alert_tests = []
            for other in tiers:
                fires = r > limits[other.name]
                exp = [_expected_alert({**labels, "severity": other.severity, **slo.alerting.labels},
                                       alert_annotations(slo, other, kind_text(slo)))] if fires else []
                alert_tests.append({"eval_time": eval_time, "alertname": ALERT_NAMES[other.name], "exp_alerts": exp})
            exprs = [_close_to(slo_selector(sli_name(w), slo.name, model), float(r), labels, eval_time)
                     for w in ("5m", "1h", slo.period)]
            exprs.append(_close_to(slo_selector(C.SLO_BURN_RATE, slo.name, model), float(r / budget), labels,
                                   eval_time))
            exprs.append(_close_to(slo_selector(C.SLO_ERROR_BUDGET, slo.name, model), float(budget), labels,
                                   eval_time))
            tests.append({
                "name": f"{slo.name}: {what} at error ratio {num(r)} ({tier.name} threshold {num(limit)})",
                "interval": "1m",
                "input_series": _traffic(slo, model, bad, per_minute),
                "alert_rule_test": alert_tests,
                "promql_expr_test": exprs,
            })
    return tests


def drift_tests(slo: DriftSLO, model: str) -> list[dict[str, Any]]:
    window_min = int(duration_seconds(slo.window) // 60)
    minutes = window_min + int(duration_seconds(slo.for_) // 60) + 10
    eval_time = f"{minutes}m"
    labels = {C.LABEL_SLO: slo.name, C.LABEL_MODEL: model}
    rare = min(range(len(slo.classes)), key=lambda i: (slo.reference[i], i))
    per_minute = max(1000, 2 * slo.min_requests)

    def series(counts: list[float]) -> list[dict[str, str]]:
        return [_series(C.METRIC_PREDICTIONS, {C.LABEL_MODEL: model, C.LABEL_VERSION: VERSION, C.LABEL_CLASS: c},
                        n, minutes) for c, n in zip(slo.classes, counts) if n > 0]

    def test(name: str, counts: list[float], fires: bool, check_value: bool) -> dict[str, Any]:
        total = sum(counts)
        live = [n / total for n in counts]
        rule = alert_rule(slo, model)
        exp = [_expected_alert({**labels, **rule["labels"]}, rule["annotations"])] if fires else []
        t: dict[str, Any] = {"name": f"{slo.name}: {name}", "interval": "1m", "input_series": series(counts)}
        if slo.enabled:
            t["alert_rule_test"] = [{"eval_time": eval_time, "alertname": C.ALERT_DRIFT, "exp_alerts": exp}]
        if check_value:
            t["promql_expr_test"] = [
                _close_to(slo_selector(drift_name(slo), slo.name, model),
                          drift_value(slo.metric, live, slo.reference), labels, eval_time)]
        return t

    same = [round(p * per_minute) for p in slo.reference]
    tests = [test("matches the reference", [float(n) for n in same], False, True)]
    shifted = [float(per_minute) if i == rare else 0.0 for i in range(len(slo.classes))]
    if drift_value(slo.metric, [n / per_minute for n in shifted], slo.reference) > slo.max_drift * 1.05:
        tests.append(test("every prediction is the rarest class", shifted, True, True))
        if slo.min_requests > 1:
            few = [n * slo.min_requests / (2 * window_min * per_minute) for n in shifted]
            tests.append(test(f"same drift, fewer than {slo.min_requests} predictions", few, False, False))
    return tests


def unit_tests(slos: list[BudgetSLO | DriftSLO], model: str, rules_file: str) -> dict[str, Any]:
    tests: list[dict[str, Any]] = []
    for s in slos:
        tests += budget_tests(s, model) if isinstance(s, BudgetSLO) else drift_tests(s, model)
    return {"rule_files": [rules_file], "evaluation_interval": "1m", "tests": tests}
