"""`targets.azureml`: Azure ML CLI v2 YAML for a managed online endpoint and its deployment, the model folder,
the serving image's Dockerfile and a README with the `az ml` commands.

Both YAML files are data (dicts dumped with the generated header); the Dockerfile and the README are templates.
Managed online deployments accept only `scale_settings: {type: default}` (autoscaling of managed endpoints lives
in Azure Monitor), so CPU autoscaling becomes `az monitor autoscale` commands in the README.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from deployc import __version__
from deployc import conventions as c
from deployc.errors import InputError
from deployc.render import dump_yaml, render_template
from deployc.schema.base import Located, SpecModel, choice
from deployc.signing import REQUIRE_ENV, verifies_on_serve
from deployc.targets.base import EmitContext, Target
from deployc.targets.common import (
    BASE_IMAGE,
    BASE_TAG,
    SERVING_UID,
    cloud_model_files,
    healthcheck,
    serving_requirement,
)
from deployc.targets.requests import dump, instances_request

# Config: `targets.azureml` in deploy.yaml.

# Endpoint and deployment names: 3-32 characters, a letter first, letters, digits and '-', no '-' last
# (^[a-zA-Z][-a-zA-Z0-9]*[a-zA-Z0-9]$; the endpoint name is also unique in its Azure region).
AZURE_NAME = r"^[a-zA-Z][-a-zA-Z0-9]{1,30}[a-zA-Z0-9]$"
IMAGE = r"^[a-z0-9][a-z0-9.-]*(:\d{1,5})?/[a-z0-9._/-]+(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127}|@sha256:[0-9a-f]{64})?$"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
DEFAULT_INSTANCE_TYPE = "Standard_DS3_v2"

# VM sizes managed online endpoints accept (learn.microsoft.com/azure/machine-learning/
# reference-managed-online-endpoints-vm-sku-list).
INSTANCE_TYPES = frozenset({
    "Standard_DS1_v2", "Standard_DS2_v2", "Standard_DS3_v2", "Standard_DS4_v2", "Standard_DS5_v2",
    "Standard_F2s_v2", "Standard_F4s_v2", "Standard_F8s_v2", "Standard_F16s_v2", "Standard_F32s_v2",
    "Standard_F48s_v2", "Standard_F64s_v2", "Standard_F72s_v2",
    "Standard_E2s_v3", "Standard_E4s_v3", "Standard_E8s_v3", "Standard_E16s_v3", "Standard_E32s_v3",
    "Standard_E48s_v3", "Standard_E64s_v3",
    "Standard_D2as_v4", "Standard_D4as_v4", "Standard_D8as_v4", "Standard_D16as_v4", "Standard_D32as_v4",
    "Standard_D48as_v4", "Standard_D64as_v4", "Standard_D96as_v4",
    "Standard_E2as_v4", "Standard_E4as_v4", "Standard_E8as_v4", "Standard_E16as_v4", "Standard_E32as_v4",
    "Standard_E48as_v4", "Standard_E64as_v4", "Standard_E96as_v4",
    "Standard_NC4as_T4_v3", "Standard_NC8as_T4_v3", "Standard_NC16as_T4_v3", "Standard_NC64as_T4_v3",
    "Standard_NC6s_v3", "Standard_NC12s_v3", "Standard_NC24s_v3",
    "Standard_NC24ads_A100_v4", "Standard_NC48ads_A100_v4", "Standard_NC96ads_A100_v4",
    "Standard_ND96asr_v4", "Standard_ND96amsr_A100_v4", "Standard_ND40rs_v2",
})


class RequestSettings(SpecModel):
    request_timeout_ms: int = Field(5000, ge=1, le=180000, description="Scoring timeout per request.")
    max_concurrent_requests_per_instance: int = Field(1, ge=1, le=1000, description="Requests an instance "
                                                      "handles at once (raise it with batching or workers).")


class Probe(SpecModel):
    initial_delay: int = Field(10, ge=1, le=3600, description="Seconds after start before the first probe.")
    period: int = Field(10, ge=1, le=3600, description="Seconds between probes.")
    timeout: int = Field(2, ge=1, le=3600, description="Seconds a probe may take.")
    failure_threshold: int = Field(30, ge=1, le=1000, description="Failed probes in a row before acting.")
    success_threshold: int = Field(1, ge=1, le=1, description="Successes to count as healthy (Azure: 1 only).")


class AzureAutoscaling(SpecModel):
    min_instances: int = Field(1, ge=1, le=1000, description="Scale-in floor.")
    max_instances: int = Field(..., ge=1, le=1000, description="Scale-out ceiling.")
    cpu_target_percent: int = Field(70, ge=1, le=100, description="Average CpuUtilizationPercentage over 5 "
                                    "minutes above which one instance is added (one removed below half of it).")

    @model_validator(mode="after")
    def _bounds(self) -> AzureAutoscaling:
        if self.max_instances <= self.min_instances:
            raise ValueError("max_instances must be greater than min_instances")
        return self


class AzureMLConfig(SpecModel):
    endpoint_name: str | None = Field(None, pattern=AZURE_NAME, description="Endpoint name, unique in the "
                                      "Azure region (default: the spec name); 3-32 letters, digits and '-'.")
    deployment_name: str = Field("blue", pattern=AZURE_NAME, description="Deployment name in the endpoint.")
    auth_mode: Literal["key", "aml_token", "aad_token"] = Field("key", description="How clients authenticate.")
    image: str = Field(..., max_length=1024, pattern=IMAGE, description="The serving image, built from the "
                       "bundle's Dockerfile (ACR: REGISTRY.azurecr.io/IMAGE:TAG).")
    instance_type: Annotated[str, choice(INSTANCE_TYPES, "a managed online endpoint VM size", "docs/azureml.md")] = \
        Field(DEFAULT_INSTANCE_TYPE, description="VM size of each instance.")
    instance_count: int = Field(1, ge=1, le=1000, description="Instances at creation (autoscaling changes it).")
    autoscaling: AzureAutoscaling | None = Field(None, description="CPU autoscale rules (Azure Monitor); "
                                                 "the README holds the commands.")
    traffic_percent: int = Field(100, ge=0, le=100, description="Share of the endpoint's traffic sent to this "
                                 "deployment once it is created.")
    request_settings: RequestSettings = Field(default_factory=RequestSettings, description="Per-request limits.")
    liveness_probe: Probe = Field(default_factory=Probe, description="Restarts an instance that stops answering.")
    readiness_probe: Probe = Field(default_factory=Probe, description="Holds traffic until the model is loaded.")
    environment_variables: dict[str, str] = Field(default_factory=dict, max_length=100,
                                                  description="Container environment (never credentials).")

    @field_validator("environment_variables")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not an environment variable name (letters, digits, _)")
            if key.startswith(("AZUREML_", "AML_")):
                raise ValueError(f"{key!r}: names starting with AZUREML_ or AML_ are set by Azure ML")
        return v

    def spec_name_problems(self, spec_name: str) -> list[Located]:
        """endpoint_name defaults to the spec name, which allows a digit first and up to 63 characters."""
        if self.endpoint_name is None and not re.match(AZURE_NAME, spec_name):
            return [(("targets", "azureml"), f"the endpoint name defaults to the spec name {spec_name!r}, which "
                     "Azure ML refuses (3-32 characters, a letter first, then letters, digits and '-', not '-' "
                     "last): set endpoint_name")]
        return []

    @model_validator(mode="after")
    def _count_in_range(self) -> AzureMLConfig:
        a = self.autoscaling
        if a is not None and not a.min_instances <= self.instance_count <= a.max_instances:
            raise ValueError(f"instance_count {self.instance_count} is outside autoscaling min_instances.."
                             f"max_instances ({a.min_instances}..{a.max_instances})")
        return self


# The target.

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
        "environment_variables": dict(sorted({**cfg.environment_variables, **(
            {REQUIRE_ENV: "1"} if verifies_on_serve(ctx.spec) else {})}.items())),
        "tags": {"deployc-model": ctx.spec.name, "deployc-version": ctx.spec.version},
    }


class AzureMLTarget(Target):
    model_formats = ("onnx", "openvino")  # its image runs `deployc serve`
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
        out[f"{d}/Dockerfile"] = dockerfile(spec.name, spec.version, header=header,
                                         requirement=serving_requirement(spec, ctx.model_format),
                                         signed=getattr(spec, "signing", None) is not None).encode()
        out[f"{d}/request.json"] = dump(instances_request(ctx))  # the README's `invoke --request-file`
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


def dockerfile(name: str, version: str, *, header: str,
               requirement: str = f"deployc[serve]=={__version__}", signed: bool = False) -> str:
    port = c.CLOUD_SERVING_PORT
    # Azure ML runs the image's own entrypoint; the model folder is <mount>/model (or the mount itself).
    command = (f'for d in "$DEPLOYC_MODEL_DIR/model" "$DEPLOYC_MODEL_DIR"; do '
               f'if [ -f "$d/serving.json" ]; then exec python -m deployc serve "$d" --host 0.0.0.0 --port {port}; '
               f'fi; done; echo "deployc: no serving.json under $DEPLOYC_MODEL_DIR" >&2; exit 1')
    return render_template("azureml", "Dockerfile.j2", header=header, bundle_name=name, version=version,
                           base_image=BASE_IMAGE, base_tag=BASE_TAG, requirement=requirement,
                           port=port, uid=SERVING_UID, healthcheck=healthcheck(port, c.CLOUD_LIVE_ROUTE),
                           model_dir=MODEL_MOUNT_PATH, entrypoint=["/bin/sh", "-c", command], signed=signed)
