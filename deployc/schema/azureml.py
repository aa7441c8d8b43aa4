"""`targets.azureml`: an Azure ML managed online endpoint and one deployment running `deployc serve`."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from deployc.schema.base import Located, SpecModel, one_of

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


class AzureMLTarget(SpecModel):
    endpoint_name: str | None = Field(None, pattern=AZURE_NAME, description="Endpoint name, unique in the "
                                      "Azure region (default: the spec name); 3-32 letters, digits and '-'.")
    deployment_name: str = Field("blue", pattern=AZURE_NAME, description="Deployment name in the endpoint.")
    auth_mode: Literal["key", "aml_token", "aad_token"] = Field("key", description="How clients authenticate.")
    image: str = Field(..., max_length=1024, pattern=IMAGE, description="The serving image, built from the "
                       "bundle's Dockerfile (ACR: REGISTRY.azurecr.io/IMAGE:TAG).")
    instance_type: str = Field(DEFAULT_INSTANCE_TYPE, description="VM size of each instance.")
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

    @field_validator("instance_type")
    @classmethod
    def _instance_type(cls, v: str) -> str:
        return one_of(v, INSTANCE_TYPES, "a managed online endpoint VM size", "docs/azureml.md")

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
    def _count_in_range(self) -> AzureMLTarget:
        a = self.autoscaling
        if a is not None and not a.min_instances <= self.instance_count <= a.max_instances:
            raise ValueError(f"instance_count {self.instance_count} is outside autoscaling min_instances.."
                             f"max_instances ({a.min_instances}..{a.max_instances})")
        return self
