"""`targets.kserve`: an InferenceService (serving.kserve.io/v1beta1), its Prometheus Operator objects, and the
model folder its storageUri points to.

Manifests are built as dicts and serialized, never templated. Before they are returned each one is checked
against a JSON Schema: the CRDs' (InferenceService, PodMonitor, PrometheusRule; `deployc/targets/schemas/`) with
their embedded core types (Container, ObjectMeta, LabelSelector) taken from the Kubernetes OpenAPI definitions
that the kubernetes-validate package ships. A manifest that fails is a deployc bug and stops the build.
"""
from __future__ import annotations

import json
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from deployc import conventions as c
from deployc.errors import DeploycError, InputError
from deployc.render import dump_yaml
from deployc.schema.kserve import LABEL_VALUE
from deployc.schema.kserve import KServeTarget as KServeConfig
from deployc.targets.base import EmitContext, Target
from deployc.targets.bundle import local_config, serving_files

KSERVE_DIR = "kserve"
MODEL_DIR = "model"  # kserve/model/: what you upload to storage_uri
MOUNT = "/mnt/models"  # where KServe's storage initializer puts the storageUri's files
PORT = 8080
CONTAINER = "kserve-container"  # the container name KServe's storage initializer looks for
PORT_NAME = "http1"  # Knative accepts only http1 or h2c
KNATIVE_PORT_NAME = "user-port"  # Knative renames the user container's port to this in the pods it creates
ISVC_POD_LABEL = "serving.kserve.io/inferenceservice"
SCHEMAS = Path(__file__).with_name("schemas")
ANNOTATION_PREFIX = "deployc.dev"
TMP_VOLUME = "tmp"  # an emptyDir at /tmp: the one writable folder under a read-only root filesystem
SECCOMP_PROFILE = "RuntimeDefault"


class ManifestError(DeploycError):
    """A generated manifest does not satisfy its API schema: a deployc bug, never written out."""


class KServeTarget(Target):
    name = "kserve"
    config_model = KServeConfig
    description = "A KServe InferenceService (Kubernetes)."
    serves = True

    def serves_metrics(self, cfg: KServeConfig) -> bool:
        return cfg.runtime == "deployc"  # KServe's own ONNX runtime does not export deployc's metrics

    def emit(self, ctx: EmitContext) -> dict[str, bytes]:
        cfg: KServeConfig = self.config(ctx.spec)
        docs: dict[str, dict[str, Any]] = {"inferenceservice.yaml": inference_service(ctx, cfg)}
        if cfg.runtime == "deployc":
            if cfg.monitoring.pod_monitor:
                docs["podmonitor.yaml"] = pod_monitor(ctx, cfg)
            groups = ctx.monitoring.rule_groups() if ctx.monitoring is not None else []
            if groups and cfg.monitoring.prometheus_rule:
                docs["prometheusrule.yaml"] = prometheus_rule(ctx, cfg, groups)
        docs["kustomization.yaml"] = kustomization(cfg, sorted(docs))
        header = c.GENERATED_HEADER.format(spec=ctx.spec_file)
        files: dict[str, bytes] = {}
        for fname, doc in docs.items():
            validate_manifest(doc, cfg.kubernetes_version, f"{KSERVE_DIR}/{fname}")
            files[f"{KSERVE_DIR}/{fname}"] = dump_yaml(doc, header)
        for rel, data in model_files(ctx, cfg).items():
            files[f"{KSERVE_DIR}/{MODEL_DIR}/{rel}"] = data
        return files


def model_files(ctx: EmitContext, cfg: KServeConfig) -> dict[str, bytes]:
    """runtime deployc: the `deployc serve` bundle (model.onnx, serving.json, labels.txt); onnx: model.onnx."""
    if cfg.runtime == "onnx":
        return {"model.onnx": ctx.onnx_model.read_bytes()}
    return serving_files(ctx, local_config(ctx.spec), host="0.0.0.0", port=PORT)


def _labels(ctx: EmitContext, extra: dict[str, str] | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": ctx.spec.name, "app.kubernetes.io/managed-by": "deployc"}
    if LABEL_VALUE.match(ctx.spec.version) and len(ctx.spec.version) <= 63:
        labels["app.kubernetes.io/version"] = ctx.spec.version
    return {**labels, **(extra or {})}


def _metadata(ctx: EmitContext, cfg: KServeConfig, name: str, labels: dict[str, str],
              annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if cfg.namespace:
        meta["namespace"] = cfg.namespace
    if annotations:
        meta["annotations"] = annotations
    return meta


def _resources(cfg: KServeConfig) -> dict[str, dict[str, str]]:
    out = {}
    for part in ("requests", "limits"):
        values = getattr(cfg.resources, part).model_dump(exclude_none=True)
        if values:
            out[part] = values
    return out


def inference_service(ctx: EmitContext, cfg: KServeConfig) -> dict[str, Any]:
    spec = ctx.spec
    predictor: dict[str, Any] = {"minReplicas": cfg.min_replicas, "maxReplicas": cfg.max_replicas,
                                 "scaleMetric": cfg.scale_metric, "scaleTarget": cfg.scale_target}
    if cfg.canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = cfg.canary_traffic_percent
    if cfg.timeout_s is not None:
        predictor["timeout"] = cfg.timeout_s
    if cfg.service_account:
        predictor["serviceAccountName"] = cfg.service_account
    # Knative accepts automountServiceAccountToken only as false: the opt-out leaves the field out.
    if not cfg.security.automount_service_account_token:
        predictor["automountServiceAccountToken"] = False
    # Pod level only what Knative admits without its podspec-securitycontext flag; the rest is per container.
    predictor["securityContext"] = {"seccompProfile": {"type": SECCOMP_PROFILE}}
    # a new model must roll out a new revision even when storage_uri is reused: the hash is a pod annotation
    pod_annotations = {f"{ANNOTATION_PREFIX}/model-sha256": ctx.onnx_sha256}
    isvc_annotations = {"serving.kserve.io/deploymentMode": "Serverless" if cfg.deployment_mode == "serverless"
                        else "RawDeployment", f"{ANNOTATION_PREFIX}/version": spec.version}
    if cfg.runtime == "deployc":
        pod_annotations.update({"prometheus.io/scrape": "true", "prometheus.io/port": str(PORT),
                                "prometheus.io/path": "/metrics"})
        predictor["containers"] = [_container(ctx, cfg)]
        if cfg.security.read_only_root_filesystem:
            predictor["volumes"] = [{"name": TMP_VOLUME, "emptyDir": {}}]
    else:
        isvc_annotations["serving.kserve.io/enable-prometheus-scraping"] = "true"
        # KServe's runtime image picks its own user and writes where it needs: only the image-independent settings
        predictor["model"] = {"modelFormat": {"name": "onnx"}, "protocolVersion": "v2",
                              "storageUri": cfg.storage_uri, "resources": _resources(cfg),
                              "securityContext": _base_security_context()}
    predictor["annotations"] = pod_annotations
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": _metadata(ctx, cfg, spec.name, _labels(ctx), isvc_annotations),
            "spec": {"predictor": predictor}}


def _container(ctx: EmitContext, cfg: KServeConfig) -> dict[str, Any]:
    env: list[dict[str, Any]] = [{"name": "STORAGE_URI", "value": cfg.storage_uri}]
    local = ctx.spec.targets.local
    if local is not None and local.auth is not None:  # the token comes from a Secret you create
        env.append({"name": local.auth.token_env,
                    "valueFrom": {"secretKeyRef": {"name": f"{ctx.spec.name}-auth", "key": "token"}}})
    sec = cfg.security
    security = {**_base_security_context(), "runAsNonRoot": True, "runAsUser": sec.run_as_user,
                "runAsGroup": sec.run_as_user, "readOnlyRootFilesystem": sec.read_only_root_filesystem}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": cfg.image,
        "command": ["deployc"],
        "args": ["serve", MOUNT, "--host", "0.0.0.0", "--port", str(PORT)],
        "env": env,
        "ports": [{"containerPort": PORT, "name": PORT_NAME, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": c.CLOUD_READY_ROUTE, "port": PORT}, "periodSeconds": 10},
        # restarts a server that stopped answering; generous, as a large model may take a while to load
        "livenessProbe": {"httpGet": {"path": c.CLOUD_LIVE_ROUTE, "port": PORT}, "initialDelaySeconds": 10,
                          "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6},
        "resources": _resources(cfg),
        "securityContext": security,
    }
    if "@sha256:" not in (cfg.image or ""):  # a tag can move: pull it every time (a digest cannot)
        container["imagePullPolicy"] = "Always"
    if sec.read_only_root_filesystem:
        container["volumeMounts"] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    return container


def _base_security_context() -> dict[str, Any]:
    """What every serving container gets, whatever its image: no privilege escalation, no Linux capabilities
    (it binds 8080, no privileged port) and the runtime's default seccomp profile."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": SECCOMP_PROFILE}}


def pod_monitor(ctx: EmitContext, cfg: KServeConfig) -> dict[str, Any]:
    port = KNATIVE_PORT_NAME if cfg.deployment_mode == "serverless" else PORT_NAME
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": _metadata(ctx, cfg, ctx.spec.name, _labels(ctx, cfg.monitoring.labels)),
            "spec": {"selector": {"matchLabels": {ISVC_POD_LABEL: ctx.spec.name}},
                     "podMetricsEndpoints": [{"port": port, "path": "/metrics",
                                              "interval": cfg.monitoring.scrape_interval}]}}


def prometheus_rule(ctx: EmitContext, cfg: KServeConfig, groups: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": _metadata(ctx, cfg, f"{ctx.spec.name}-slos", _labels(ctx, cfg.monitoring.labels)),
            "spec": {"groups": groups}}


def kustomization(cfg: KServeConfig, resources: list[str]) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                           "resources": resources}
    if cfg.namespace:
        doc["namespace"] = cfg.namespace
    return doc


SCHEMA_OF_KIND = {"InferenceService": "inferenceservice", "PodMonitor": "podmonitor",
                  "PrometheusRule": "prometheusrule", "Kustomization": "kustomization"}


def validate_manifest(doc: dict[str, Any], kubernetes_version: str, where: str) -> None:
    """Raise ManifestError naming the file, the field path and the rule when `doc` breaks its API schema."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    schema = _schema(SCHEMA_OF_KIND[doc["kind"]])
    validator = Draft202012Validator(schema, registry=_registry(kubernetes_version))
    error = best_match(validator.iter_errors(doc))
    if error is not None:
        path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        message, shown = error.message, repr(error.instance)
        if len(shown) > 80:  # name the value by its path instead of printing a whole rule or container
            message = message.replace(shown, "the value")
        raise ManifestError(f"{where}: {doc['kind']} fails its schema at {path}: {message} "
                            "(a bug in deployc's kserve target; nothing was written)")


@cache
def _schema(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
    return doc


@lru_cache(maxsize=4)
def _registry(kubernetes_version: str) -> Any:
    """A registry holding the Kubernetes definitions (strict: unknown fields refused) the CRD schemas point to."""
    from importlib.resources import files

    from referencing import Registry, Resource

    root = files("kubernetes_validate") / "kubernetes-json-schema"
    folder = root / f"v{kubernetes_version}.0-local-strict"
    if not folder.is_dir():
        shipped = sorted(p.name.split("-")[0][1:].rsplit(".", 1)[0] for p in root.iterdir()
                         if p.name.endswith("-local-strict"))
        raise InputError(f"targets.kserve.kubernetes_version: no Kubernetes {kubernetes_version} schemas in the "
                         f"installed kubernetes-validate (it has {', '.join(shipped)})")
    defs = json.loads((folder / "_definitions.json").read_text(encoding="utf-8"))
    return Registry().with_resource(defs["$id"], Resource.from_contents(defs))
