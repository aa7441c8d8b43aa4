"""Prometheus rule groups for availability and latency SLOs: SLI ratios, metadata, multi-burn-rate alerts."""
from __future__ import annotations

from typing import Any

from deployc import conventions as C
from deployc.monitoring.model import BudgetSLO, Tier, num
from deployc.monitoring.promql import sli_error_ratio, sli_name, slo_selector
from deployc.schema.slo import AlertMeta

Rule = dict[str, Any]

ALERT_NAMES = {"page": C.ALERT_FAST_BURN, "ticket": C.ALERT_SLOW_BURN}


def windows(slo: BudgetSLO) -> list[str]:
    """Every window the SLI is recorded over: the burn-rate windows and the SLO period."""
    ws = list(C.SLI_WINDOWS)
    return ws + ([slo.period] if slo.period not in ws else [])


def sli_rules(slo: BudgetSLO, model: str) -> list[Rule]:
    labels = {C.LABEL_SLO: slo.name, C.LABEL_MODEL: model}
    return [{"record": sli_name(w), "expr": sli_error_ratio(slo, model, w), "labels": dict(labels)}
            for w in windows(slo)]


def meta_rules(slo: BudgetSLO, model: str) -> list[Rule]:
    labels = {C.LABEL_SLO: slo.name, C.LABEL_MODEL: model}
    budget = slo_selector(C.SLO_ERROR_BUDGET, slo.name, model)
    return [
        {"record": C.SLO_OBJECTIVE, "expr": f"vector({num(slo.objective)})", "labels": dict(labels)},
        {"record": C.SLO_ERROR_BUDGET, "expr": f"vector({num(slo.budget)})", "labels": dict(labels)},
        {"record": C.SLO_PERIOD_DAYS, "expr": f"vector({slo.period_days})", "labels": dict(labels)},
        {"record": C.SLO_BURN_RATE,
         "expr": f"{slo_selector(sli_name('5m'), slo.name, model)} / {budget}", "labels": dict(labels)},
        {"record": C.SLO_BUDGET_REMAINING,
         "expr": f"1 - {slo_selector(sli_name(slo.period), slo.name, model)} / {budget}", "labels": dict(labels)},
    ]


def condition_text(slo: BudgetSLO, tier: Tier) -> str:
    return " or ".join(f"{num(slo.factor(c))}x over {c.long} and {c.short}" for c in tier.conditions)


def alert_expr(slo: BudgetSLO, tier: Tier, model: str) -> str:
    parts = []
    for c in tier.conditions:
        limit = f"({num(slo.factor(c))} * {num(slo.budget)})"
        long_ = f"{slo_selector(sli_name(c.long), slo.name, model)} > {limit}"
        short = f"{slo_selector(sli_name(c.short), slo.name, model)} > {limit}"
        parts.append(f"({long_} and {short})")
    return " or ".join(parts)


def alert_annotations(slo: BudgetSLO, tier: Tier, kind_text: str) -> dict[str, str]:
    speed = "fast" if tier.name == "page" else "slowly but steadily"
    ann = {
        "summary": f"{{{{ $labels.model }}}}: SLO {{{{ $labels.slo }}}} is burning its error budget {speed}",
        "description": (f"{kind_text}; objective {num(slo.objective * 100)}% over {slo.period}. The error ratio "
                        f"exceeded the budget burn rate of {condition_text(slo, tier)}."
                        + (f" {slo.description}" if slo.description else "")),
    }
    return with_user_annotations(ann, slo.alerting)


def with_user_annotations(ann: dict[str, str], meta: AlertMeta) -> dict[str, str]:
    ann = {**ann, **meta.annotations}
    if meta.runbook_url:
        ann["runbook_url"] = meta.runbook_url
    return ann


def kind_text(slo: BudgetSLO) -> str:
    if slo.kind == "latency":
        return f"Latency SLO: inference requests faster than {num(slo.threshold_ms or 0)} ms"
    return "Availability SLO: inference requests that did not fail with a 5xx code"


def alert_rules(slo: BudgetSLO, model: str) -> list[Rule]:
    rules = []
    for tier in slo.tiers:
        if not tier.conditions:
            continue
        rules.append({
            "alert": ALERT_NAMES[tier.name],
            "expr": alert_expr(slo, tier, model),
            "labels": {"severity": tier.severity, **slo.alerting.labels},
            "annotations": alert_annotations(slo, tier, kind_text(slo)),
        })
    return rules


def budget_groups(slo: BudgetSLO, model: str) -> list[dict[str, Any]]:
    """One group per SLO: its rules are evaluated in order, so the metadata and alerts read this evaluation's
    SLI values, never the previous one's (groups are evaluated independently of each other)."""
    rules = sli_rules(slo, model) + meta_rules(slo, model) + alert_rules(slo, model)
    return [{"name": f"deployc-{model}-{slo.name}", "rules": rules}]
