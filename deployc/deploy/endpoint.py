"""Creating or updating the endpoint: the one step that moves traffic, and the one that must fail safely.

An update is blue/green: SageMaker brings up the new config beside the old one and shifts traffic per the plan's
DeploymentConfig, rolling back on the plan's alarms. If it fails, the endpoint keeps serving the old config,
which deployc never deletes.
"""
from __future__ import annotations

from typing import Any

from deployc.deploy.aws import aws_errors, describe_message, is_not_found
from deployc.deploy.run import SETTLED, DeployRun
from deployc.errors import DeployError
from deployc.sagemaker_plan import SCALABLE_DIMENSION, scaling_resource_id


def update_or_create(run: DeployRun, p: dict[str, Any]) -> None:
    name, config = p["EndpointName"], p["EndpointConfigName"]
    sm = run.client("sagemaker")
    try:
        current = sm.describe_endpoint(EndpointName=name)
    except aws_errors() as exc:
        if not is_not_found(exc):
            raise
        sm.create_endpoint(**p)
        run.log(f"creating endpoint {name} on {config}; waiting for InService (up to {run.wait_timeout_s:g}s)")
        _check_result(run, run.wait_settled(name), config, created=True)
        return run.done("applied", f"created endpoint {name} on {config}")

    if current["EndpointStatus"] not in SETTLED:
        run.log(f"endpoint {name} is {current['EndpointStatus']}; waiting for it to settle first")
        current = run.wait_settled(name)
    if current["EndpointStatus"] == "Failed":
        raise DeployError(f"endpoint {name} is Failed ({current.get('FailureReason', 'no reason given')}) and "
                          "cannot be updated: delete it (aws sagemaker delete-endpoint) and deploy again")
    if current["EndpointConfigName"] == config:
        return run.done("unchanged", f"endpoint {name} already runs {config}")

    previous = current["EndpointConfigName"]
    kwargs: dict[str, Any] = {"EndpointName": name, "EndpointConfigName": config}
    if "DeploymentConfig" in p:
        kwargs["DeploymentConfig"] = p["DeploymentConfig"]
    restore = _prepare_autoscaling(run, name, previous, config, kwargs)
    try:
        sm.update_endpoint(**kwargs)
        run.log(f"updating endpoint {name}: {previous} -> {config}; waiting (up to {run.wait_timeout_s:g}s)")
        _check_result(run, run.wait_settled(name), config, created=False)
    except (DeployError,) + aws_errors():
        if restore:
            _restore_autoscaling(run)
        raise
    run.done("applied", f"updated endpoint {name}: {previous} -> {config}")


def _check_result(run: DeployRun, d: dict[str, Any], config: str, *, created: bool) -> None:
    name = d.get("EndpointName", run.plan["endpoint_name"])
    if d["EndpointStatus"] != "InService":
        raise DeployError(f"endpoint {name} is {d['EndpointStatus']}: {d.get('FailureReason', 'no reason given')}"
                          + ("" if created else f"; it stays on {d.get('EndpointConfigName')}"))
    if d["EndpointConfigName"] != config:
        raise DeployError(f"the update of endpoint {name} to {config} was rolled back "
                          f"({d.get('FailureReason') or 'an alarm fired or the new fleet failed its health checks'}); "
                          f"it serves the last good config {d['EndpointConfigName']}")


def _prepare_autoscaling(run: DeployRun, name: str, previous: str, config: str, kwargs: dict[str, Any]) -> bool:
    """Autoscaling rules for updates: keep the scaled instance count, and deregister for an instance-type change.

    Returns whether a scalable target was deregistered (and must come back if the update fails).
    """
    aas = run.client("application-autoscaling")
    rid = scaling_resource_id(name)
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid],
                                            ScalableDimension=SCALABLE_DIMENSION)["ScalableTargets"]
    if not targets:
        return False
    sm = run.client("sagemaker")
    old_type = _instance_type(sm.describe_endpoint_config(EndpointConfigName=previous))
    new_type = _instance_type(sm.describe_endpoint_config(EndpointConfigName=config))
    if old_type == new_type:
        # keep the instance count autoscaling chose, but apply the new config's data capture settings
        kwargs["RetainAllVariantProperties"] = True
        kwargs["ExcludeRetainedVariantProperties"] = [{"VariantPropertyType": "DataCaptureConfig"}]
        return False
    # SageMaker refuses to change the instance type of a registered variant: deregister, re-register after
    for policy in aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid,
                                                ScalableDimension=SCALABLE_DIMENSION)["ScalingPolicies"]:
        aas.delete_scaling_policy(PolicyName=policy["PolicyName"], ServiceNamespace="sagemaker", ResourceId=rid,
                                  ScalableDimension=SCALABLE_DIMENSION)
    aas.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=SCALABLE_DIMENSION)
    run.log(f"deregistered autoscaling of {rid} for the instance type change {old_type} -> {new_type}")
    return True


def _restore_autoscaling(run: DeployRun) -> None:
    """After a failed update that had deregistered autoscaling: register the plan's target and policy again."""
    aas = run.client("application-autoscaling")
    try:
        for op in ("register_scalable_target", "put_scaling_policy"):
            if op in run.calls:
                getattr(aas, op)(**run.calls[op])
        run.log("autoscaling registered again on the old fleet")
    except aws_errors() as exc:
        run.log(f"could not register autoscaling again ({describe_message(exc)}): run deployc deploy again")


def _instance_type(config: dict[str, Any]) -> str | None:
    variants = config.get("ProductionVariants") or [{}]
    return variants[0].get("InstanceType")
