"""promtool unit tests generated next to the rules: every alert fires on a burn it must catch and stays quiet
on one it must not; recorded SLI values are checked against the numbers fed in."""
from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from deployc import conventions as C
from deployc.monitoring.model import BudgetSLO, BurnCondition, DriftSLO, InputSLO, Tier, num
from deployc.monitoring.promql import le_label, quote, sli_name, slo_selector
from deployc.monitoring.rules import ALERT_NAMES, alert_annotations, kind_text
from deployc.monitoring.stability import alert_rule, drift_name, drift_value
from deployc.schema.base import duration_seconds

PER_MINUTE = 1_000_000  # inference requests per minute in the synthetic series (more for tight objectives)
MINUTES = 120  # length of the constant-ratio scenarios; every window sees the same ratio
# Rules are evaluated every EVAL_MINUTES in the tests (series still have a sample a minute, so every window holds
# many): days of history stay fast. Every eval_time is a multiple of it.
EVAL_MINUTES = 30
TOLERANCE = "1e-09"
VERSION = "1.0.0"
_LABEL_REF = re.compile(r"\{\{\s*\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def expand(text: str, labels: dict[str, str]) -> str:
    """What Prometheus makes of `{{ $labels.x }}` (the only template the schema lets through)."""
    return _LABEL_REF.sub(lambda m: labels.get(m.group(1), ""), text)


def _series(metric: str, labels: dict[str, str], per_minute: float, minutes: int) -> dict[str, str]:
    body = ",".join(f"{k}={quote(v)}" for k, v in labels.items())
    step = int(per_minute) if float(per_minute).is_integer() else float(per_minute)
    return {"series": f"{metric}{{{body}}}", "values": f"0+{step!r}x{minutes}"}


def _expected_alert(labels: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
    return {"exp_labels": labels, "exp_annotations": {k: expand(v, labels) for k, v in annotations.items()}}


def _close_to(expr: str, value: float, labels: dict[str, str], eval_time: str) -> dict[str, Any]:
    """A value check with a tolerance: promtool compares samples exactly."""
    body = ",".join(f"{k}={quote(v)}" for k, v in sorted(labels.items()))
    return {"expr": f"abs({expr} - {float(value)!r}) < bool {TOLERANCE}",
            "eval_time": eval_time, "exp_samples": [{"labels": "{" + body + "}", "value": 1}]}


def _values(before: int, during: int, minutes: int, burst: int) -> str:
    """promtool series notation: `before` a minute, then `during` a minute for the last `burst` minutes."""
    if burst >= minutes:
        return f"0+{during}x{minutes}"
    head = f"0+{before}x{minutes - burst}"
    start = (minutes - burst) * before + during
    return f"{head} {start}+{during}x{burst - 1}"


def _traffic(slo: BudgetSLO, model: str, bad: int, per_minute: int, minutes: int = MINUTES,
             burst: int | None = None) -> list[dict[str, str]]:
    """Inference traffic of `per_minute` requests, `bad` of them failing (or slow) in the last `burst` minutes."""
    burst = minutes if burst is None else burst
    base = {C.LABEL_MODEL: model, C.LABEL_VERSION: VERSION, C.LABEL_ROUTE: C.INFER_ROUTES[0]}

    def series(metric: str, labels: dict[str, str], before: int, during: int) -> dict[str, str]:
        body = ",".join(f"{k}={quote(v)}" for k, v in labels.items())
        return {"series": f"{metric}{{{body}}}", "values": _values(before, during, minutes, burst)}

    # Health-check failures are not inference traffic: they must not move the SLI.
    noise = series(C.METRIC_REQUESTS, {**base, C.LABEL_ROUTE: "ready", C.LABEL_CODE: "503"}, per_minute, per_minute)
    if slo.kind == "availability":
        return [series(C.METRIC_REQUESTS, {**base, C.LABEL_CODE: "200"}, per_minute, per_minute - bad),
                series(C.METRIC_REQUESTS, {**base, C.LABEL_CODE: "500"}, 0, bad), noise]
    assert slo.threshold_s is not None
    hist = C.METRIC_REQUEST_DURATION
    return [series(hist + "_bucket", {**base, "le": le_label(slo.threshold_s)}, per_minute, per_minute - bad),
            series(hist + "_bucket", {**base, "le": "+Inf"}, per_minute, per_minute),
            series(hist + "_count", base, per_minute, per_minute), noise]


def _pick_ratio(target: Fraction, avoid: list[Fraction], per_minute: int) -> int:
    """Bad requests per minute near `target`, kept 10% away from every other threshold it could meet."""
    bad = max(1, round(target * per_minute))
    for t in avoid:
        r = Fraction(bad, per_minute)
        if abs(r - t) < t / 10:
            bad = max(1, round((t * 9 / 10 if r < t else t * 11 / 10) * per_minute))
    return min(bad, per_minute)


def _limit(slo: BudgetSLO, tier: Tier) -> Fraction:
    """The error ratio above which the tier's alert fires when every window sees the same ratio."""
    return min(slo.factor(c) for c in tier.conditions) * slo.budget


def _same_sli(a: BudgetSLO, b: BudgetSLO) -> bool:
    return a.kind == b.kind and a.threshold_s == b.threshold_s


class Scenarios:
    """Builds the test cases. Every SLO of the model reads the same metrics, so each case states the alerts of
    every SLO that its traffic touches, not only those of the SLO it was made for."""

    def __init__(self, slos: list[BudgetSLO | DriftSLO], model: str):
        self.model = model
        self.budget = [s for s in slos if isinstance(s, BudgetSLO)]
        self.drift = [s for s in slos if isinstance(s, DriftSLO)]
        names = {ALERT_NAMES[t.name] for s in self.budget for t in s.tiers if t.conditions}
        if any(s.enabled for s in self.drift):
            names.add(C.ALERT_DRIFT)
        self.alertnames = sorted(names)

    def labels(self, slo: BudgetSLO | DriftSLO) -> dict[str, str]:
        return {C.LABEL_SLO: slo.name, C.LABEL_MODEL: self.model}

    def alert_tests(self, eval_time: str, expected: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        return [{"eval_time": eval_time, "alertname": a, "exp_alerts": expected.get(a, [])} for a in self.alertnames]

    def budget_tests(self, slo: BudgetSLO) -> list[dict[str, Any]]:
        peers = [b for b in self.budget if _same_sli(b, slo)]
        limits = [(b, t, _limit(b, t)) for b in peers for t in b.tiers if t.conditions]
        per_minute = PER_MINUTE
        while limits and min(v for _, _, v in limits) * per_minute < 1000:  # >= ~500 bad a minute when quiet
            per_minute *= 10
        eval_time = f"{MINUTES}m"
        tests = []
        for tier in (t for t in slo.tiers if t.conditions):
            limit = _limit(slo, tier)
            scenarios = [("quiet", limit / 2)] + ([("fires", min(limit * 2, (limit + 1) / 2))] if limit < 1 else [])
            for what, ratio in scenarios:
                bad = _pick_ratio(ratio, [v for b, t, v in limits if (b, t) != (slo, tier)], per_minute)
                r = Fraction(bad, per_minute)
                expected: dict[str, list[dict[str, Any]]] = {}
                for b, t, v in limits:
                    if r > v:
                        expected.setdefault(ALERT_NAMES[t.name], []).append(_expected_alert(
                            {**self.labels(b), "severity": t.severity, **b.alerting.labels},
                            alert_annotations(b, t, kind_text(b))))
                labels = self.labels(slo)
                exprs = [_close_to(slo_selector(sli_name(w), slo.name, self.model), float(r), labels, eval_time)
                         for w in ("5m", "1h", slo.period)]
                exprs.append(_close_to(slo_selector(C.SLO_BURN_RATE, slo.name, self.model), float(r / slo.budget),
                                       labels, eval_time))
                exprs.append(_close_to(slo_selector(C.SLO_ERROR_BUDGET, slo.name, self.model), float(slo.budget),
                                       labels, eval_time))
                tests.append({
                    "name": f"{slo.name}: {what} at error ratio {num(r)} ({tier.name} threshold {num(limit)})",
                    "interval": "1m",
                    "input_series": _traffic(slo, self.model, bad, per_minute),
                    "alert_rule_test": self.alert_tests(eval_time, expected),
                    "promql_expr_test": exprs,
                })
        for cond in (c for t in slo.tiers for c in t.conditions):
            tests.append(self.burst_test(slo, cond, peers, per_minute))
        return tests

    def burst_test(self, slo: BudgetSLO, cond: BurnCondition, peers: list[BudgetSLO],
                   per_minute: int) -> dict[str, Any]:
        """Healthy traffic, then a burn of exactly `cond.long` at the end: `cond` must fire, ideally alone in its
        tier (the longer windows see the burn diluted)."""
        def mins(text: str) -> int:
            return int(duration_seconds(text) // 60)

        burst = mins(cond.long)
        longest = max([mins(c.long) for b in peers for t in b.tiers for c in t.conditions] + [burst])
        minutes = -(-(longest + 10) // EVAL_MINUTES) * EVAL_MINUTES
        base = slo.factor(cond) * slo.budget
        checks = [(b, t, c, b.factor(c) * b.budget) for b in peers for t in b.tiers for c in t.conditions]

        def ratio(r: Fraction, window: str) -> Fraction:
            return r * min(burst, mins(window)) / min(mins(window), minutes)

        def firing(r: Fraction) -> list[tuple[BudgetSLO, Tier, BurnCondition]]:
            return [(b, t, c) for b, t, c, v in checks if ratio(r, c.long) > v and ratio(r, c.short) > v]

        def margin_ok(r: Fraction) -> bool:
            return all(abs(ratio(r, w) - v) > v / 10 for _, _, c, v in checks for w in (c.long, c.short))

        options = []
        for m in (2, Fraction(3, 2), 3, Fraction(5, 4), 4, Fraction(6, 5)):
            bad = min(per_minute, max(1, round(base * m * per_minute)))
            r = Fraction(bad, per_minute)
            if r <= base or not margin_ok(r):
                continue
            alone = [c for b, t, c in firing(r) if b is slo and t.name == cond.tier] == [cond]
            options.append((not alone, bad))
        bad = min(options)[1] if options else min(per_minute, max(1, round(base * 2 * per_minute)))
        r = Fraction(bad, per_minute)
        expected: dict[str, list[dict[str, Any]]] = {}
        for b in peers:
            for t in b.tiers:
                if any(bb is b and tt is t for bb, tt, _ in firing(r)):
                    expected.setdefault(ALERT_NAMES[t.name], []).append(_expected_alert(
                        {**self.labels(b), "severity": t.severity, **b.alerting.labels},
                        alert_annotations(b, t, kind_text(b))))
        fired = ", ".join(f"{c.long}/{c.short}" for b, _, c in firing(r) if b is slo) or "nothing, out of reach"
        return {
            "name": f"{slo.name}: error ratio {num(r)} for the last {cond.long} after healthy traffic "
                    f"(fires: {fired})",
            "interval": "1m",
            "input_series": _traffic(slo, self.model, bad, per_minute, minutes, burst),
            "alert_rule_test": self.alert_tests(f"{minutes}m", expected),
            "promql_expr_test": [_close_to(slo_selector(sli_name(w), slo.name, self.model), float(ratio(r, w)),
                                           self.labels(slo), f"{minutes}m") for w in (cond.short, cond.long)],
        }

    def drift_tests(self, slo: DriftSLO) -> list[dict[str, Any]]:
        def minutes_of(text: str) -> int:
            return int(duration_seconds(text) // 60)

        # Long enough for every drift SLO's window to fill and its `for` to pass between two evaluations.
        longest = max(minutes_of(d.window) + minutes_of(d.for_) for d in self.drift) + 10
        minutes = (-(-longest // EVAL_MINUTES) + 1) * EVAL_MINUTES
        eval_time = f"{minutes}m"
        rare = min(range(len(slo.classes)), key=lambda i: (slo.reference[i], i))
        per_minute = max(1000, 2 * max(d.min_requests for d in self.drift))

        def case(name: str, counts: list[float], check_value: bool) -> dict[str, Any]:
            live = [n / sum(counts) for n in counts]
            expected: dict[str, list[dict[str, Any]]] = {}
            for d in self.drift:
                value = drift_value(d.metric, live, d.reference)
                if d.enabled and value > d.max_drift and sum(counts) * minutes_of(d.window) >= d.min_requests:
                    rule = alert_rule(d, self.model)
                    expected.setdefault(C.ALERT_DRIFT, []).append(
                        _expected_alert({**self.labels(d), **rule["labels"]}, rule["annotations"]))
            series = [_series(C.METRIC_PREDICTIONS, {C.LABEL_MODEL: self.model, C.LABEL_VERSION: VERSION,
                                                     C.LABEL_CLASS: c}, n, minutes)
                      for c, n in zip(slo.classes, counts, strict=True) if n > 0]
            t: dict[str, Any] = {"name": f"{slo.name}: {name}", "interval": "1m", "input_series": series,
                                 "alert_rule_test": self.alert_tests(eval_time, expected)}
            if check_value:
                t["promql_expr_test"] = [
                    _close_to(slo_selector(drift_name(d), d.name, self.model), drift_value(d.metric, live, d.reference),
                              self.labels(d), eval_time) for d in self.drift]
            return t

        tests = [case("matches the reference", [float(round(p * per_minute)) for p in slo.reference], True)]
        shifted = [float(per_minute) if i == rare else 0.0 for i in range(len(slo.classes))]
        if drift_value(slo.metric, [n / per_minute for n in shifted], slo.reference) > slo.max_drift * 1.05:
            tests.append(case("every prediction is the rarest class", shifted, True))
            if slo.min_requests > 1:
                rate = slo.min_requests / (2 * minutes_of(slo.window))
                for d in self.drift:  # keep 10% away from every other SLO's min_requests
                    while 0.9 <= rate * minutes_of(d.window) / d.min_requests <= 1.1:
                        rate *= 0.8
                few = [n * rate / per_minute for n in shifted]
                tests.append(case(f"same drift, fewer than {slo.min_requests} predictions", few, False))
        return tests


def _minutes(text: str) -> int:
    return int(duration_seconds(text) // 60)


def input_tests(slo: InputSLO, model: str, version: str, eval_minutes: int) -> list[dict[str, Any]]:
    """Every watched feature at its reference shares (quiet, PSI checked), the first feature all in its rarest bin
    (its alert fires, the others' do not), the same with fewer rows than min_rows (quiet), and one input with too
    many bad values (the quality alert fires for it alone)."""
    from deployc.monitoring.inputs import alert_rules, psi

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


def unit_tests(slos: Sequence[BudgetSLO | DriftSLO | InputSLO], model: str, rules_file: str) -> dict[str, Any]:
    sc = Scenarios([s for s in slos if not isinstance(s, InputSLO)], model)
    tests: list[dict[str, Any]] = []
    for s in slos:
        if isinstance(s, BudgetSLO):
            tests += sc.budget_tests(s)
        elif isinstance(s, DriftSLO):
            tests += sc.drift_tests(s)
        else:
            tests += input_tests(s, model, VERSION, EVAL_MINUTES)
    return {"rule_files": [rules_file], "evaluation_interval": f"{EVAL_MINUTES}m", "tests": tests}
