"""`targets.sagemaker`: a real-time (or serverless) SageMaker endpoint, its autoscaling and alarms."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from deployc.schema.base import SpecModel

ROLE_ARN = r"^arn:aws[a-z-]*:iam::\d{12}:role/[A-Za-z0-9_+=,.@/-]{1,512}$"
S3_URI = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9_!\-.*'()/=+]*)?$"
REGION = r"^(us|eu|ap|sa|ca|me|af|il|mx)(-gov)?-(north|south|east|west|central|northeast|southeast|northwest|southwest)-\d$"
KMS_KEY = r"^(arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)/[A-Za-z0-9_/-]+|[0-9a-f-]{36}|alias/[A-Za-z0-9_/-]+)$"


class Serverless(SpecModel):
    memory_mb: Literal[1024, 2048, 3072, 4096, 5120, 6144] = Field(2048)
    max_concurrency: int = Field(10, ge=1, le=200)


class Autoscaling(SpecModel):
    min_instances: int = Field(1, ge=1, le=1000)
    max_instances: int = Field(4, ge=1, le=1000)
    target_invocations_per_instance: float = Field(..., gt=0)
    scale_in_cooldown_s: int = Field(300, ge=0, le=86400)
    scale_out_cooldown_s: int = Field(60, ge=0, le=86400)

    @model_validator(mode="after")
    def _bounds(self) -> "Autoscaling":
        if self.max_instances < self.min_instances:
            raise ValueError("max_instances must be at least min_instances")
        return self


class Vpc(SpecModel):
    subnets: list[str] = Field(..., min_length=1, max_length=16)
    security_groups: list[str] = Field(..., min_length=1, max_length=5)


class DataCapture(SpecModel):
    sampling_percent: int = Field(..., ge=0, le=100)
    destination: str = Field(..., pattern=S3_URI)
    capture: list[Literal["Input", "Output"]] = Field(default_factory=lambda: ["Input", "Output"])


class Rollout(SpecModel):
    strategy: Literal["all-at-once", "canary", "linear"] = Field("all-at-once")
    canary_percent: float | None = Field(None, gt=0, lt=100, description="canary: traffic share of the first step.")
    linear_step_percent: float | None = Field(None, gt=0, lt=100, description="linear: traffic share per step.")
    wait_s: int = Field(300, ge=0, le=3600, description="Wait between traffic shifts.")
    termination_wait_s: int = Field(600, ge=0, le=3600)
    rollback_on_alarms: bool = Field(True, description="Roll back when a generated CloudWatch alarm fires.")


class SageMakerTarget(SpecModel):
    region: str = Field(..., pattern=REGION)
    role_arn: str = Field(..., pattern=ROLE_ARN, description="Execution role SageMaker assumes.")
    image_uri: str = Field(..., min_length=1, description="The `deployc serve` image (the bundle ships its Dockerfile).")
    s3_prefix: str = Field(..., pattern=S3_URI, description="Where model.tar.gz is uploaded, keyed by its hash.")
    instance_type: str | None = Field("ml.c6i.large")
    initial_instance_count: int = Field(1, ge=1, le=1000)
    serverless: Serverless | None = Field(None, description="Serverless endpoint instead of instances.")
    autoscaling: Autoscaling | None = None
    kms_key: str | None = Field(None, pattern=KMS_KEY)
    vpc: Vpc | None = None
    network_isolation: bool = False
    data_capture: DataCapture | None = None
    rollout: Rollout = Field(default_factory=Rollout)
    tags: dict[str, str] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)
