"""`targets.kserve`: a KServe InferenceService (Kubernetes) with Prometheus Operator monitoring."""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from deployc.schema.base import SpecModel

# Kubernetes resource quantities deployc accepts: a decimal number and an optional SI / binary suffix.
QUANTITY_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {None: Decimal(1), "m": Decimal("0.001"), "k": Decimal(10) ** 3, "M": Decimal(10) ** 6,
           "G": Decimal(10) ** 9, "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
           "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
           "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60}
DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
# KServe's storage initializer schemes (pvc:// for a volume claim, oci:// for a modelcar image)
STORAGE_URI = r"^(s3|gs|pvc|hdfs|webhdfs|oci|https?)://[^\s]+$"
IMAGE = r"^[a-z0-9][a-z0-9.-]*(:\d{1,5})?/[a-z0-9._/-]+(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127}|@sha256:[0-9a-f]{64})?$"
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
DURATION = r"^[0-9]+(ms|s|m|h)$"


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
    def _requests_within_limits(self) -> "Resources":
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


def check_labels(v: dict[str, str]) -> dict[str, str]:
    for key, value in v.items():
        if not LABEL_KEY.match(key):
            raise ValueError(f"{key!r} is not a Kubernetes label key ([prefix/]name, letters, digits, -_.)")
        if not LABEL_VALUE.match(value):
            raise ValueError(f"label {key}: {value!r} is not a label value (at most 63 of letters, digits, -_.)")
    return v


class KServeTarget(SpecModel):
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
    kubernetes_version: str = Field("1.30", pattern=r"^1\.[0-9]{2}$", description="Kubernetes minor version whose "
                                    "API schemas the manifests are checked against.")

    @model_validator(mode="after")
    def _consistent(self) -> "KServeTarget":
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
