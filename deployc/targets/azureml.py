"""`targets.azureml`: Azure ML CLI v2 YAML for a managed online endpoint and its deployment, the model folder,
the serving image's Dockerfile and a README with the `az ml` commands.

Both YAML files are data (dicts dumped with the generated header); the Dockerfile and the README are templates.
Managed online deployments accept only `scale_settings: {type: default}` (autoscaling of managed endpoints lives
in Azure Monitor), so CPU autoscaling becomes `az monitor autoscale` commands in the README.
"""
from __future__ import annotations

import re
from typing import Any

from deployc import __version__
from deployc import conventions as c
from deployc.errors import InputError
from deployc.render import dump_yaml, render_template
from deployc.schema.azureml import AZURE_NAME, Probe
from deployc.schema.azureml import AzureMLTarget as AzureMLConfig
from deployc.targets.base import EmitContext, Target
from deployc.targets.common import BASE_IMAGE, BASE_TAG, SERVING_UID, cloud_model_files, healthcheck

ENDPOINT_SCHEMA = "https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json"
DEPLOYMENT_SCHEMA = "https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json"
MODEL_MOUNT_PATH = "/var/azureml-app/deployc-model"  # the model folder appears as <mount>/model inside it


def endpoint_name(cfg: AzureMLConfig, spec_name: str) -> str:
    name = cfg.endpoint_name or spec_name
    if not re.match(AZURE_NAME, name):
        raise InputError(f"targets.azureml.endpoint_name: the spec name {spec_name!r} is not a valid endpoint name "
                         "(3-32 characters, a letter first, letters, digits and '-'): set endpoint_name")
    return name


def endpoint_doc(cfg: AzureMLConfig, name: str, description: str) -> dict[str, Any]:
    return {"$schema": ENDPOINT_SCHEMA, "name": name, "auth_mode": cfg.auth_mode, "description": description,
            "tags": {"deployc-model": name}}


def _probe(p: Probe) -> dict[str, int]:
    return {"initial_delay": p.initial_delay, "period": p.period, "timeout": p.timeout,
            "failure_threshold": p.failure_threshold, "success_threshold": p.success_threshold}


def deployment_doc(ctx: EmitContext, cfg: AzureMLConfig, endpoint: str) -> dict[str, Any]:
    port = c.CLOUD_SERVING_PORT
    return {
        "$schema": DEPLOYMENT_SCHEMA,
        "name": cfg.deployment_name,
        "endpoint_name": endpoint,
        "description": f"deployc build of {ctx.spec.name} {ctx.spec.version}, model sha256 {ctx.onnx_sha256}",
        "model": {"path": "model"},  # uploaded as an anonymous model by `az ml online-deployment create`
        "model_mount_path": MODEL_MOUNT_PATH,
        "environment": {
            "image": cfg.image,
            "inference_config": {
                "liveness_route": {"port": port, "path": c.CLOUD_LIVE_ROUTE},
                "readiness_route": {"port": port, "path": c.CLOUD_READY_ROUTE},
                "scoring_route": {"port": port, "path": c.CLOUD_PREDICT_ROUTE},
            },
        },
        "instance_type": cfg.instance_type,
        "instance_count": cfg.instance_count,
        "scale_settings": {"type": "default"},
        "request_settings": {
            "request_timeout_ms": cfg.request_settings.request_timeout_ms,
            "max_concurrent_requests_per_instance": cfg.request_settings.max_concurrent_requests_per_instance,
        },
        "liveness_probe": _probe(cfg.liveness_probe),
        "readiness_probe": _probe(cfg.readiness_probe),
        "environment_variables": dict(sorted(cfg.environment_variables.items())),
        "tags": {"deployc-model": ctx.spec.name, "deployc-version": ctx.spec.version},
    }


class AzureMLTarget(Target):
    name = "azureml"
    config_model = AzureMLConfig
    description = "An Azure ML managed online endpoint."
    serves = True

    def emit(self, ctx: EmitContext) -> dict[str, bytes]:
        cfg: AzureMLConfig = self.config(ctx.spec)
        spec = ctx.spec
        endpoint = endpoint_name(cfg, spec.name)
        header = c.GENERATED_HEADER.format(spec=ctx.spec_file)
        description = (f"{spec.name}: {spec.description}" if spec.description else spec.name)[:500]
        d = c.AZUREML_DIR
        out = {f"{d}/model/{k}": v for k, v in cloud_model_files(ctx).items()}
        out[f"{d}/endpoint.yml"] = dump_yaml(endpoint_doc(cfg, endpoint, description), header=header)
        out[f"{d}/deployment.yml"] = dump_yaml(deployment_doc(ctx, cfg, endpoint), header=header)
        out[f"{d}/Dockerfile"] = dockerfile(spec.name, spec.version, header=header).encode()
        a = cfg.autoscaling
        out[f"{d}/README.md"] = render_template(
            "azureml", "README.md.j2", header=header, bundle_name=spec.name, version=spec.version, endpoint=endpoint,
            deployment=cfg.deployment_name, traffic=cfg.traffic_percent,
            traffic_arg=f"{cfg.deployment_name}={cfg.traffic_percent} OTHER={100 - cfg.traffic_percent}",
            auth_mode=cfg.auth_mode,
            autoscaling=None if a is None else {"min": a.min_instances, "max": a.max_instances,
                                                "count": cfg.instance_count, "cpu": a.cpu_target_percent,
                                                "cpu_in": max(1, a.cpu_target_percent // 2)},
        ).encode()
        return out


def dockerfile(name: str, version: str, *, header: str) -> str:
    port = c.CLOUD_SERVING_PORT
    # Azure ML runs the image's own entrypoint; the model folder is <mount>/model (or the mount itself).
    command = (f'for d in "$DEPLOYC_MODEL_DIR/model" "$DEPLOYC_MODEL_DIR"; do '
               f'if [ -f "$d/serving.json" ]; then exec python -m deployc serve "$d" --host 0.0.0.0 --port {port}; '
               f'fi; done; echo "deployc: no serving.json under $DEPLOYC_MODEL_DIR" >&2; exit 1')
    return render_template("azureml", "Dockerfile.j2", header=header, bundle_name=name, version=version,
                           base_image=BASE_IMAGE, base_tag=BASE_TAG, requirement=f"deployc=={__version__}",
                           port=port, uid=SERVING_UID, healthcheck=healthcheck(port, c.CLOUD_LIVE_ROUTE),
                           model_dir=MODEL_MOUNT_PATH, entrypoint=["/bin/sh", "-c", command])
