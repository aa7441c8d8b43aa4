"""`deployc deploy --target sagemaker`: run a bundle's deploy-plan.json against AWS, idempotently.

Reads the built bundle only (never the spec): the manifest is verified first, so a bundle edited after the build
is refused; with a public key (or when a signature is required) the build's signature is verified too, before any
AWS call. Every run, refused and failed ones included, appends one line to the audit log (deployc.audit).
Models and endpoint configs are immutable and named by content hash: they are created when absent and never
deleted, so the endpoint always has its last good config to stay on (SageMaker rolls a failed update back to it).
A second run of the same bundle finds every resource in place and changes nothing.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from deployc import conventions as c
from deployc import signing
from deployc.audit import AuditLog, actor, build_identity, default_path, utc_now
from deployc.deploy.aws import (
    ClientFactory,
    aws_errors,
    client_factory,
    describe_message,
    is_not_found,
    same,
)
from deployc.deploy.endpoint import update_or_create
from deployc.deploy.envrefs import redact, references, resolve
from deployc.deploy.run import DeployRun
from deployc.errors import DeploycError, DeployError, InputError
from deployc.sagemaker_plan import PLAN_FORMAT_VERSION

PLAN_FILE = f"{c.SAGEMAKER_DIR}/deploy-plan.json"


def load_plan(build_dir: Path) -> dict[str, Any]:
    """The verified bundle's deploy plan (InputError when the bundle is modified or has no sagemaker target)."""
    signing.check_manifest(build_dir)
    path = build_dir / PLAN_FILE
    if not path.is_file():
        raise InputError(f"{build_dir}: no {PLAN_FILE}; the spec has no targets.sagemaker")
    plan = json.loads(path.read_text())
    if plan.get("format_version") != PLAN_FORMAT_VERSION:
        raise InputError(f"{path}: format_version {plan.get('format_version')!r}, this deployc reads "
                         f"{PLAN_FORMAT_VERSION}; rebuild the bundle")
    return plan


def deploy(build_dir: Path, *, dry_run: bool = False, endpoint_url: str | None = None,
           wait_timeout_s: float = 1800, log: Callable[[str], Any] = print,
           clients: ClientFactory | None = None, poll_s: float = 15.0,
           environ: Mapping[str, str] | None = None, verify_key: str | None = None,
           require_signature: bool = False, audit_log: Path | None = None) -> dict[str, Any]:
    """Deploy the bundle in `build_dir`; returns what was done (`changed`, `actions`) and the resource names.

    !ENV references are read from `environ` (default: this process's environment). `verify_key` (default
    $DEPLOYC_VERIFY_KEY): the build's signature must verify with it; `require_signature` (or
    $DEPLOYC_REQUIRE_SIGNATURE=1): refuse a bundle without a verified signature. One line is appended to
    `audit_log` (default deployc.audit.default_path). Raises InputError for a bad, tampered or unsigned bundle or
    a missing variable (no AWS call made), DeployError when AWS fails (the endpoint stays on its last good config).
    """
    build_dir = Path(build_dir)
    environ = os.environ if environ is None else environ
    with AuditLog(audit_log or default_path(environ)) as audit:
        record: dict[str, Any] = {"time": utc_now(), "action": "deploy", "target": "sagemaker", "dry_run": dry_run,
                                  "actor": actor(environ), "build": build_identity(build_dir)}
        try:
            key = signing.verify_key(verify_key, environ)
            required = require_signature or signing.required_by_env(environ)
            signature = signing.check_provenance(build_dir, key, required)
            record["build"]["signature"] = signature
            if signature["verified"]:
                log(f"signature verified: {build_dir} signed with key sha256 {signature['key_sha256'][:16]}...")
            plan = load_plan(build_dir)
            record["endpoint"] = {"name": plan["endpoint_name"], "config": plan["endpoint_config_name"],
                                  "model": plan["model_name"], "region": plan["region"],
                                  "model_data_url": plan["artifact"]["s3_uri"]}
            result = _deploy(build_dir, plan, dry_run=dry_run, endpoint_url=endpoint_url,
                             wait_timeout_s=wait_timeout_s, log=log, clients=clients, poll_s=poll_s,
                             environ=environ, record=record)
        except DeploycError as exc:
            record.update(finished=utc_now(), result="failed" if isinstance(exc, DeployError) else "refused",
                          error=" ".join(exc.lines()))
            audit.append(record)
            raise
        except BaseException as exc:
            record.update(finished=utc_now(), result="error", error=type(exc).__name__)
            audit.append(record)
            raise
        record.update(finished=utc_now(), result="ok", changed=result["changed"],
                      changes=[a for a in result["actions"] if a["status"] == "applied"])
        audit.append(record)
        return result


def _deploy(build_dir: Path, plan: dict[str, Any], *, dry_run: bool, endpoint_url: str | None,
            wait_timeout_s: float, log: Callable[[str], Any], clients: ClientFactory | None, poll_s: float,
            environ: Mapping[str, str], record: dict[str, Any]) -> dict[str, Any]:
    if dry_run:  # the plan as built: references print as {"$env": NAME}, never as values
        for call in plan["calls"]:
            log(f"would call {call['service']}.{call['operation']} ({call['when']}): "
                f"{json.dumps(call['parameters'], sort_keys=True)}")
        for key, var in sorted(references(plan).items()):
            state = "set" if environ.get(var) else "NOT SET: a deploy stops"
            log(f"environment {key} would come from ${var} ({state})")
        log(f"dry run: nothing was called; endpoint {plan['endpoint_name']} would run {plan['endpoint_config_name']}")
        return _result(plan, dry_run=True, actions=[])
    resolved, secrets = resolve(plan, environ)  # before any client exists: a missing variable calls nothing
    factory = clients or client_factory(plan["region"], endpoint_url)
    # a caller that brings its own clients (an embedding, the tests' recorders) is not sent an extra STS call
    record["actor"]["aws"] = caller_identity(factory) if clients is None else {"looked_up": False}
    runner = _Runner(resolved, build_dir, factory, log, wait_timeout_s, poll_s, references(plan))
    try:
        runner.run()
    except DeployError as exc:
        record["changes_before_failure"] = [a for a in runner.actions if a["status"] == "applied"]
        if secrets and redact(str(exc), secrets) != str(exc):
            raise DeployError(redact(str(exc), secrets)) from None
        raise
    except aws_errors() as exc:
        record["changes_before_failure"] = [a for a in runner.actions if a["status"] == "applied"]
        message = redact(describe_message(exc), secrets)
        raise DeployError(f"{runner.current}: {message}. {runner.endpoint_state()}") from None
    changed = any(a["status"] == "applied" for a in runner.actions)
    log(f"endpoint {plan['endpoint_name']} runs {plan['endpoint_config_name']}: "
        + ("deployed" if changed else "already up to date, nothing changed"))
    return _result(plan, dry_run=False, actions=runner.actions)


def caller_identity(clients: ClientFactory) -> dict[str, Any]:
    """Who AWS says the deploy runs as (sts:GetCallerIdentity needs no permission); an error is recorded, not
    raised: the deploy's own calls report missing credentials better."""
    try:
        found = clients("sts").get_caller_identity()
    except aws_errors() as exc:
        return {"error": describe_message(exc)}
    return {"arn": found.get("Arn"), "account": found.get("Account"), "user_id": found.get("UserId")}


def _result(plan: dict[str, Any], *, dry_run: bool, actions: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "changed": any(a["status"] == "applied" for a in actions),
        "endpoint_name": plan["endpoint_name"],
        "endpoint_config_name": plan["endpoint_config_name"],
        "model_name": plan["model_name"],
        "model_data_url": plan["artifact"]["s3_uri"],
        "region": plan["region"],
        "actions": actions,
        "planned": [f"{call['service']}.{call['operation']}" for call in plan["calls"]],
    }


class _Runner(DeployRun):
    """Executes the plan's calls in order; each checks the current state first and skips what is in place."""

    def run(self) -> None:
        for call in self.plan["calls"]:
            self.current = f"{call['service']}.{call['operation']}"
            handler = getattr(self, f"_{call['operation']}")
            handler(call["parameters"])

    # --- immutable resources: created when absent -----------------------------------------------------------
    def _put_object(self, p: dict[str, Any]) -> None:
        s3, art = self.client("s3"), self.plan["artifact"]
        try:
            head = s3.head_object(Bucket=p["Bucket"], Key=p["Key"])
        except aws_errors() as exc:
            if not is_not_found(exc):
                raise
        else:
            if head.get("ContentLength") != art["size"]:
                raise DeployError(f"{art['s3_uri']} exists with {head.get('ContentLength')} bytes, not the "
                                  f"build's {art['size']}: something else wrote to deployc's key; remove it")
            return self.done("unchanged", f"{art['s3_uri']} already uploaded")
        body = (self.build_dir / p["Body"]["file"]).read_bytes()
        s3.put_object(**{**p, "Body": body})
        self.done("applied", f"uploaded {art['s3_uri']} ({len(body)} bytes)")

    def _create_model(self, p: dict[str, Any]) -> None:
        sm, name = self.client("sagemaker"), p["ModelName"]
        try:
            found = sm.describe_model(ModelName=name)
        except aws_errors() as exc:
            if not is_not_found(exc):
                raise
            sm.create_model(**p)
            return self.done("applied", f"created model {name}")
        # The name follows the references, not their values: a rotated value meets the model made with the old one.
        deployed = (found.get("PrimaryContainer") or {}).get("Environment") or {}
        wanted = p["PrimaryContainer"]["Environment"]
        stale = [f"{k} (${var})" for k, var in sorted(self.env_refs.items()) if deployed.get(k) != wanted[k]]
        if stale:
            self.log(f"warning: model {name} holds other values for {', '.join(stale)} than this environment; "
                     "models are immutable, so the new values are NOT deployed (docs/sagemaker.md, "
                     "'Rotating a referenced value')")
        self.done("unchanged", f"model {name} exists" + (f"; new values of {', '.join(stale)} not deployed"
                                                          if stale else ""))

    def _create_endpoint_config(self, p: dict[str, Any]) -> None:
        name = p["EndpointConfigName"]
        self._create_absent("endpoint config", name, lambda: self.client("sagemaker").describe_endpoint_config(
            EndpointConfigName=name), lambda: self.client("sagemaker").create_endpoint_config(**p))

    def _create_absent(self, what: str, name: str, describe: Callable[[], Any], create: Callable[[], Any]) -> None:
        try:
            describe()
        except aws_errors() as exc:
            if not is_not_found(exc):
                raise
            create()
            return self.done("applied", f"created {what} {name}")
        self.done("unchanged", f"{what} {name} exists")

    # --- mutable settings: written when they differ ---------------------------------------------------------
    def _put_metric_alarm(self, p: dict[str, Any]) -> None:
        cw = self.client("cloudwatch")
        found = cw.describe_alarms(AlarmNames=[p["AlarmName"]], AlarmTypes=["MetricAlarm"])["MetricAlarms"]
        wanted = {k: v for k, v in p.items() if k != "Tags"}
        if found and same(wanted, found[0]):
            return self.done("unchanged", f"alarm {p['AlarmName']} is up to date")
        cw.put_metric_alarm(**p)
        self.done("applied", f"{'updated' if found else 'created'} alarm {p['AlarmName']}")

    def _register_scalable_target(self, p: dict[str, Any]) -> None:
        aas = self.client("application-autoscaling")
        found = aas.describe_scalable_targets(ServiceNamespace=p["ServiceNamespace"], ResourceIds=[p["ResourceId"]],
                                              ScalableDimension=p["ScalableDimension"])["ScalableTargets"]
        if found and same(p, found[0]):
            return self.done("unchanged", f"scalable target {p['ResourceId']} is up to date")
        aas.register_scalable_target(**p)
        self.done("applied", f"registered {p['ResourceId']} ({p['MinCapacity']}..{p['MaxCapacity']} instances)")

    def _put_scaling_policy(self, p: dict[str, Any]) -> None:
        aas = self.client("application-autoscaling")
        found = aas.describe_scaling_policies(
            ServiceNamespace=p["ServiceNamespace"], ResourceId=p["ResourceId"],
            ScalableDimension=p["ScalableDimension"], PolicyNames=[p["PolicyName"]])["ScalingPolicies"]
        if found and same(p, found[0]):
            return self.done("unchanged", f"scaling policy {p['PolicyName']} is up to date")
        aas.put_scaling_policy(**p)
        self.done("applied", f"put scaling policy {p['PolicyName']}")

    # --- the endpoint ------------------------------------------------------------------------------------------
    def _create_endpoint(self, p: dict[str, Any]) -> None:
        update_or_create(self, p)
