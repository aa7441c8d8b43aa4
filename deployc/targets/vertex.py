"""`targets.vertex`: request bodies for Vertex AI (models.upload, endpoints.create, endpoints.deployModel),
the model folder they point at, and a deploy.sh that makes those calls with gcloud and curl.

The bodies are data (dicts dumped as JSON); deploy.sh is a template. The model id carries the hash of the model
folder, so an unchanged build uploads nothing and a changed model gets a new Model and its own GCS folder.
"""
from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

from deployc import conventions as c
from deployc.errors import InputError
from deployc.render import dump_json, render_template
from deployc.schema.base import Located
from deployc.schema.vertex import VertexTarget as VertexConfig
from deployc.targets.base import EmitContext, Target
from deployc.targets.common import cloud_model_files

if TYPE_CHECKING:
    from deployc.schema.spec import DeploySpec

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
