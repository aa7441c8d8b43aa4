"""`targets.kserve`: an InferenceService (serving.kserve.io/v1beta1), its Prometheus Operator objects, and the
model folder its storageUri points to.

Manifests are built as dicts and serialized, never templated. Before they are returned each one is checked
against a JSON Schema: the CRDs' (InferenceService, PodMonitor, PrometheusRule; `deployc/targets/schemas/`) with
their embedded core types (Container, ObjectMeta, LabelSelector) taken from the Kubernetes OpenAPI definitions
that the kubernetes-validate package ships. A manifest that fails is a deployc bug and stops the build.
"""
from __future__ import annotations

import json
import re
from decimal import Decimal
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from deployc import conventions as c
from deployc.errors import DeploycError, InputError
from deployc.render import dump_yaml
from deployc.schema.base import Located, SpecModel, located, name_within, show
from deployc.signing import REQUIRE_ENV, VERIFY_KEY_ENV, verifies_on_serve
from deployc.targets.base import EmitContext, Target
from deployc.targets.bundle import local_config, serving_files
from deployc.targets.common import SERVING_UID
from deployc.targets.requests import dump, v2_request

# Config: `targets.kserve` in deploy.yaml.

# Kubernetes resource quantities deployc accepts: a decimal number and an optional SI / binary suffix.
QUANTITY_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {None: Decimal(1), "m": Decimal("0.001"), "k": Decimal(10) ** 3, "M": Decimal(10) ** 6,
           "G": Decimal(10) ** 9, "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
           "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
           "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60}
DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
# KServe's storage initializer schemes (pvc:// for a volume claim, oci:// for a modelcar image)
STORAGE_URI = r"^(s3|gs|pvc|hdfs|webhdfs|oci|https?)://[^\s]+$"
# registry/repository[:tag][@sha256:digest]: a digest pins the exact image (tag@digest keeps the tag readable)
IMAGE = (r"^[a-z0-9][a-z0-9.-]*(:\d{1,5})?/[a-z0-9._/-]+(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?"
         r"(@sha256:[0-9a-f]{64})?$")
# Label keys: an optional DNS-subdomain prefix (at most 253) and '/', then a name of at most 63; values at most 63.
LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_LABEL_MAX, DNS_SUBDOMAIN_MAX = 63, 253
DURATION = r"^[0-9]+(ms|s|m|h)$"
# KServe's webhook refuses an InferenceService name that does not start with a letter (DNS-1035).
ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# What KServe (0.11+) and Knative derive from the InferenceService name, each limited to 63 characters (a DNS-1035
# label: Service names, label values, a host name's first label):
# - serverless: the Knative Service `<name>-predictor`, its first Revision `<name>-predictor-00001` (Knative
#   numbers revisions with 5 digits) and that revision's Kubernetes Service `<name>-predictor-00001-private`, the
#   longest: so a name has at most 63 - 24 = 39 characters;
# - raw: the Deployment, Service and HPA `<name>-predictor` and the pod label `app: isvc.<name>-predictor`: at
#   most 63 - 15 = 48;
# - both: the host `<name>-predictor-<namespace>.<domain>` (KServe's default domainTemplate
#   `{{ .Name }}-{{ .Namespace }}.{{ .IngressDomain }}`) when the spec names the namespace.
# (Older KServe releases named the component `<name>-predictor-default`; deployc targets the current layout.)
SERVERLESS_DERIVED = (("the Knative Service", "{name}-predictor"),
                      ("the Knative Revision", "{name}-predictor-00001"),
                      ("the revision's Kubernetes Service", "{name}-predictor-00001-private"))
RAW_DERIVED = (("the Deployment and Service", "{name}-predictor"),
               ("the pod label value app", "isvc.{name}-predictor"))
HOST_DERIVED = ("the host name label", "{name}-predictor-{namespace}")
MAX_NAME = {"serverless": DNS_LABEL_MAX - len("-predictor-00001-private"),
            "raw": DNS_LABEL_MAX - len("isvc.-predictor")}


def quantity_value(text: str) -> Decimal:
    """'500m' -> 0.5, '1Gi' -> 1073741824: what Kubernetes compares requests and limits by."""
    m = QUANTITY_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 500m, 2, 512Mi, 1Gi)")
    return Decimal(m.group(1)) * _SUFFIX[m.group(2)]


class Compute(SpecModel):
    cpu: str | None = Field(None, description="CPU cores: a quantity such as 500m or 2.")
    memory: str | None = Field(None, description="Memory: a quantity such as 512Mi or 2Gi.")

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _quantity(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = format(v, "g")
        if isinstance(v, str):
            quantity_value(v)
        return v


class Resources(SpecModel):
    requests: Compute = Field(default_factory=lambda: Compute(cpu="500m", memory="512Mi"),
                              description="What the scheduler reserves per replica.")
    limits: Compute = Field(default_factory=lambda: Compute(cpu="1", memory="1Gi"),
                            description="The most a replica may use (memory over the limit is OOM-killed).")

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        for what in ("cpu", "memory"):
            req, lim = getattr(self.requests, what), getattr(self.limits, what)
            if req is not None and lim is not None and quantity_value(req) > quantity_value(lim):
                raise ValueError(f"requests.{what} {req} is more than limits.{what} {lim}")
        return self


class KServeMonitoring(SpecModel):
    pod_monitor: bool = Field(True, description="Emit a PodMonitor (Prometheus Operator) scraping /metrics.")
    prometheus_rule: bool = Field(True, description="Emit the SLO rules as a PrometheusRule (when the spec has "
                                  "slos).")
    labels: dict[str, str] = Field(default_factory=dict, max_length=20, description="Labels on the PodMonitor and "
                                   "PrometheusRule, matching your Prometheus' podMonitorSelector / ruleSelector "
                                   "(e.g. release: kube-prometheus-stack).")
    scrape_interval: str = Field("30s", pattern=DURATION, description="How often Prometheus scrapes the pods.")

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        return check_labels(v)


def label_key_problem(key: str) -> str | None:
    """Why `key` is no Kubernetes label key ([prefix/]name), or None."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not LABEL_PREFIX.match(prefix) or len(prefix) > DNS_SUBDOMAIN_MAX):
        return (f"the label key prefix {show(prefix)} is not a DNS subdomain (at most {DNS_SUBDOMAIN_MAX} of "
                "lower-case letters, digits, '-' and '.')")
    if not LABEL_NAME.match(name) or len(name) > DNS_LABEL_MAX:
        return (f"the label key {show(key)} is not a Kubernetes label key: the name after an optional prefix/ "
                f"has 1-{DNS_LABEL_MAX} of letters, digits, '-', '_' and '.', a letter or digit at each end")
    return None


def label_value_problem(value: str) -> str | None:
    if not LABEL_VALUE.match(value) or len(value) > DNS_LABEL_MAX:
        return (f"the label value {show(value)} is not a Kubernetes label value: at most {DNS_LABEL_MAX} of "
                "letters, digits, '-', '_' and '.', a letter or digit at each end")
    return None


def check_labels(v: dict[str, str]) -> dict[str, str]:
    """Every key and value Kubernetes accepts; each problem located at its label."""
    problems: list[Located] = []
    for key, value in v.items():
        problem = label_key_problem(key) or label_value_problem(value)
        if problem:
            problems.append(((key,), problem))
    if problems:
        raise located(problems)
    return v


class PodSecurity(SpecModel):
    run_as_user: int = Field(SERVING_UID, ge=1, le=2147483647, description="UID and GID the serving container "
                             "runs as (runAsNonRoot: never root). The Dockerfiles deployc writes create this user "
                             f"({SERVING_UID}); give your image's UID for another image.")
    read_only_root_filesystem: bool = Field(True, description="Mount the image read-only (readOnlyRootFilesystem); "
                                            "/tmp is a writable emptyDir. false for an image that writes elsewhere.")
    automount_service_account_token: bool = Field(False, description="false: the pod gets no Kubernetes API "
                                                  "token (`deployc serve` never calls the API; storage "
                                                  "credentials from the service account's secrets, IRSA and "
                                                  "workload identity do not need it). true leaves the cluster "
                                                  "default (mounted), for storage access that reads the token.")


class KServeConfig(SpecModel):
    storage_uri: str = Field(..., pattern=STORAGE_URI, max_length=1024, description="Where you upload the bundle's "
                             "kserve/model/ folder (s3://, gs://, pvc://, https://, oci://...); use one path per "
                             "model version.")
    runtime: Literal["deployc", "onnx"] = Field("deployc", description="deployc: the `deployc serve` image in a "
                                                "custom container; onnx: KServe's own ONNX runtime (model.onnx only, "
                                                "Open Inference Protocol v2, no deployc metrics).")
    image: str | None = Field(None, pattern=IMAGE, max_length=255, description="The `deployc serve` image "
                              "(runtime deployc; the sagemaker target's Dockerfile builds one).")
    namespace: str | None = Field(None, pattern=DNS_LABEL, description="Namespace of every object (default: the "
                                  "one kubectl uses).")
    service_account: str | None = Field(None, pattern=DNS_LABEL, description="Service account whose secret holds "
                                        "the storage credentials.")
    deployment_mode: Literal["serverless", "raw"] = Field("serverless", description="serverless (Knative: "
                                                          "scale to zero, canaries) or raw (a Deployment + HPA).")
    resources: Resources = Field(default_factory=Resources, description="CPU and memory per replica.")
    min_replicas: int = Field(1, ge=0, le=1000, description="Fewest replicas (0 scales to zero; serverless only).")
    max_replicas: int = Field(3, ge=1, le=1000, description="Most replicas the autoscaler may start.")
    scale_metric: Literal["concurrency", "rps", "cpu"] = Field("concurrency", description="What the autoscaler "
                                                               "tracks (concurrency and rps need serverless).")
    scale_target: int = Field(10, ge=1, le=100000, description="Target per replica: in-flight requests, requests "
                              "per second, or CPU percent.")
    canary_traffic_percent: int | None = Field(None, ge=0, le=100, description="Send this share of traffic to the "
                                               "new revision, the rest to the last ready one (serverless only).")
    timeout_s: int | None = Field(None, ge=1, le=3600, description="Request timeout of the predictor.")
    monitoring: KServeMonitoring = Field(default_factory=KServeMonitoring, description="Prometheus Operator "
                                         "objects (runtime deployc).")
    security: PodSecurity = Field(default_factory=PodSecurity, description="The pod's security settings; "
                                  "seccomp RuntimeDefault, no privilege escalation and no capabilities always apply.")
    kubernetes_version: str = Field("1.30", pattern=r"^1\.[0-9]{2}$", description="Kubernetes minor version whose "
                                    "API schemas the manifests are checked against.")

    @model_validator(mode="after")
    def _consistent(self) -> KServeConfig:
        if self.runtime == "deployc" and self.image is None:
            raise ValueError("runtime deployc needs image: the `deployc serve` image to run")
        if self.runtime == "onnx" and self.image is not None:
            raise ValueError("image only applies to runtime deployc; runtime onnx uses KServe's ONNX runtime")
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be at least min_replicas")
        if self.deployment_mode == "raw":
            if self.scale_metric in ("concurrency", "rps"):
                raise ValueError(f"scale_metric {self.scale_metric} needs deployment_mode serverless (Knative); "
                                 "raw mode scales on cpu")
            if self.canary_traffic_percent is not None:
                raise ValueError("canary_traffic_percent needs deployment_mode serverless")
            if self.min_replicas == 0:
                raise ValueError("min_replicas 0 (scale to zero) needs deployment_mode serverless")
        if self.scale_metric == "cpu" and self.scale_target > 100:
            raise ValueError("scale_target is a CPU percent (1-100) with scale_metric cpu")
        return self

    def spec_name_problems(self, spec_name: str) -> list[Located]:
        """The InferenceService is named after the spec: KServe's name rule and the 63-character limit on each
        name it and Knative derive (see SERVERLESS_DERIVED, RAW_DERIVED)."""
        where = ("name",)
        problems: list[Located] = []
        if not ISVC_NAME.match(spec_name):
            problems.append((where, "targets.kserve: KServe needs an InferenceService name that starts with a "
                                    f"letter, not {spec_name!r}"))
        serverless = self.deployment_mode == "serverless"
        derived: tuple[tuple[str, str], ...] = SERVERLESS_DERIVED if serverless else RAW_DERIVED
        if self.namespace:
            derived += (HOST_DERIVED,)
        for what, template in derived:
            problem = name_within(template.format(name=spec_name, namespace=self.namespace), DNS_LABEL_MAX,
                                  f"targets.kserve ({self.deployment_mode}): {what}")
            if problem:
                limit = MAX_NAME[self.deployment_mode]
                if what == HOST_DERIVED[0]:
                    limit = min(limit, DNS_LABEL_MAX - len(f"-predictor-{self.namespace}"))
                problems.append((where, f"{problem}: use a name of at most {limit} characters"))
                break  # the longest derived name says it; the shorter ones would repeat it
        return problems


# The target.

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
    model_formats = ("onnx", "openvino")

    def formats(self, cfg: Any) -> tuple[str, ...]:
        """runtime deployc serves what `deployc serve` runs; KServe's onnx runtime loads model.onnx only."""
        return ("onnx",) if cfg.runtime == "onnx" else self.model_formats

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
        files[f"{KSERVE_DIR}/request.json"] = dump(v2_request(ctx))  # for /v2/models/<name>/infer
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
    if cfg.runtime == "deployc" and verifies_on_serve(ctx.spec):  # the public key comes from a ConfigMap you create
        env += [{"name": VERIFY_KEY_ENV, "valueFrom": {"configMapKeyRef": {"name": f"{ctx.spec.name}-signing-key",
                                                                           "key": "public.pem"}}},
                {"name": REQUIRE_ENV, "value": "1"}]
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
