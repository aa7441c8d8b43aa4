"""The `slos:` list: what "healthy" means for the deployed model (availability, latency, stability)."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator

from deployc.schema.base import Name, SpecModel, duration_seconds


class AlertTier(SpecModel):
    enabled: bool = Field(True, description="Set false to drop this burn-rate tier.")
    severity: str = Field(..., min_length=1, max_length=64, description="The `severity` label of the alert.")


class Alerting(SpecModel):
    page: AlertTier = Field(default_factory=lambda: AlertTier(severity="page"),
                            description="Fast burn (14.4x over 1h / 6x over 6h for 30d).")
    ticket: AlertTier = Field(default_factory=lambda: AlertTier(severity="ticket"),
                              description="Slow burn (3x over 1d / 1x over 3d for 30d).")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on every alert.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra annotations on every alert; "
                                        "Prometheus templates such as {{ $labels.model }} are kept verbatim.")
    runbook_url: str | None = Field(None, description="Added as the runbook_url annotation.")
    sns_topic_arn: str | None = Field(None, pattern=r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}$",
                                      description="SNS topic the CloudWatch alarms notify (sagemaker target).")


class _WindowedSLO(SpecModel):
    name: Name | None = Field(None, description="Defaults to the kind; unique within the spec.")
    description: str | None = Field(None, max_length=500)
    objective: float = Field(..., gt=0, lt=100, description="Target share of good events, in percent (99.9).")
    window: Literal["28d", "30d", "7d"] = Field("30d", description="The SLO period (error budget window).")
    alerting: Alerting = Field(default_factory=Alerting)


class AvailabilitySLO(_WindowedSLO):
    kind: Literal["availability"] = Field(description="Share of inference requests that did not fail (5xx).")


class LatencySLO(_WindowedSLO):
    kind: Literal["latency"] = Field(description="Share of inference requests faster than threshold_ms.")
    threshold_ms: float = Field(..., gt=0, le=600000, description="Becomes a bucket of the server's histogram.")


class StabilitySLO(SpecModel):
    kind: Literal["stability"] = Field(description="Live predicted-class distribution vs the build's reference "
                                       "distribution on data.eval.")
    name: Name | None = Field(None, description="Defaults to the kind; unique within the spec.")
    description: str | None = Field(None, max_length=500)
    metric: Literal["psi", "tv"] = Field("psi", description="Population stability index or total variation.")
    max_drift: float = Field(0.2, gt=0, description="Alert when the drift exceeds this over `window`.")
    window: str = Field("1h", description="Window of live traffic compared with the reference (e.g. 1h).")
    for_: str = Field("15m", alias="for", description="How long the drift must last before the alert fires.")
    min_requests: int = Field(100, ge=1, description="No alert when fewer predictions than this fell in the window.")
    severity: str = Field("ticket", min_length=1, max_length=64)
    alerting: Alerting = Field(default_factory=Alerting)

    @field_validator("window", "for_")
    @classmethod
    def _duration(cls, v: str) -> str:
        duration_seconds(v)
        return v


SLO = Annotated[Union[AvailabilitySLO, LatencySLO, StabilitySLO], Field(discriminator="kind")]


def slo_name(slo: AvailabilitySLO | LatencySLO | StabilitySLO) -> str:
    return slo.name or slo.kind
