"""`targets.sagemaker`: model.tar.gz, a CloudFormation template, the serving image's Dockerfile, a deploy plan,
and (with SLOs) the CloudWatch alarms that the template, the plan and `deployc deploy` create.

The plan (`deploy-plan.json`) and the template come from the same dicts (`deployc.sagemaker_plan`), so a stack
made from the template and an endpoint made by `deployc deploy` are the same resources.
"""
from __future__ import annotations

import gzip
import io
import re
import tarfile
from typing import Any

from deployc import __version__
from deployc import conventions as c
from deployc.errors import InputError
from deployc.manifest import sha256_bytes
from deployc.render import dump_json, render_template, render_yaml
from deployc.sagemaker_plan import build_plan, rollback_alarm_ids
from deployc.schema.envref import ENV_KEY, is_env_ref, parameter_names
from deployc.schema.sagemaker import SageMakerTarget as SageMakerConfig
from deployc.targets.base import EmitContext, Target
from deployc.targets.bundle import local_config, serving_files
from deployc.targets.common import BASE_IMAGE, BASE_TAG, SERVING_UID, healthcheck

MODEL_DIR = "/opt/ml/model"  # where SageMaker unpacks ModelDataUrl
ALARMS_FILE = c.CLOUDWATCH_ALARMS
_LOGICAL_ID = re.compile(r"^[A-Za-z0-9]{1,255}$")
_RESERVED_IDS = {"Model", "EndpointConfig", "Endpoint", "ScalableTarget", "ScalingPolicy"}
_ALARM_KEYS_OWNED_HERE = {"ActionsEnabled", "Tags"}  # set by the template/plan, not by the alarms document


def model_tarball(files: dict[str, bytes]) -> bytes:
    """A byte-for-byte reproducible .tar.gz: sorted members, no times, owners or modes from this machine.

    S3 keys and resource names carry its sha256, so an unchanged build must give the same bytes.
    """
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(files[name]))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def read_alarms(ctx: EmitContext) -> list[dict[str, Any]]:
    """The CloudWatch alarms of the build's SLOs (none without SLOs), from the monitoring model, checked."""
    if ctx.monitoring is None:
        return []
    return checked_alarms(ctx.monitoring.alarms(ctx.spec.name, c.SAGEMAKER_VARIANT_NAME))


def checked_alarms(alarms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each alarm with a unique logical id that is no resource of the template, and an AlarmName."""
    seen: set[str] = set()
    out = []
    for i, a in enumerate(alarms):
        lid = a.get("logical_id") if isinstance(a, dict) else None
        props = a.get("properties") if isinstance(a, dict) else None
        if not isinstance(lid, str) or not _LOGICAL_ID.match(lid) or lid in _RESERVED_IDS or lid in seen:
            raise InputError(f"{ALARMS_FILE}[{i}]: logical_id must be a unique alphanumeric name, not {lid!r}")
        if not isinstance(props, dict) or not isinstance(props.get("AlarmName"), str):
            raise InputError(f"{ALARMS_FILE}[{i}] ({lid}): properties need an AlarmName")
        seen.add(lid)
        out.append({"logical_id": lid,
                    "properties": {k: v for k, v in props.items() if k not in _ALARM_KEYS_OWNED_HERE}})
    return out


class SageMakerTarget(Target):
    name = "sagemaker"
    config_model = SageMakerConfig
    description = "A SageMaker endpoint."
    serves = True

    def emit(self, ctx: EmitContext) -> dict[str, bytes]:
        cfg: SageMakerConfig = self.config(ctx.spec)
        spec = ctx.spec
        local_cfg = local_config(spec)
        tarball = model_tarball(serving_files(ctx, local_cfg, host="0.0.0.0", port=c.SAGEMAKER_PORT))
        alarms = read_alarms(ctx)
        plan = build_plan(cfg, name=spec.name, version=spec.version, artifact_sha256=sha256_bytes(tarball),
                          artifact_size=len(tarball), alarms=alarms)
        header = c.GENERATED_HEADER.format(spec=ctx.spec_file)
        files = {} if ctx.monitoring is None else {
            ALARMS_FILE: ctx.monitoring.alarms_document(spec.name, c.SAGEMAKER_VARIANT_NAME)}
        return files | {
            f"{c.SAGEMAKER_DIR}/model.tar.gz": tarball,
            f"{c.SAGEMAKER_DIR}/deploy-plan.json": dump_json(plan),
            f"{c.SAGEMAKER_DIR}/cloudformation.yaml": cloudformation(plan, alarms, cfg, header=header,
                                                                      description=_description(spec)),
            f"{c.SAGEMAKER_DIR}/Dockerfile": dockerfile(spec.name, spec.version, header=header).encode(),
        }


def cloudformation(plan: dict[str, Any], alarms: list[dict[str, Any]], cfg: SageMakerConfig, *, header: str,
                   description: str) -> bytes:
    calls = {call["operation"]: call["parameters"] for call in plan["calls"]}
    environment, env_parameters = template_environment(calls["create_model"]["PrimaryContainer"]["Environment"],
                                                       taken=[a["logical_id"] for a in alarms])
    model = {**calls["create_model"],
             "PrimaryContainer": {**calls["create_model"]["PrimaryContainer"], "Environment": environment}}
    text, parsed = render_yaml(
        "sagemaker", "cloudformation.yaml.j2",
        header=header,
        description=description,
        model=model,
        env_parameters=env_parameters,
        endpoint_config=calls["create_endpoint_config"],
        endpoint=calls["create_endpoint"],
        alarms=alarms,
        rollback_ids=rollback_alarm_ids(alarms) if cfg.rollout.rollback_on_alarms else [],
        autoscaling=calls.get("register_scalable_target"),
        policy=calls.get("put_scaling_policy"),
        variant_suffix=f"/variant/{c.SAGEMAKER_VARIANT_NAME}",
        tags=[{"Key": k, "Value": v} for k, v in sorted(cfg.tags.items())],
    )
    if not isinstance(parsed, dict) or "Model" not in parsed.get("Resources", {}):
        raise InputError("templates/sagemaker/cloudformation.yaml.j2 rendered no Resources")
    return text.encode()


def template_environment(environment: dict[str, Any], *, taken: list[str]) -> tuple[dict[str, Any],
                                                                                 list[dict[str, str]]]:
    """!ENV references -> `{"Ref": EnvNAME}` on a NoEcho String parameter each, so the value is given when the
    stack is created or updated and never sits in the template; returns (environment, parameters)."""
    names = parameter_names([v[ENV_KEY] for v in environment.values() if is_env_ref(v)], taken)
    out = {k: ({"Ref": names[v[ENV_KEY]]} if is_env_ref(v) else v) for k, v in environment.items()}
    params = []
    for var, pid in sorted(names.items(), key=lambda item: item[1]):
        keys = ", ".join(k for k, v in environment.items() if is_env_ref(v) and v[ENV_KEY] == var)
        text = f"Container environment {keys} (deploy.yaml: !ENV {var}; deployc deploy reads ${var})."
        params.append({"id": pid, "description": text if len(text) <= 4000 else text[:3997] + "..."})
    return out, params


def dockerfile(name: str, version: str, *, header: str) -> str:
    command = f"exec deployc serve {MODEL_DIR} --host 0.0.0.0 --port {c.SAGEMAKER_PORT}"
    return render_template("sagemaker", "Dockerfile.j2", header=header, bundle_name=name, version=version,
                           base_image=BASE_IMAGE, base_tag=BASE_TAG, requirement=f"deployc=={__version__}",
                           port=c.SAGEMAKER_PORT, uid=SERVING_UID, healthcheck=healthcheck(c.SAGEMAKER_PORT, "/ping"),
                           entrypoint=["/bin/sh", "-c", command])


def _description(spec: Any) -> str:
    text = f"deployc: SageMaker endpoint {spec.name} {spec.version}"
    return (f"{text} - {spec.description}" if spec.description else text)[:1024]
