"""`deployc deploy` against moto in server mode (real HTTP): idempotence, updates, refusals, failures.

moto does not implement UpdateEndpoint. Where a test needs it, a botocore `before-call` hook on the deploy's own
SageMaker client answers it: `emulate_update` performs the update in moto's state (delete + create the endpoint on
the new config, what a successful blue/green update ends in), `fail_update` answers with a ClientError, and
`stay_updating` makes DescribeEndpoint report Updating. Every other call reaches moto.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_support import ALARMS, BUCKET, emit_context, moto_server, reset_moto, spec_for, tiny_onnx, write_bundle
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from deployc.deploy.aws import client_factory
from deployc.deploy.cli import main as deploy_main
from deployc.deploy.sagemaker import deploy
from deployc.errors import DeployError, InputError
from deployc.targets.sagemaker import SageMakerTarget

__all__ = ["moto_server"]
AUTOSCALED = {"instance_type": "ml.m5.large",
              "autoscaling": {"min_instances": 1, "max_instances": 3, "target_invocations_per_instance": 100}}
M5 = {"instance_type": "ml.m5.large"}  # moto knows fewer instance types than SageMaker (not ml.c6i.large)
READ_ONLY = {"HeadObject", "DescribeModel", "DescribeEndpointConfig", "DescribeEndpoint", "DescribeAlarms",
             "DescribeScalableTargets", "DescribeScalingPolicies"}


@pytest.fixture
def aws(moto_server: str) -> Iterator[str]:
    reset_moto(moto_server)
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield moto_server


def sm(url: str) -> Any:
    return boto3.client("sagemaker", endpoint_url=url, region_name="us-east-1")


def bundle(tmp_path: Path, sm_cfg: dict[str, Any], *, scale: float = 1.0, label: str = "a",
           patch: Callable[[dict[str, Any]], None] | None = None) -> Path:
    model = tiny_onnx(tmp_path / f"model-{label}.onnx", scale=scale)
    files = SageMakerTarget().emit(emit_context(spec_for(sm_cfg), model, alarms=ALARMS))
    if patch:
        plan = json.loads(files["sagemaker/deploy-plan.json"])
        patch(plan)
        files["sagemaker/deploy-plan.json"] = json.dumps(plan).encode()
    out = tmp_path / f"build-{label}"
    out.mkdir()
    return write_bundle(out, files)


class Recorder:
    """Clients to moto that record every operation sent, with optional per-operation hooks."""

    def __init__(self, url: str, hooks: dict[str, Callable[..., Any]] | None = None):
        self.url, self.ops, self.hooks = url, [], hooks or {}
        self.factory = client_factory("us-east-1", url)

    def __call__(self, service: str) -> Any:
        client = self.factory(service)
        if not getattr(client, "_recorded", False):
            client.meta.events.register("before-call.*.*", self._record)
            for event, hook in self.hooks.items():
                client.meta.events.register(event, hook)
            client._recorded = True
        return client

    def _record(self, model: Any, **_: Any) -> None:
        self.ops.append(model.name)

    def writes(self) -> list[str]:
        return [op for op in self.ops if op not in READ_ONLY]


def emulate_update(url: str) -> Callable[..., Any]:
    def hook(params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        body = json.loads(params["body"])
        plain = sm(url)
        plain.delete_endpoint(EndpointName=body["EndpointName"])
        arn = plain.create_endpoint(EndpointName=body["EndpointName"],
                                    EndpointConfigName=body["EndpointConfigName"])["EndpointArn"]
        return AWSResponse(url, 200, {}, None), {"EndpointArn": arn}
    return hook


def fail_update(**_: Any) -> Any:
    raise ClientError({"Error": {"Code": "ResourceLimitExceeded", "Message": "account-level service limit "
                                 "'ml.m5.large for endpoint usage' is 2 Instances"}}, "UpdateEndpoint")


def test_deploy_twice_second_run_changes_nothing(aws: str, tmp_path: Path) -> None:
    build = bundle(tmp_path, AUTOSCALED)
    first = Recorder(aws)
    result = deploy(build, clients=first, log=lambda _: None, poll_s=0.01)
    assert result["changed"] is True
    assert first.writes() == ["PutObject", "CreateModel", "CreateEndpointConfig", "PutMetricAlarm", "PutMetricAlarm",
                              "CreateEndpoint", "RegisterScalableTarget", "PutScalingPolicy"]
    endpoint = sm(aws).describe_endpoint(EndpointName="digits")
    assert (endpoint["EndpointStatus"], endpoint["EndpointConfigName"]) == ("InService", result["endpoint_config_name"])
    s3 = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    key = result["model_data_url"].removeprefix(f"s3://{BUCKET}/")
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == (build / "sagemaker/model.tar.gz").read_bytes()
    aas = boto3.client("application-autoscaling", endpoint_url=aws, region_name="us-east-1")
    target = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert [(t["ResourceId"], t["MinCapacity"], t["MaxCapacity"]) for t in target] == [
        ("endpoint/digits/variant/AllTraffic", 1, 3)]
    cw = boto3.client("cloudwatch", endpoint_url=aws, region_name="us-east-1")
    assert sorted(a["AlarmName"] for a in cw.describe_alarms()["MetricAlarms"]) == [
        "digits-availability-page", "digits-latency-ticket"]

    lines: list[str] = []
    second = Recorder(aws)
    again = deploy(build, clients=second, log=lines.append, poll_s=0.01)
    assert again["changed"] is False and second.writes() == []
    assert {a["status"] for a in again["actions"]} == {"unchanged"} and len(again["actions"]) == 8
    assert lines[-1].endswith("already up to date, nothing changed")
    assert len(sm(aws).list_models()["Models"]) == 1 and len(sm(aws).list_endpoint_configs()["EndpointConfigs"]) == 1


def test_changed_model_creates_a_new_config_and_updates_the_endpoint(aws: str, tmp_path: Path) -> None:
    old = deploy(bundle(tmp_path, AUTOSCALED), clients=Recorder(aws), log=lambda _: None, poll_s=0.01)
    rec = Recorder(aws, {"before-call.sagemaker.UpdateEndpoint": emulate_update(aws)})
    new = deploy(bundle(tmp_path, AUTOSCALED, scale=2.0, label="b"), clients=rec, log=lambda _: None, poll_s=0.01)
    assert new["endpoint_config_name"] != old["endpoint_config_name"] and new["model_name"] != old["model_name"]
    # same instance type: autoscaling stays registered, the update keeps its instance count
    assert rec.writes() == ["PutObject", "CreateModel", "CreateEndpointConfig", "UpdateEndpoint"]
    assert sm(aws).describe_endpoint(EndpointName="digits")["EndpointConfigName"] == new["endpoint_config_name"]
    configs = {c["EndpointConfigName"] for c in sm(aws).list_endpoint_configs()["EndpointConfigs"]}
    assert configs == {old["endpoint_config_name"], new["endpoint_config_name"]}  # nothing deleted


def test_instance_type_change_reregisters_autoscaling(aws: str, tmp_path: Path) -> None:
    deploy(bundle(tmp_path, AUTOSCALED), clients=Recorder(aws), log=lambda _: None, poll_s=0.01)
    rec = Recorder(aws, {"before-call.sagemaker.UpdateEndpoint": emulate_update(aws)})
    bigger = {**AUTOSCALED, "instance_type": "ml.m5.xlarge"}
    deploy(bundle(tmp_path, bigger, label="b"), clients=rec, log=lambda _: None, poll_s=0.01)
    assert rec.writes() == ["CreateEndpointConfig", "DeleteScalingPolicy", "DeregisterScalableTarget",
                            "UpdateEndpoint", "RegisterScalableTarget", "PutScalingPolicy"]


def test_tampered_bundle_is_refused_before_any_call(aws: str, tmp_path: Path, capsys: Any) -> None:
    build = bundle(tmp_path, {"instance_type": "ml.m5.large"})
    plan_file = build / "sagemaker/deploy-plan.json"
    plan_file.write_text(plan_file.read_text().replace("ml.m5.large", "ml.p3.16xlarge"))
    rec = Recorder(aws)
    with pytest.raises(InputError, match="sagemaker/deploy-plan.json: modified since the build"):
        deploy(build, clients=rec)
    assert rec.ops == []
    assert deploy_main([str(build), "--target", "sagemaker", "--endpoint-url", aws]) == 1
    assert "modified since the build" in capsys.readouterr().err


def test_dry_run_prints_the_plan_and_calls_nothing(tmp_path: Path, capsys: Any) -> None:
    build = bundle(tmp_path, AUTOSCALED)
    closed = "http://127.0.0.1:9"  # nothing listens: any call would fail
    assert deploy_main([str(build), "--target", "sagemaker", "--dry-run", "--endpoint-url", closed]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out.pop().startswith("dry run: nothing was called; endpoint digits would run digits-")
    assert [line.split(" (")[0] for line in out] == [
        "would call s3.put_object", "would call sagemaker.create_model", "would call sagemaker.create_endpoint_config",
        "would call cloudwatch.put_metric_alarm", "would call cloudwatch.put_metric_alarm",
        "would call sagemaker.create_endpoint", "would call application-autoscaling.register_scalable_target",
        "would call application-autoscaling.put_scaling_policy"]
    assert '"InstanceType": "ml.m5.large"' in out[2]


def test_dry_run_json_is_one_result_document(tmp_path: Path, capsys: Any) -> None:
    import json

    build = bundle(tmp_path, AUTOSCALED)
    assert deploy_main([str(build), "--target", "sagemaker", "--dry-run", "--format", "json",
                        "--endpoint-url", "http://127.0.0.1:9"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["endpoint_name"] == "digits"
    assert doc["endpoint_config_name"].startswith("digits-") and doc["changed"] is False


def test_failing_create_is_a_deploy_error_and_the_endpoint_stays(aws: str, tmp_path: Path, capsys: Any) -> None:
    good = deploy(bundle(tmp_path, {"instance_type": "ml.m5.large"}), clients=Recorder(aws), log=lambda _: None)

    def bad_type(plan: dict[str, Any]) -> None:  # a type the service refuses (the schema would refuse it too)
        for call in plan["calls"]:
            if call["operation"] == "create_endpoint_config":
                call["parameters"]["ProductionVariants"][0]["InstanceType"] = "ml.bogus.large"
                call["parameters"]["EndpointConfigName"] = plan["endpoint_config_name"] = "digits-0123456789ab"
            if call["operation"] == "create_endpoint":
                call["parameters"]["EndpointConfigName"] = "digits-0123456789ab"

    build = bundle(tmp_path, {"instance_type": "ml.m5.large"}, scale=3.0, label="b", patch=bad_type)
    code = deploy_main([str(build), "--target", "sagemaker", "--endpoint-url", aws])
    err = capsys.readouterr().err
    assert code == 4
    assert "sagemaker.create_endpoint_config: ValidationException" in err and "ml.bogus.large" in err
    assert f"Endpoint digits is InService on config {good['endpoint_config_name']}" in err
    assert sm(aws).describe_endpoint(EndpointName="digits")["EndpointConfigName"] == good["endpoint_config_name"]


def test_failing_update_keeps_the_last_good_config(aws: str, tmp_path: Path) -> None:
    good = deploy(bundle(tmp_path, AUTOSCALED), clients=Recorder(aws), log=lambda _: None)
    rec = Recorder(aws, {"before-call.sagemaker.UpdateEndpoint": fail_update})
    with pytest.raises(DeployError) as info:
        deploy(bundle(tmp_path, AUTOSCALED, scale=2.0, label="b"), clients=rec, log=lambda _: None)
    assert info.value.exit_code == 4
    message = str(info.value)
    assert message.startswith("sagemaker.create_endpoint: ResourceLimitExceeded: account-level service limit")
    assert "an account quota or rate limit" in message
    assert f"is InService on config {good['endpoint_config_name']}; no config or model was deleted" in message
    assert sm(aws).describe_endpoint(EndpointName="digits")["EndpointConfigName"] == good["endpoint_config_name"]
    assert "DeleteEndpointConfig" not in rec.ops and "DeleteModel" not in rec.ops


def test_rolled_back_update_is_reported(aws: str, tmp_path: Path) -> None:
    good = deploy(bundle(tmp_path, M5), clients=Recorder(aws), log=lambda _: None)
    accepted = {"before-call.sagemaker.UpdateEndpoint":  # accepted, then SageMaker rolls back (alarm fired)
                lambda **_: (AWSResponse(aws, 200, {}, None), {"EndpointArn": "arn"})}
    with pytest.raises(DeployError,
                       match=f"was rolled back .* serves the last good config {good['endpoint_config_name']}"):
        deploy(bundle(tmp_path, M5, scale=2.0, label="b"), clients=Recorder(aws, accepted), log=lambda _: None)


def test_wait_timeout_is_a_deploy_error(aws: str, tmp_path: Path) -> None:
    good = deploy(bundle(tmp_path, M5), clients=Recorder(aws), log=lambda _: None)

    def stay_updating(parsed: dict[str, Any], **_: Any) -> None:
        parsed["EndpointStatus"] = "Updating"

    hooks = {"before-call.sagemaker.UpdateEndpoint": lambda **_: (AWSResponse(aws, 200, {}, None), {}),
             "after-call.sagemaker.DescribeEndpoint": stay_updating}
    with pytest.raises(DeployError,
                       match=f"still Updating after 0.3s .* previous config {good['endpoint_config_name']}"):
        deploy(bundle(tmp_path, M5, scale=2.0, label="b"), clients=Recorder(aws, hooks), log=lambda _: None,
               wait_timeout_s=0.3, poll_s=0.05)


def test_unreachable_endpoint_is_a_deploy_error(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    build = bundle(tmp_path, M5)
    assert deploy_main([str(build), "--target", "sagemaker", "--endpoint-url", "http://127.0.0.1:9"]) == 4
    err = capsys.readouterr().err
    assert "s3.put_object: cannot reach http://127.0.0.1:9" in err
