"""CloudWatch alarms from SLOs: literal AWS::CloudWatch::Alarm properties that boto3 and CloudFormation accept."""
from __future__ import annotations

import json
from typing import Any

import pytest

from deployc import conventions as C
from deployc.monitoring import CLOUDWATCH_PATH, build_monitoring, compile_monitoring
from deployc.monitoring.cloudwatch import alarms
from deployc.schema import DeploySpec

SNS = "arn:aws:sns:eu-west-1:123456789012:oncall"
SPEC: dict[str, Any] = {
    "apiVersion": "deployc/v1", "name": "scorer", "model": {"path": "model.onnx"},
    "targets": {"sagemaker": {"region": "eu-west-1", "role_arn": "arn:aws:iam::123456789012:role/r",
                              "image_uri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/serve:1", "s3_prefix": "s3://bucket/p"}},
    "slos": [
        {"kind": "availability", "objective": 99.9, "alerting": {"sns_topic_arn": SNS, "disabled_windows": ["3d"]}},
        {"kind": "latency", "objective": 99, "threshold_ms": 120.5, "window": "28d"},
        {"kind": "stability", "max_drift": 0.2},
    ],
    "data": {"eval": {"path": "e.npz"}},
}
DIMS = [{"Name": "EndpointName", "Value": "ep-1"}, {"Name": "VariantName", "Value": "AllTraffic"}]


def by_id() -> dict[str, dict[str, Any]]:
    out = alarms(DeploySpec.model_validate(SPEC), "ep-1", "AllTraffic")
    assert len({a["logical_id"] for a in out}) == len(out)
    return {a["logical_id"]: a["properties"] for a in out}


def test_one_alarm_per_enabled_burn_condition() -> None:
    assert sorted(by_id()) == sorted([
        "SloAvailabilityPage1hAlarm", "SloAvailabilityPage6hAlarm", "SloAvailabilityTicket1dAlarm",
        "SloLatencyPage1hAlarm", "SloLatencyPage6hAlarm", "SloLatencyTicket1dAlarm", "SloLatencyTicket3dAlarm"])


def test_availability_uses_metric_math_on_5xx_over_invocations() -> None:
    a = by_id()["SloAvailabilityPage1hAlarm"]
    queries = {q["Id"]: q for q in a["Metrics"]}
    assert queries["errorratio"]["Expression"] == "IF(invocations > 0, errors / invocations, 0)"
    assert queries["errorratio"]["ReturnData"] is True
    for qid, metric in (("errors", "Invocation5XXErrors"), ("invocations", "Invocations")):
        stat = queries[qid]["MetricStat"]
        assert stat["Metric"] == {"Namespace": C.CLOUDWATCH_NAMESPACE, "MetricName": metric, "Dimensions": DIMS}
        assert (stat["Period"], stat["Stat"], queries[qid]["ReturnData"]) == (300, "Sum", False)
    assert a["Threshold"] == pytest.approx(14.4 * 0.001)
    assert (a["EvaluationPeriods"], a["DatapointsToAlarm"]) == (12, 12)  # 1h of 5m periods
    assert a["ComparisonOperator"] == "GreaterThanThreshold" and a["TreatMissingData"] == "notBreaching"
    assert a["AlarmActions"] == [SNS] and a["AlarmName"] == "ep-1-availability-page-1h"
    assert "MetricName" not in a and "Period" not in a
    t = by_id()["SloAvailabilityTicket1dAlarm"]
    assert t["Metrics"][0]["MetricStat"]["Period"] == 7200 and t["Threshold"] == pytest.approx(0.003)


def test_latency_threshold_in_microseconds_with_matching_percentile() -> None:
    alarms_ = by_id()
    for lid, stat, periods, period in (("SloLatencyPage1hAlarm", "p86.56", 12, 300),
                                       ("SloLatencyPage6hAlarm", "p94.4", 12, 1800),
                                       ("SloLatencyTicket1dAlarm", "p97.2", 12, 7200),
                                       ("SloLatencyTicket3dAlarm", "p99.07", 12, 21600)):
        a = alarms_[lid]
        assert a["Threshold"] == 120500.0  # 120.5 ms in microseconds
        assert (a["Namespace"], a["MetricName"], a["Dimensions"]) == (C.CLOUDWATCH_NAMESPACE, "ModelLatency", DIMS)
        assert (a["ExtendedStatistic"], a["Period"], a["EvaluationPeriods"]) == (stat, period, periods)
        assert "Statistic" not in a and "AlarmActions" not in a and "Metrics" not in a
        assert a["Period"] * a["EvaluationPeriods"] <= 7 * 86400


def test_compiled_file_and_no_file_without_sagemaker() -> None:
    spec = DeploySpec.model_validate(SPEC)
    model = build_monitoring(spec, spec_file="d.yaml", reference_distribution=[0.5, 0.5], class_names=None)
    assert model is not None
    doc = json.loads(model.alarms_document("scorer", C.SAGEMAKER_VARIANT_NAME))
    assert doc["endpoint_name"] == "scorer" and doc["variant_name"] == C.SAGEMAKER_VARIANT_NAME
    assert len(doc["alarms"]) == 7 and doc["alarms"] == alarms(spec, "scorer", C.SAGEMAKER_VARIANT_NAME)
    # the monitoring folder holds no alarms: the sagemaker target writes them, beside its other files
    assert CLOUDWATCH_PATH not in compile_monitoring(spec, spec_file="d.yaml", reference_distribution=[0.5, 0.5],
                                                     class_names=None)


def test_boto3_put_metric_alarm_accepts_the_properties() -> None:
    boto3 = pytest.importorskip("boto3")
    moto = pytest.importorskip("moto")
    with moto.mock_aws():
        cw = boto3.client("cloudwatch", region_name="eu-west-1")
        for props in by_id().values():
            cw.put_metric_alarm(**props)
        got = {a["AlarmName"]: a for a in cw.describe_alarms()["MetricAlarms"]}
    assert len(got) == 7
    assert got["ep-1-latency-page-1h"]["ExtendedStatistic"] == "p86.56"
    assert got["ep-1-availability-page-1h"]["Metrics"][2]["Expression"].startswith("IF(")


def test_cfn_lint_accepts_the_alarms_in_a_template() -> None:
    cfnlint_api = pytest.importorskip("cfnlint.api")
    template = {"AWSTemplateFormatVersion": "2010-09-09",
                "Resources": {a: {"Type": "AWS::CloudWatch::Alarm", "Properties": p} for a, p in by_id().items()}}
    matches = cfnlint_api.lint_all(json.dumps(template))
    assert [str(m) for m in matches if m.rule.id.startswith("E")] == []
