"""The sagemaker emitter: a reproducible model.tar.gz, a lint-clean CloudFormation template, plan, Dockerfile."""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from aws_support import ALARMS, emit_context, spec_for, tiny_onnx
from pydantic import ValidationError

from deployc.errors import InputError
from deployc.manifest import sha256_bytes
from deployc.targets.sagemaker import SageMakerTarget

VPC = {"subnets": ["subnet-0123abcd", "subnet-0123456789abcdef0"], "security_groups": ["sg-0123abcd"]}
CASES: dict[str, dict[str, Any]] = {
    "instances": {"instance_type": "ml.m5.large", "initial_instance_count": 2},
    "serverless": {"serverless": {"memory_mb": 4096, "max_concurrency": 5}},
    "vpc-kms": {"vpc": VPC, "kms_key": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                "network_isolation": True, "tags": {"team": "ml", "cost-center": "42"},
                "data_capture": {"sampling_percent": 20, "destination": "s3://capture-bucket/digits"}},
    "canary-alarms": {"rollout": {"strategy": "canary", "canary_percent": 10, "wait_s": 600},
                      "autoscaling": {"min_instances": 2, "max_instances": 6, "target_invocations_per_instance": 500}},
    "linear": {"rollout": {"strategy": "linear", "linear_step_percent": 25, "wait_s": 120,
                           "rollback_on_alarms": False},
               "environment": {"LOG_LEVEL": "debug"}},
}


def emit(tmp_path: Path, sm: dict[str, Any], *, alarms: list[dict[str, Any]] | None = ALARMS, scale: float = 1.0,
         **extra: Any) -> dict[str, bytes]:
    model = tiny_onnx(tmp_path / f"model-{scale}.onnx", scale=scale)
    return SageMakerTarget().emit(emit_context(spec_for(sm, **extra), model, alarms=alarms))


def cfn(files: dict[str, bytes]) -> dict[str, Any]:
    from ruamel.yaml import YAML

    return dict(YAML(typ="safe", pure=True).load(files["sagemaker/cloudformation.yaml"].decode()))


def test_model_tarball_is_reproducible_and_holds_the_serving_bundle(tmp_path: Path) -> None:
    first, second = emit(tmp_path, {}), emit(tmp_path, {})
    assert first == second  # every file, byte for byte
    data = first["sagemaker/model.tar.gz"]
    assert data[4:8] == b"\0\0\0\0"  # gzip header mtime
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["labels.txt", "model.onnx", "serving.json"]
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
        serving = json.loads(tar.extractfile("serving.json").read())  # type: ignore[union-attr]
        model = tar.extractfile("model.onnx").read()  # type: ignore[union-attr]
        labels = tar.extractfile("labels.txt").read()  # type: ignore[union-attr]
    assert (serving["server"]["host"], serving["server"]["port"]) == ("0.0.0.0", 8080)
    assert serving["model"]["path"] == "model.onnx" and serving["model"]["sha256"] == sha256_bytes(model)
    assert labels == b"zero\none\ntwo\n"
    assert gzip.decompress(data)[:11] == b"labels.txt\0"


def test_local_target_settings_reach_the_packed_serving_config(tmp_path: Path) -> None:
    files = emit(tmp_path, {}, targets={"local": {"workers": 3, "port": 9000}})
    with tarfile.open(fileobj=io.BytesIO(files["sagemaker/model.tar.gz"]), mode="r:gz") as tar:
        serving = json.loads(tar.extractfile("serving.json").read())  # type: ignore[union-attr]
    assert serving["server"]["workers"] == 3 and serving["server"]["port"] == 8080  # SageMaker's port wins


def test_artifact_is_keyed_by_its_hash_and_names_follow_content(tmp_path: Path) -> None:
    a = emit(tmp_path, {})
    plan = json.loads(a["sagemaker/deploy-plan.json"])
    sha = sha256_bytes(a["sagemaker/model.tar.gz"])
    assert plan["artifact"]["s3_uri"] == f"s3://deployc-models/models/digits/{sha}/model.tar.gz"
    assert cfn(a)["Resources"]["Model"]["Properties"]["PrimaryContainer"]["ModelDataUrl"] == plan["artifact"]["s3_uri"]
    assert [f"{c['service']}.{c['operation']}" for c in plan["calls"]] == [
        "s3.put_object", "sagemaker.create_model", "sagemaker.create_endpoint_config",
        "cloudwatch.put_metric_alarm", "cloudwatch.put_metric_alarm", "sagemaker.create_endpoint"]
    b = json.loads(emit(tmp_path, {}, scale=2.0)["sagemaker/deploy-plan.json"])  # a new model
    assert b["model_name"] != plan["model_name"] and b["endpoint_config_name"] != plan["endpoint_config_name"]
    assert b["endpoint_name"] == plan["endpoint_name"] == "digits"
    c = json.loads(
        emit(tmp_path, {"autoscaling": {"target_invocations_per_instance": 9}})["sagemaker/deploy-plan.json"])
    assert c["endpoint_config_name"] == plan["endpoint_config_name"]  # autoscaling is not part of the config
    d = json.loads(emit(tmp_path, {"instance_type": "ml.m5.xlarge"})["sagemaker/deploy-plan.json"])
    assert d["model_name"] == plan["model_name"] and d["endpoint_config_name"] != plan["endpoint_config_name"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_cloudformation_passes_cfn_lint(tmp_path: Path, case: str) -> None:
    from cfnlint.api import lint

    files = emit(tmp_path, CASES[case])
    text = files["sagemaker/cloudformation.yaml"].decode()
    assert text.startswith('# "Generated by deployc from deploy.yaml; do not edit.')
    matches = lint(text, regions=["us-east-1", "eu-west-1"])
    errors = [m for m in matches if m.rule.id.startswith("E")]
    assert not errors, "\n".join(str(m) for m in errors)
    assert not [m for m in matches if m.rule.id.startswith("W")], "\n".join(str(m) for m in matches)


def test_cloudformation_resources_match_the_spec(tmp_path: Path) -> None:
    res = cfn(emit(tmp_path, CASES["serverless"]))["Resources"]
    variant = res["EndpointConfig"]["Properties"]["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 4096, "MaxConcurrency": 5}
    assert "InstanceType" not in variant and "ScalableTarget" not in res

    res = cfn(emit(tmp_path, CASES["vpc-kms"]))["Resources"]
    props = res["EndpointConfig"]["Properties"]
    assert props["KmsKeyId"].endswith("key/1234abcd-12ab-34cd-56ef-1234567890ab")
    assert props["DataCaptureConfig"]["CaptureOptions"] == [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]
    assert res["Model"]["Properties"]["VpcConfig"]["Subnets"] == VPC["subnets"]
    assert res["Model"]["Properties"]["EnableNetworkIsolation"] is True
    assert {"Key": "cost-center", "Value": "42"} in res["Endpoint"]["Properties"]["Tags"]

    doc = cfn(emit(tmp_path, CASES["canary-alarms"]))
    res = doc["Resources"]
    deployment = res["Endpoint"]["Properties"]["DeploymentConfig"]
    routing = deployment["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert routing == {"Type": "CANARY", "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10},
                       "WaitIntervalInSeconds": 600}
    # only the fast-burn (page) alarm rolls an update back
    assert deployment["AutoRollbackConfiguration"] == {"Alarms": [{"AlarmName": {"Ref": "AvailabilityPageAlarm"}}]}
    assert res["AvailabilityPageAlarm"]["Properties"]["Metrics"][2]["Expression"] == "errors / total"
    assert res["LatencyTicketAlarm"]["Properties"]["ExtendedStatistic"] == "p99"
    assert res["ScalableTarget"]["Properties"]["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert doc["Parameters"]["MinInstanceCount"]["Default"] == 2
    policy = res["ScalingPolicy"]["Properties"]["TargetTrackingScalingPolicyConfiguration"]
    assert policy["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"
    assert policy["TargetValue"] == 500.0

    res = cfn(emit(tmp_path, CASES["linear"]))["Resources"]
    assert "AutoRollbackConfiguration" not in res["Endpoint"]["Properties"]["DeploymentConfig"]
    policy = res["Endpoint"]["Properties"]["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"]["LinearStepSize"] == {"Type": "CAPACITY_PERCENT", "Value": 25}
    assert policy["MaximumExecutionTimeoutInSeconds"] == 3 * 120 + 600 + 1800


def test_spec_values_cannot_change_the_template_structure(tmp_path: Path) -> None:
    evil = 'x"\nResources:\n  Evil: {Type: "AWS::S3::Bucket"}\n# '
    odd_tag = "a: b - c = d / @ +"  # YAML-significant, yet a tag value AWS accepts (a newline or quote it refuses)
    doc = cfn(emit(tmp_path, {"environment": {"NOTE": evil}, "tags": {"owner:team": odd_tag}}, alarms=None))
    assert set(doc["Resources"]) == {"Model", "EndpointConfig", "Endpoint"}
    assert doc["Resources"]["Model"]["Properties"]["PrimaryContainer"]["Environment"] == {"NOTE": evil}
    assert doc["Resources"]["Model"]["Properties"]["Tags"] == [{"Key": "owner:team", "Value": odd_tag}]
    assert "Parameters" not in doc


def test_dockerfile_runs_deployc_serve_on_the_sagemaker_model_dir(tmp_path: Path) -> None:
    text = emit(tmp_path, {})["sagemaker/Dockerfile"].decode()
    entry = [line for line in text.splitlines() if line.startswith("ENTRYPOINT ")]
    assert len(entry) == 1
    assert json.loads(entry[0].removeprefix("ENTRYPOINT ")) == [
        "/bin/sh", "-c", "exec deployc serve /opt/ml/model --host 0.0.0.0 --port 8080"]
    assert "EXPOSE 8080" in text and 'ARG DEPLOYC_REQUIREMENT="deployc[serve]==' in text
    assert [line for line in text.splitlines() if line.startswith("USER ")] == ["USER 10001:10001"]


def test_dockerfile_healthcheck_asks_the_running_server(tmp_path: Path) -> None:
    """The HEALTHCHECK command, run as Docker would (the image's python), against a real server and none."""
    import subprocess
    import sys

    from serve_support import Server

    files = emit(tmp_path, {})
    (check,) = [line for line in files["sagemaker/Dockerfile"].decode().splitlines() if line.startswith("HEALTHCHECK")]
    assert "--interval=30s" in check and "--timeout=5s" in check
    cmd = json.loads(check.split(" CMD ", 1)[1])
    assert cmd[0] == "python" and "http://127.0.0.1:8080/ping" in cmd[2]
    bundle = tmp_path / "bundle"
    with tarfile.open(fileobj=io.BytesIO(files["sagemaker/model.tar.gz"]), mode="r:gz") as tar:
        tar.extractall(bundle, filter="data")
    with Server(bundle, "--host", "127.0.0.1", "--port", "0") as server:
        probe = [sys.executable, cmd[1], cmd[2].replace(":8080/", f":{server.port}/")]
        assert subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode != 0  # nobody answers now


def test_network_isolation_is_on_unless_the_spec_turns_it_off(tmp_path: Path) -> None:
    on = cfn(emit(tmp_path, {}, alarms=None))["Resources"]["Model"]["Properties"]
    off = cfn(emit(tmp_path, {"network_isolation": False}, alarms=None))["Resources"]["Model"]["Properties"]
    assert on["EnableNetworkIsolation"] is True and off["EnableNetworkIsolation"] is False
    plan = json.loads(emit(tmp_path, {}, alarms=None)["sagemaker/deploy-plan.json"])
    (model,) = [c["parameters"] for c in plan["calls"] if c["operation"] == "create_model"]
    assert model["EnableNetworkIsolation"] is True  # `deployc deploy` makes the same model as the template


def test_names_derived_from_the_longest_spec_name_fit_sagemaker() -> None:
    """EndpointName is the spec name; model and endpoint config names add a content hash; all must match
    SageMaker's ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$ for every name the spec's pattern allows."""
    import re

    from deployc.sagemaker_plan import build_plan

    pattern = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
    for name in ("a" * 63, "a" * 49 + "-" + "b" * 13, "0-" + "9" * 61):
        spec = spec_for({"autoscaling": {"min_instances": 1, "max_instances": 2,
                                         "target_invocations_per_instance": 10}}, name=name)
        plan = build_plan(spec.targets.sagemaker, name=name, version="1", artifact_sha256="0" * 64,  # type: ignore[arg-type]
                          artifact_size=1, alarms=[])
        for key in ("endpoint_name", "model_name", "endpoint_config_name"):
            assert pattern.match(plan[key]), (key, plan[key])


@pytest.mark.parametrize(("tags", "where", "message"), [
    ({"team": "{{ owner }}"}, "team", "holds '{', '}'"),
    ({"note": "two\nlines"}, "note", "holds '\\n'"),
    ({"cost": "$100"}, "cost", "holds '$'"),
    ({"aws:owner": "me"}, "aws:owner", "starts with aws:"),
    ({"k" * 129: "x"}, "k" * 129, "has 129 characters; AWS allows 1-128"),
    ({"team": "v" * 257}, "team", "has 257 characters; AWS allows 0-256"),
])
def test_tags_aws_refuses_are_refused_at_their_key(tags: dict[str, str], where: str, message: str) -> None:
    from pydantic import ValidationError

    from deployc.schema.spec import CrossFieldErrors

    with pytest.raises(ValidationError) as info:
        spec_for({"tags": {"ok": "fine", **tags}})
    (err,) = info.value.errors()
    assert err["loc"] == ("targets", "sagemaker", "tags")
    cross = err["ctx"]["error"]
    assert isinstance(cross, CrossFieldErrors)
    ((loc, text),) = cross.problems
    assert loc == (where,) and message in text


def test_tags_in_any_script_with_spaces_and_symbols_pass() -> None:
    tags = {"Équipe": "Données et modèles", "owner:email": "ml+alerts@example.com", "a/b=c": "", "数据": "模型 1"}
    assert spec_for({"tags": tags}).targets.sagemaker.tags == tags  # type: ignore[union-attr]


@pytest.mark.parametrize("doc, message", [
    ([{"logical_id": "Endpoint", "properties": {"AlarmName": "x"}}], "logical_id must be"),
    ([{"logical_id": "A", "properties": {"AlarmName": "x"}}, {"logical_id": "A", "properties": {"AlarmName": "y"}}],
     "logical_id must be"),
    ([{"logical_id": "A", "properties": {}}], "need an AlarmName"),
])
def test_bad_alarms_are_refused(tmp_path: Path, doc: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        emit(tmp_path, {}, alarms=doc)


KEY_ID = "AKIA" + "IOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY"


@pytest.mark.parametrize("sm, loc, message", [
    ({"serverless": {}, "instance_type": "ml.m5.large"}, "serverless", "serverless and instance_type are exclusive"),
    ({"serverless": {}, "autoscaling": {"target_invocations_per_instance": 5}}, "autoscaling", "needs instances"),
    ({"instance_type": "ml.m5.larg"}, "instance_type", "did you mean ml.m5.large"),
    ({"instance_type": "m5.large"}, "instance_type", "not a SageMaker inference instance type"),
    ({"rollout": {"strategy": "canary"}}, "rollout", "canary needs canary_percent"),
    ({"rollout": {"strategy": "linear"}}, "rollout", "linear needs linear_step_percent"),
    ({"rollout": {"strategy": "linear", "linear_step_percent": 1, "wait_s": 3600}}, "rollout", "limit"),
    ({"rollout": {"canary_percent": 5}}, "rollout", "only applies to strategy canary"),
    ({"environment": {"AWS_ACCESS_KEY_ID": KEY_ID}}, "environment", "access key id"),
    ({"environment": {"AWS_SECRET_ACCESS_KEY": SECRET}}, "environment", "secret access key"),
    ({"environment": {"BOTO": f"aws_secret_access_key={SECRET}"}}, "environment", "secret access key"),
    ({"tags": {"creds": f"id {KEY_ID}"}}, "tags", "access key id"),
    ({"tags": {"aws:owner": "me"}}, "tags", "aws:"),
    ({"environment": {"BAD-NAME": "1"}}, "environment", "environment variable name"),
    ({"region": "us-east"}, "region", "pattern"),
    ({"role_arn": "arn:aws:iam::123:role/x"}, "role_arn", "pattern"),
    ({"s3_prefix": "https://bucket/x"}, "s3_prefix", "pattern"),
    ({"image_uri": "deployc serve:latest"}, "image_uri", "pattern"),
    ({"vpc": {"subnets": ["subnet-xyz"], "security_groups": ["sg-0123abcd"]}}, "vpc.subnets", "subnet id"),
    ({"autoscaling": {"min_instances": 2, "max_instances": 3, "target_invocations_per_instance": 1},
      "initial_instance_count": 5}, "autoscaling", "outside min_instances..max_instances"),
])
def test_bad_sagemaker_specs_are_refused_at_the_field(sm: dict[str, Any], loc: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        spec_for(sm)
    errors = info.value.errors()
    assert len(errors) == 1, errors
    assert ".".join(map(str, errors[0]["loc"])).startswith(f"targets.sagemaker.{loc}")
    assert message in errors[0]["msg"]


def test_good_specs_resolve_defaults() -> None:
    cfg = spec_for({}).targets.sagemaker
    assert cfg is not None and (cfg.resolved_instance_type(), cfg.resolved_instance_count()) == ("ml.c6i.large", 1)
    cfg = spec_for({"autoscaling": {"min_instances": 3, "max_instances": 5,
                                    "target_invocations_per_instance": 1}}).targets.sagemaker
    assert cfg is not None and cfg.resolved_instance_count() == 3
    cfg = spec_for({"serverless": {}, "region": "cn-north-1",
                    "role_arn": "arn:aws-cn:iam::123456789012:role/x"}).targets.sagemaker
    assert cfg is not None and cfg.resolved_instance_type() is None
    # look-alikes that are not credentials stay accepted
    spec_for({"environment": {"SECRET_NAME": "prod/digits/db", "MODEL_ID": "AKIAlowercase"}})
