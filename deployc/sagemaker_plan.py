"""The SageMaker deploy plan: the exact boto3 calls `deployc deploy` makes, computed at build time.

The sagemaker target writes it as `sagemaker/deploy-plan.json` and renders the CloudFormation template from the
same pieces, so the template and the boto3 deploy always describe the same resources; `deployc.deploy` reads it
back. Pure data, no boto3 here: both sides import this module, neither imports the other.
"""
from __future__ import annotations

import base64
import hashlib
import json
from typing import TYPE_CHECKING, Any

from deployc import conventions as c
from deployc.schema.envref import EnvRef

if TYPE_CHECKING:  # the config model's module imports this one; `deployc.deploy` imports no target module
    from deployc.schema.capture import Capture
    from deployc.targets.sagemaker import SageMakerConfig

PLAN_FORMAT_VERSION = 1
ARTIFACT_FILE = f"{c.SAGEMAKER_DIR}/model.tar.gz"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SCALING_METRIC = "SageMakerVariantInvocationsPerInstance"
PROVISIONING_S = 1800  # time allowed for the new fleet to start, on top of the traffic-shift waits
MAX_ROLLBACK_ALARMS = 10  # AutoRollbackConfiguration.Alarms holds at most 10
_NAME_STEM = 50  # 50 + "-" + 12 hex digits = 63, SageMaker's name limit


def content_name(name: str, params: dict[str, Any]) -> str:
    """`<name>-<12 hex>` from the parameters that define an immutable resource: a change gets a new name."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return f"{name[:_NAME_STEM].rstrip('-')}-{digest}"


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key.strip("/")


def artifact_location(cfg: SageMakerConfig, name: str, sha256: str) -> tuple[str, str]:
    """(bucket, key) of model.tar.gz: keyed by its hash, so an identical build uploads nothing."""
    bucket, prefix = split_s3_uri(cfg.s3_prefix)
    return bucket, "/".join(p for p in (prefix, name, sha256, "model.tar.gz") if p)


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def plan_environment(cfg: SageMakerConfig) -> dict[str, Any]:
    """The container environment as plan data: an !ENV value stays a reference (`{"$env": NAME}`), so the model
    name, derived from these parameters, depends on the variable's name and never on its value."""
    return {k: (v.to_plan() if isinstance(v, EnvRef) else v) for k, v in sorted(cfg.environment.items())}


def rollback_alarm_ids(alarms: list[dict[str, Any]]) -> list[str]:
    """Logical ids of the alarms that roll an update back: the fast-burn (page) tier.

    Slow-burn alarms look at days of traffic, so they say nothing about a rollout of minutes and may already be
    firing when it starts.
    """
    return [a["logical_id"] for a in alarms if "Page" in a["logical_id"]][:MAX_ROLLBACK_ALARMS]


def deployment_config(cfg: SageMakerConfig, rollback_alarm_names: list[str]) -> dict[str, Any]:
    r = cfg.rollout
    routing: dict[str, Any] = {"Type": r.strategy.upper().replace("-", "_"), "WaitIntervalInSeconds": r.wait_s}
    if r.strategy == "canary":
        routing["CanarySize"] = {"Type": "CAPACITY_PERCENT", "Value": r.canary_percent}
    elif r.strategy == "linear":
        routing["LinearStepSize"] = {"Type": "CAPACITY_PERCENT", "Value": r.linear_step_percent}
    timeout = max(600, r.shift_wait_s() + r.termination_wait_s + PROVISIONING_S)
    out: dict[str, Any] = {"BlueGreenUpdatePolicy": {
        "TrafficRoutingConfiguration": routing,
        "TerminationWaitInSeconds": r.termination_wait_s,
        "MaximumExecutionTimeoutInSeconds": timeout,
    }}
    if r.rollback_on_alarms and rollback_alarm_names:
        out["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": n} for n in rollback_alarm_names]}
    return out


def build_plan(cfg: SageMakerConfig, *, name: str, version: str, artifact_sha256: str, artifact_size: int,
               alarms: list[dict[str, Any]], capture: Capture | None = None) -> dict[str, Any]:
    """The whole plan: names, the artifact's S3 location and the ordered calls. `capture`: the spec's
    `monitoring.capture` when it is on (validation has made sure it masks nothing and names its S3 place)."""
    bucket, key = artifact_location(cfg, name, artifact_sha256)
    model_data_url = f"s3://{bucket}/{key}"
    tags = {"Tags": tag_list(cfg.tags)} if cfg.tags else {}
    model = _model_params(cfg, name, model_data_url, tags)
    endpoint_config = _endpoint_config_params(cfg, name, model["ModelName"], tags, capture)
    names = {a["logical_id"]: a["properties"]["AlarmName"] for a in alarms}
    rollback = [names[i] for i in rollback_alarm_ids(alarms)]
    calls: list[dict[str, Any]] = [
        _call("s3", "put_object", "absent", {
            "Bucket": bucket, "Key": key, "Body": {"file": ARTIFACT_FILE}, "ContentType": "application/gzip",
            "ChecksumSHA256": base64.b64encode(bytes.fromhex(artifact_sha256)).decode(),
            "Metadata": {"sha256": artifact_sha256}}),
        _call("sagemaker", "create_model", "absent", model),
        _call("sagemaker", "create_endpoint_config", "absent", endpoint_config),
    ]
    # Alarms before the endpoint: an update's auto-rollback watches them from its first traffic shift.
    for a in alarms:
        calls.append(_call("cloudwatch", "put_metric_alarm", "changed", {**a["properties"], **tags}))
    calls.append(_call("sagemaker", "create_endpoint", "absent-or-other-config", {
        "EndpointName": name, "EndpointConfigName": endpoint_config["EndpointConfigName"],
        "DeploymentConfig": deployment_config(cfg, rollback), **tags}))
    calls += _autoscaling_calls(cfg, name)
    return {
        "format_version": PLAN_FORMAT_VERSION,
        "name": name,
        "version": version,
        "region": cfg.region,
        "endpoint_name": name,
        "variant_name": c.SAGEMAKER_VARIANT_NAME,
        "model_name": model["ModelName"],
        "endpoint_config_name": endpoint_config["EndpointConfigName"],
        "artifact": {"file": ARTIFACT_FILE, "sha256": artifact_sha256, "size": artifact_size,
                     "s3_uri": model_data_url},
        "calls": calls,
    }


def _model_params(cfg: SageMakerConfig, name: str, model_data_url: str, tags: dict[str, Any]) -> dict[str, Any]:
    """create_model's parameters; the model name is the content name of everything but the tags."""
    model: dict[str, Any] = {
        "ExecutionRoleArn": cfg.role_arn,
        "PrimaryContainer": {"Image": cfg.image_uri, "ModelDataUrl": model_data_url,
                             "Environment": plan_environment(cfg)},
        "EnableNetworkIsolation": cfg.network_isolation,
    }
    if cfg.vpc:
        model["VpcConfig"] = {"SecurityGroupIds": list(cfg.vpc.security_groups), "Subnets": list(cfg.vpc.subnets)}
    return {"ModelName": content_name(name, model), **model, **tags}


def _variant(cfg: SageMakerConfig, model_name: str) -> dict[str, Any]:
    """The one production variant: serverless, or instances of the resolved type and count."""
    variant: dict[str, Any] = {"VariantName": c.SAGEMAKER_VARIANT_NAME, "ModelName": model_name,
                               "InitialVariantWeight": 1.0}
    if cfg.serverless:
        variant["ServerlessConfig"] = {"MemorySizeInMB": cfg.serverless.memory_mb,
                                       "MaxConcurrency": cfg.serverless.max_concurrency}
    else:
        variant["InstanceType"] = cfg.resolved_instance_type()
        variant["InitialInstanceCount"] = cfg.resolved_instance_count()
    return variant


def data_capture_config(cfg: SageMakerConfig, capture: Capture) -> dict[str, Any]:
    """`monitoring.capture` as SageMaker's DataCaptureConfig: whole requests (Input) and responses (Output) at a
    whole-percent sampling rate, encrypted with the capture's KMS key (else the target's)."""
    assert capture.s3 is not None, "validation requires monitoring.capture.s3 with targets.sagemaker"
    modes = [m for m, names in (("Input", capture.inputs), ("Output", capture.outputs)) if names != []]
    out: dict[str, Any] = {"EnableCapture": True, "InitialSamplingPercentage": int(capture.sampling_percent),
                           "DestinationS3Uri": capture.s3.destination,
                           "CaptureOptions": [{"CaptureMode": m} for m in modes]}
    kms = capture.s3.kms_key or cfg.kms_key
    if kms:
        out["KmsKeyId"] = kms
    return out


def _endpoint_config_params(cfg: SageMakerConfig, name: str, model_name: str, tags: dict[str, Any],
                            capture: Capture | None = None) -> dict[str, Any]:
    """create_endpoint_config's parameters; named, like the model, by the content name of the rest."""
    endpoint_config: dict[str, Any] = {"ProductionVariants": [_variant(cfg, model_name)]}
    if cfg.kms_key:
        endpoint_config["KmsKeyId"] = cfg.kms_key
    if capture is not None:
        endpoint_config["DataCaptureConfig"] = data_capture_config(cfg, capture)
    elif cfg.data_capture:
        dc = cfg.data_capture
        raw: dict[str, Any] = {"EnableCapture": True, "InitialSamplingPercentage": dc.sampling_percent,
                               "DestinationS3Uri": dc.destination,
                               "CaptureOptions": [{"CaptureMode": m} for m in dc.capture]}
        if cfg.kms_key:
            raw["KmsKeyId"] = cfg.kms_key
        endpoint_config["DataCaptureConfig"] = raw
    return {"EndpointConfigName": content_name(name, endpoint_config), **endpoint_config, **tags}


def _autoscaling_calls(cfg: SageMakerConfig, name: str) -> list[dict[str, Any]]:
    """Target tracking on invocations per instance, registered after the endpoint exists; none without it."""
    if not cfg.autoscaling:
        return []
    scaling = cfg.autoscaling
    target = {"ServiceNamespace": "sagemaker", "ResourceId": scaling_resource_id(name),
              "ScalableDimension": SCALABLE_DIMENSION}
    return [
        _call("application-autoscaling", "register_scalable_target", "changed", {
            **target, "MinCapacity": scaling.min_instances, "MaxCapacity": scaling.max_instances}),
        _call("application-autoscaling", "put_scaling_policy", "changed", {
            "PolicyName": f"{name}-invocations-per-instance", **target, "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "TargetValue": float(scaling.target_invocations_per_instance),
                "PredefinedMetricSpecification": {"PredefinedMetricType": SCALING_METRIC},
                "ScaleInCooldown": scaling.scale_in_cooldown_s, "ScaleOutCooldown": scaling.scale_out_cooldown_s}}),
    ]


def scaling_resource_id(endpoint_name: str) -> str:
    return f"endpoint/{endpoint_name}/variant/{c.SAGEMAKER_VARIANT_NAME}"


def _call(service: str, operation: str, when: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """One boto3 call. `when`: absent (skip if the resource exists), changed (skip if it already matches),
    absent-or-other-config (create_endpoint, or update_endpoint when the endpoint runs another config)."""
    return {"service": service, "operation": operation, "when": when, "parameters": parameters}
