"""CloudWatch alarms for a SageMaker endpoint: the Prometheus burn-rate conditions, as far as CloudWatch allows.

CloudWatch has no sliding windows of different lengths in one alarm, so each burn-rate condition (long window L,
short window S, factor k) becomes one alarm over periods of length S that fires when the ratio exceeded
k x budget in every one of the L/S periods of the long window (12 for the standard windows). That implies the
long-window ratio exceeded it too, and, as in Prometheus, the alarm clears after one clean short period. It is
stricter than Prometheus: a burst that spends the budget share in part of the long window only pages there.
Latency uses ModelLatency's percentile: more than k x budget of requests slower than the threshold is the same as
the (100 - 100 k x budget)th percentile above it. Properties are the PascalCase shape both CloudFormation's
AWS::CloudWatch::Alarm and boto3's put_metric_alarm take.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from deployc import conventions as C
from deployc.monitoring.model import BudgetSLO, BurnCondition, num, resolve
from deployc.schema.base import duration_seconds

if TYPE_CHECKING:
    from deployc.schema.spec import DeploySpec


def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in text.replace("_", "-").split("-") if part)


def _dimensions(endpoint_name: str, variant_name: str) -> list[dict[str, str]]:
    return [{"Name": "EndpointName", "Value": endpoint_name}, {"Name": "VariantName", "Value": variant_name}]


def _stat(id_: str, metric: str, dims: list[dict[str, str]], period: int) -> dict[str, Any]:
    return {"Id": id_, "ReturnData": False, "MetricStat": {
        "Metric": {"Namespace": C.CLOUDWATCH_NAMESPACE, "MetricName": metric, "Dimensions": dims},
        "Period": period, "Stat": "Sum"}}


def percentile(slo: BudgetSLO, cond: BurnCondition) -> str:
    """The ModelLatency percentile that exceeds the threshold exactly when the burn factor is exceeded."""
    pct = round(100 * (1 - float(slo.factor(cond) * slo.budget)), 2)
    pct = min(max(pct, 0.01), 99.99)  # CloudWatch takes p0.01 .. p99.99 at two decimals
    return f"p{pct:g}"


def _alarm(slo: BudgetSLO, cond: BurnCondition, severity: str, endpoint: str, variant: str) -> dict[str, Any] | None:
    factor = slo.factor(cond)
    limit = float(factor * slo.budget)
    if limit >= 1:  # the ratio can never exceed it
        return None
    period = int(duration_seconds(cond.short))
    periods = int(duration_seconds(cond.long)) // period
    dims = _dimensions(endpoint, variant)
    props: dict[str, Any] = {
        "AlarmName": f"{endpoint}-{slo.name}-{cond.tier}-{cond.long}",
        "EvaluationPeriods": periods,
        "DatapointsToAlarm": periods,
        "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "notBreaching",
    }
    objective = f"{num(slo.objective * 100)}% over {slo.period}"
    if slo.kind == "availability":
        props["AlarmDescription"] = (
            f"[{severity}] SLO {slo.name} (availability, {objective}): the 5xx error ratio exceeded "
            f"{num(factor)}x the error budget in every {cond.short} period of the last {cond.long}.")
        props["Metrics"] = [
            _stat("errors", "Invocation5XXErrors", dims, period),
            _stat("invocations", "Invocations", dims, period),
            {"Id": "errorratio", "Expression": "IF(invocations > 0, errors / invocations, 0)",
             "Label": "5xx error ratio", "ReturnData": True},
        ]
        props["Threshold"] = float(num(limit))
    else:
        assert slo.threshold_ms is not None
        stat = percentile(slo, cond)
        props["AlarmDescription"] = (
            f"[{severity}] SLO {slo.name} (latency under {num(slo.threshold_ms)} ms, {objective}): ModelLatency "
            f"{stat} (more than {num(limit * 100)}% of requests, {num(factor)}x the error budget) exceeded the "
            f"threshold in every {cond.short} period of the last {cond.long}.")
        props.update({"Namespace": C.CLOUDWATCH_NAMESPACE, "MetricName": "ModelLatency", "Dimensions": dims,
                      "ExtendedStatistic": stat, "Period": period,
                      "Threshold": float(slo.threshold_ms) * 1000.0})  # ModelLatency is in microseconds
    if slo.alerting.sns_topic_arn:
        props["AlarmActions"] = [slo.alerting.sns_topic_arn]
    return {"logical_id": f"Slo{_camel(slo.name)}{_camel(cond.tier)}{cond.long}Alarm", "properties": props}


def alarms(spec: DeploySpec, endpoint_name: str, variant_name: str) -> list[dict[str, Any]]:
    """One alarm per enabled burn-rate condition of each availability / latency SLO (stability has no
    CloudWatch metric: SageMaker does not publish predicted classes)."""
    budgets = [s for s in resolve(spec, None, None, budget_only=True) if isinstance(s, BudgetSLO)]
    return alarms_of(budgets, endpoint_name, variant_name)


def alarms_of(slos: Sequence[BudgetSLO], endpoint_name: str, variant_name: str) -> list[dict[str, Any]]:
    """The alarms of resolved availability / latency SLOs, in their order."""
    out = []
    for slo in slos:
        for tier in slo.tiers:
            for cond in tier.conditions:
                alarm = _alarm(slo, cond, tier.severity, endpoint_name, variant_name)
                if alarm is not None:
                    out.append(alarm)
    return out
