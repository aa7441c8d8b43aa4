"""`targets.vertex`: request bodies for Vertex AI (models.upload, endpoints.create, endpoints.deployModel),
the model folder they point at, and a deploy.sh that makes those calls with gcloud and curl.

The bodies are data (dicts dumped as JSON); deploy.sh is a template. The model id carries the hash of the model
folder, so an unchanged build uploads nothing and a changed model gets a new Model and its own GCS folder.
"""
from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, field_validator, model_validator

from deployc import conventions as c
from deployc.errors import InputError
from deployc.render import dump_json, render_template
from deployc.schema.base import Located, SpecModel, choice, located, show
from deployc.targets.base import EmitContext, Target
from deployc.targets.common import cloud_model_files
from deployc.targets.requests import dump, instances_request

if TYPE_CHECKING:
    from deployc.schema.spec import DeploySpec


# Config: `targets.vertex` in deploy.yaml.

PROJECT_ID = r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$"
GCS_URI = r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/[^\s#?*\[\]]*)?$"
# registry/repository[:tag|@sha256:digest] (Artifact Registry: REGION-docker.pkg.dev/PROJECT/REPO/IMAGE)
IMAGE_URI = r"^[a-z0-9][a-z0-9.-]*(:\d{1,5})?/[a-z0-9._/-]+(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127}|@sha256:[0-9a-f]{64})?$"
SERVICE_ACCOUNT = r"^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9.-]+\.iam\.gserviceaccount\.com$"
ENDPOINT_ID = r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"
# Vertex AI (Google Cloud) labels: keys and values at most 63 of lower-case letters, digits, '_' and '-'; a key
# starts with a letter; at most 64 per resource, two of them deployc's own (deployc-model, deployc-digest).
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
DEFAULT_MACHINE_TYPE = "n1-standard-2"

# Vertex AI locations that serve online predictions (cloud.google.com/vertex-ai/docs/general/locations).
REGIONS = frozenset({
    "us-central1", "us-east1", "us-east4", "us-east5", "us-south1", "us-west1", "us-west2", "us-west3", "us-west4",
    "northamerica-northeast1", "northamerica-northeast2", "southamerica-east1", "southamerica-west1",
    "europe-central2", "europe-north1", "europe-southwest1", "europe-west1", "europe-west2", "europe-west3",
    "europe-west4", "europe-west6", "europe-west8", "europe-west9", "europe-west12",
    "me-central1", "me-central2", "me-west1", "africa-south1",
    "asia-east1", "asia-east2", "asia-northeast1", "asia-northeast2", "asia-northeast3", "asia-south1",
    "asia-southeast1", "asia-southeast2", "australia-southeast1", "australia-southeast2",
})


def _sizes(family: str, sizes: tuple[int, ...]) -> set[str]:
    return {f"{family}-{n}" for n in sizes}


# CPU machine types Vertex AI accepts for online prediction (cloud.google.com/vertex-ai/docs/predictions/
# configure-compute). GPU types need an accelerator in machineSpec, which deployc does not set.
MACHINE_TYPES = frozenset(
    _sizes("e2-standard", (2, 4, 8, 16, 32)) | _sizes("e2-highmem", (2, 4, 8, 16))
    | _sizes("e2-highcpu", (2, 4, 8, 16, 32))
    | _sizes("n1-standard", (2, 4, 8, 16, 32, 64, 96)) | _sizes("n1-highmem", (2, 4, 8, 16, 32, 64, 96))
    | _sizes("n1-highcpu", (4, 8, 16, 32, 64, 96))
    | _sizes("n2-standard", (2, 4, 8, 16, 32, 48, 64, 80)) | _sizes("n2-highmem", (2, 4, 8, 16, 32, 48, 64, 80))
    | _sizes("n2-highcpu", (2, 4, 8, 16, 32, 48, 64, 80, 96))
    | _sizes("n2d-standard", (2, 4, 8, 16, 32, 48, 64, 80, 96, 128, 224))
    | _sizes("n2d-highmem", (2, 4, 8, 16, 32, 48, 64, 80, 96))
    | _sizes("n2d-highcpu", (2, 4, 8, 16, 32, 48, 64, 80, 96, 128, 224))
    | _sizes("c2-standard", (4, 8, 16, 30, 60))
    | _sizes("c2d-standard", (2, 4, 8, 16, 32, 56, 112)) | _sizes("c2d-highcpu", (2, 4, 8, 16, 32, 56, 112))
    | _sizes("c2d-highmem", (2, 4, 8, 16, 32, 56, 112))
    | _sizes("c3-standard", (4, 8, 22, 44, 88, 176)) | _sizes("c3-highcpu", (4, 8, 22, 44, 88, 176))
    | _sizes("c3-highmem", (4, 8, 22, 44, 88, 176))
)


class VertexAutoscaling(SpecModel):
    cpu_target_percent: int | None = Field(None, ge=1, le=100, description="Target CPU utilization of a replica "
                                           "(metric prediction/online/cpu/utilization; Vertex's default is 60).")
    requests_per_minute: int | None = Field(None, ge=1, description="Target requests per minute per replica "
                                            "(metric prediction/online/request_count).")

    @model_validator(mode="after")
    def _one_target(self) -> VertexAutoscaling:
        if self.cpu_target_percent is None and self.requests_per_minute is None:
            raise ValueError("set cpu_target_percent, requests_per_minute or both")
        return self


class VertexConfig(SpecModel):
    project: str = Field(..., pattern=PROJECT_ID, description="Google Cloud project id (6-30 characters).")
    region: Annotated[str, choice(REGIONS, "a Vertex AI region", "docs/vertex.md")] = \
        Field(..., description="Vertex AI location of the model and endpoint (us-central1).")
    image_uri: str = Field(..., max_length=1024, pattern=IMAGE_URI, description="An image with deployc installed "
                           "(Artifact Registry: REGION-docker.pkg.dev/PROJECT/REPO/IMAGE:TAG).")
    artifact_uri: str = Field(..., pattern=GCS_URI, description="gs:// folder prefix; the model files go to "
                              "<artifact_uri>/<name>/<model id>/, one folder per model content.")
    endpoint_id: str | None = Field(None, pattern=ENDPOINT_ID, description="Endpoint id (default: the spec "
                                    "name); lower-case letters, digits and '-', starting with a letter.")
    machine_type: Annotated[str, choice(MACHINE_TYPES, "a Vertex AI prediction machine type", "docs/vertex.md")] = \
        Field(DEFAULT_MACHINE_TYPE, description="Machine type of each replica (CPU types only).")
    min_replicas: int = Field(1, ge=1, le=1000, description="Replicas always running.")
    max_replicas: int | None = Field(None, ge=1, le=1000, description="Autoscaling ceiling (default: "
                                     "min_replicas, i.e. no autoscaling).")
    autoscaling: VertexAutoscaling | None = Field(None, description="Autoscaling targets; Vertex scales on CPU "
                                                  "at 60% when max_replicas > min_replicas and this is unset.")
    service_account: str | None = Field(None, pattern=SERVICE_ACCOUNT, description="Email of the service account "
                                        "the container runs as (it must read artifact_uri).")
    traffic_percent: int = Field(100, ge=1, le=100, description="Share of the endpoint's traffic the new model "
                                 "gets; models already deployed share the rest in their current proportions.")
    labels: dict[str, str] = Field(default_factory=dict, max_length=62, description="Labels on the model and "
                                   "endpoint (keys: lower-case letter first, then [a-z0-9_-]; at most 63 each).")

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        problems: list[Located] = []
        for key, value in v.items():
            if not LABEL_KEY.match(key):
                problems.append(((key,), f"the label key {show(key)} is not a Vertex AI label key: a lower-case "
                                 "letter, then at most 62 of lower-case letters, digits, '_' and '-'"))
            elif key.startswith("deployc"):
                problems.append(((key,), f"the label key {key!r}: keys starting with deployc are set by deployc"))
            elif not LABEL_VALUE.match(value):
                problems.append(((key,), f"the label value {show(value)} is not a Vertex AI label value: at most "
                                 "63 of lower-case letters, digits, '_' and '-'"))
        if problems:
            raise located(problems)
        return v

    @model_validator(mode="after")
    def _replicas(self) -> VertexConfig:
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be at least min_replicas")
        if self.autoscaling is not None and self.resolved_max_replicas() == self.min_replicas:
            raise ValueError("autoscaling needs max_replicas greater than min_replicas")
        return self

    def resolved_max_replicas(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.min_replicas

    def spec_name_problems(self, spec_name: str) -> list[Located]:
        """The endpoint id defaults to the spec name; Vertex AI reads an id that starts with a digit as a numeric
        one (at most 9 digits). The model id and the deployc-model label take at most 50 and 63 characters of
        the name, so any spec name fits them."""
        if self.endpoint_id is None and not re.match(ENDPOINT_ID, spec_name):
            return [(("targets", "vertex"), f"the endpoint id defaults to the spec name {spec_name!r}, which "
                     "Vertex AI refuses (it must start with a lower-case letter): set endpoint_id")]
        return []


# The target.

CONTAINER_MODEL_DIR = "/tmp/deployc-model"  # where the container copies $AIP_STORAGE_URI before serving
CPU_METRIC = "aiplatform.googleapis.com/prediction/online/cpu/utilization"
REQUESTS_METRIC = "aiplatform.googleapis.com/prediction/online/request_count"
_SHELL_SAFE = re.compile(r"^[A-Za-z0-9@%+=:,./_-]*$")


def folder_digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{hashlib.sha256(files[name]).hexdigest()}\n".encode())
    return h.hexdigest()


def model_id(name: str, digest: str) -> str:
    """[a-z0-9_-], a letter first, at most 63 characters (UploadModelRequest.model_id)."""
    stem = name if name[0].isalpha() else f"m{name}"
    return f"{stem[:50].rstrip('-')}-{digest[:12]}"


def container_spec(cfg: VertexConfig) -> dict[str, Any]:
    serve = ["python", "-m", "deployc", "serve", CONTAINER_MODEL_DIR, "--host", "0.0.0.0",
             "--port", str(c.CLOUD_SERVING_PORT)]
    return {
        "imageUri": cfg.image_uri,
        "command": ["python", "-m", "deployc.container.vertex_fetch"],
        "args": [CONTAINER_MODEL_DIR, "--", *serve],
        "ports": [{"containerPort": c.CLOUD_SERVING_PORT}],
        "predictRoute": c.CLOUD_PREDICT_ROUTE,
        "healthRoute": c.CLOUD_READY_ROUTE,
    }


def upload_body(ctx: EmitContext, cfg: VertexConfig, mid: str, artifact_uri: str, digest: str) -> dict[str, Any]:
    spec = ctx.spec
    model: dict[str, Any] = {
        "displayName": f"{spec.name} {spec.version}",
        "artifactUri": artifact_uri,
        "containerSpec": container_spec(cfg),
        "labels": labels(cfg, spec.name, digest),
        "versionDescription": f"deployc build of {spec.name} {spec.version}, model sha256 {ctx.onnx_sha256}",
    }
    if spec.description:
        model["description"] = spec.description[:2000]
    return {"modelId": mid, "model": model}


def labels(cfg: VertexConfig, name: str, digest: str) -> dict[str, str]:
    return {**cfg.labels, "deployc-model": name[:63], "deployc-digest": digest[:12]}


def deploy_body(ctx: EmitContext, cfg: VertexConfig, model_name: str) -> dict[str, Any]:
    resources: dict[str, Any] = {
        "machineSpec": {"machineType": cfg.machine_type},
        "minReplicaCount": cfg.min_replicas,
        "maxReplicaCount": cfg.resolved_max_replicas(),
    }
    a = cfg.autoscaling
    if a is not None:
        resources["autoscalingMetricSpecs"] = (
            ([{"metricName": CPU_METRIC, "target": a.cpu_target_percent}] if a.cpu_target_percent else [])
            + ([{"metricName": REQUESTS_METRIC, "target": a.requests_per_minute}] if a.requests_per_minute else []))
    deployed: dict[str, Any] = {
        "model": model_name,
        "displayName": f"{ctx.spec.name}-{ctx.spec.version}"[:128],
        "dedicatedResources": resources,
    }
    if cfg.service_account:
        deployed["serviceAccount"] = cfg.service_account
    # "0" is the model being deployed; deploy.sh adds the models already on the endpoint when this is < 100.
    return {"deployedModel": deployed, "trafficSplit": {"0": cfg.traffic_percent}}


def endpoint_body(cfg: VertexConfig, name: str) -> dict[str, Any]:
    return {"displayName": name, "labels": {**cfg.labels, "deployc-model": name[:63]},
            "description": f"deployc: {name}"}


class VertexTarget(Target):
    model_formats = ("onnx", "openvino")  # its image runs `deployc serve`
    name = "vertex"
    config_model = VertexConfig
    description = "A Vertex AI model and endpoint."
    serves = True

    def check(self, spec: DeploySpec) -> list[Located]:
        """The derived endpoint id, and the values deploy.sh passes to gcloud and curl unquoted."""
        cfg: VertexConfig = self.config(spec)
        problems = cfg.spec_name_problems(spec.name)
        if not _SHELL_SAFE.match(cfg.artifact_uri):
            problems.append((("targets", "vertex", "artifact_uri"), f"{cfg.artifact_uri!r} holds characters "
                             "deploy.sh cannot quote: use letters, digits and @%+=:,./_-"))
        return problems

    def emit(self, ctx: EmitContext) -> dict[str, bytes]:
        cfg: VertexConfig = self.config(ctx.spec)
        spec = ctx.spec
        files = cloud_model_files(ctx)
        digest = folder_digest(files)
        mid = model_id(spec.name, digest)
        endpoint_id = cfg.endpoint_id or spec.name
        if not endpoint_id[0].isalpha():
            raise InputError(f"targets.vertex.endpoint_id: the spec name {spec.name!r} starts with a digit, "
                             "which Vertex AI reads as a numeric id: set endpoint_id")
        artifact_uri = f"{cfg.artifact_uri.rstrip('/')}/{spec.name}/{mid}"
        parent = f"projects/{cfg.project}/locations/{cfg.region}"
        d = c.VERTEX_DIR
        out = {f"{d}/model/{k}": v for k, v in files.items()}
        out[f"{d}/model-upload.json"] = dump_json(upload_body(ctx, cfg, mid, artifact_uri, digest))
        out[f"{d}/endpoint.json"] = dump_json(endpoint_body(cfg, spec.name))
        out[f"{d}/deploy-model.json"] = dump_json(deploy_body(ctx, cfg, f"{parent}/models/{mid}"))
        out[f"{d}/request.json"] = dump(instances_request(ctx))  # an endpoints.predict body
        out[f"{d}/deploy.sh"] = deploy_script(
            header=c.GENERATED_HEADER.format(spec=ctx.spec_file), project=cfg.project, region=cfg.region,
            model_id=mid, endpoint_id=endpoint_id, artifact_uri=artifact_uri, model_files=sorted(files),
            traffic_percent=cfg.traffic_percent).encode()
        return out


def deploy_script(**values: Any) -> str:
    for key in ("project", "region", "model_id", "endpoint_id", "artifact_uri"):
        if not _SHELL_SAFE.match(values[key]):
            raise InputError(f"targets.vertex: {key} {values[key]!r} holds characters deploy.sh cannot quote")
    return render_template("vertex", "deploy.sh.j2", **values)
