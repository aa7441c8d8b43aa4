"""The `slos:` list: what "healthy" means for the deployed model (availability, latency, stability)."""
from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from deployc.schema.base import Name, SpecModel, duration_seconds

# Burn-rate conditions, named by their long window (see docs/monitoring.md): 1h and 6h page, 1d and 3d ticket.
LongWindow = Literal["1h", "6h", "1d", "3d"]
# A latency threshold becomes a bucket boundary of the server's histogram: finer than this it is not honoured.
LATENCY_RESOLUTION_MS = Decimal("0.1")
# Each extra bucket multiplies the histogram's series; past this many new thresholds a spec is refused.
MAX_EXTRA_LATENCY_BUCKETS = 20

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RESERVED_LABELS = {"alertname", "slo", "model", "severity"}
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.S)
_LABEL_REF = re.compile(r"^\s*\$labels\.[a-zA-Z_][a-zA-Z0-9_]*\s*$")


def _check_names(d: dict[str, str], what: str, reserved: set[str]) -> dict[str, str]:
    for k in d:
        if not _LABEL_NAME.match(k) or k.startswith("__"):
            raise ValueError(f"{what} name {k!r} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)")
        if k in reserved:
            raise ValueError(f"{what} {k!r} is set by deployc; choose another name")
    return d


def _check_templates(text: str, where: str) -> None:
    """Only `{{ $labels.x }}` is allowed: the generated promtool tests must predict every annotation exactly."""
    for m in _TEMPLATE.finditer(text):
        if not _LABEL_REF.match(m.group(1)):
            raise ValueError(f"{where}: only {{{{ $labels.<name> }}}} templates are supported, not {m.group(0)!r}")
    rest = _TEMPLATE.sub("", text)
    if "{{" in rest or "}}" in rest:
        raise ValueError(f"{where}: unmatched '{{{{' or '}}}}' (Prometheus reads this text as a template)")


def _checked_description(v: str | None) -> str | None:
    if v is not None:
        _check_templates(v, "description")
    return v


def _severity(default: str, of: str = "the alert") -> Any:
    """The `severity` label field of an alert (no braces or newlines: it is written into rule YAML)."""
    return Field(default, min_length=1, max_length=64, pattern=r"^[^{}\n]+$",
                 description=f"The `severity` label of {of}.")


class AlertTier(SpecModel):
    enabled: bool = Field(True, description="Set false to drop this alert (both of its burn-rate conditions).")
    severity: str = _severity("page")


class TicketTier(AlertTier):
    severity: str = _severity("ticket")


class AlertMeta(SpecModel):
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on every alert (plain text).")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra annotations on every alert; "
                                        "{{ $labels.<name> }} templates are kept verbatim for Prometheus.")
    runbook_url: str | None = Field(None, max_length=2048, description="Added as the runbook_url annotation.")
    sns_topic_arn: str | None = Field(None, pattern=r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}$",
                                      description="SNS topic the CloudWatch alarms notify (sagemaker target).")

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in _check_names(v, "label", _RESERVED_LABELS).items():
            if "{{" in val:
                raise ValueError(f"label {k!r}: templates are not supported in labels")
        return v

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in _check_names(v, "annotation", {"runbook_url"}).items():
            _check_templates(val, f"annotation {k!r}")
        return v

    @field_validator("runbook_url")
    @classmethod
    def _runbook(cls, v: str | None) -> str | None:
        if v is not None:
            _check_templates(v, "runbook_url")
        return v


class Alerting(AlertMeta):
    page: AlertTier = Field(default_factory=AlertTier,
                            description="Fast burn: the 1h (short 5m) and 6h (short 30m) conditions.")
    ticket: TicketTier = Field(default_factory=TicketTier,
                              description="Slow burn: the 1d (short 2h) and 3d (short 6h) conditions.")
    disabled_windows: list[LongWindow] = Field(default_factory=list, max_length=4,
                                               description="Burn-rate conditions to drop, named by their long "
                                               "window (1h, 6h page; 1d, 3d ticket).")

    @field_validator("disabled_windows")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("a window is listed more than once")
        return v


class StabilityAlerting(AlertMeta):
    enabled: bool = Field(True, description="Set false to keep the drift recording rules but drop the alert.")
    severity: str = _severity("ticket", "the drift alert")


class _WindowedSLO(SpecModel):
    name: Name | None = Field(None, description="Defaults to the kind; unique within the spec.")
    description: str | None = Field(None, max_length=500, description="Free text, shown in alert annotations.")
    objective: float = Field(..., gt=0, lt=100, description="Target share of good events, in percent (99.9).")
    window: Literal["28d", "30d", "7d"] = Field("30d", description="The SLO period (error budget window).")
    alerting: Alerting = Field(default_factory=Alerting, description="Burn-rate alerts: tiers, labels, routing.")

    @field_validator("description")
    @classmethod
    def _description(cls, v: str | None) -> str | None:
        return _checked_description(v)

    @field_validator("objective")
    @classmethod
    def _digits(cls, v: float) -> float:
        if Decimal(repr(v)).as_tuple().exponent < -5:  # type: ignore[operator]
            raise ValueError("use at most 5 decimal places (99.99999)")
        return v


class AvailabilitySLO(_WindowedSLO):
    kind: Literal["availability"] = Field(description="Share of inference requests that did not fail (5xx).")


class LatencySLO(_WindowedSLO):
    kind: Literal["latency"] = Field(description="Share of inference requests faster than threshold_ms.")
    threshold_ms: float = Field(..., ge=0.1, le=600000, description="Becomes a bucket of the server's histogram; "
                                "a multiple of 0.1 ms between 0.1 ms and 10 minutes.")

    @field_validator("threshold_ms")
    @classmethod
    def _resolution(cls, v: float) -> float:
        if Decimal(repr(v)) % LATENCY_RESOLUTION_MS != 0:
            raise ValueError(f"{v} ms cannot be a histogram bucket: thresholds are honoured to 0.1 ms "
                             f"(use e.g. {float(Decimal(repr(v)).quantize(LATENCY_RESOLUTION_MS))})")
        return v


class StabilitySLO(SpecModel):
    kind: Literal["stability"] = Field(description="Live predicted-class distribution vs the build's reference "
                                       "distribution on data.eval.")
    name: Name | None = Field(None, description="Defaults to the kind; unique within the spec.")
    description: str | None = Field(None, max_length=500, description="Free text, shown in alert annotations.")
    metric: Literal["psi", "tv"] = Field("psi", description="Population stability index or total variation.")
    max_drift: float = Field(0.2, gt=0, description="Alert when the drift exceeds this over `window` "
                             "(tv lies in [0, 1]).")
    window: str = Field("1h", description="Window of live traffic compared with the reference (5m to 7d).")
    for_: str = Field("15m", alias="for", description="How long the drift must last before the alert fires "
                      "(at most 1d).")
    min_requests: int = Field(100, ge=1, description="No alert when fewer predictions than this fell in the window.")
    alerting: StabilityAlerting = Field(default_factory=StabilityAlerting, description="The drift alert.")

    @field_validator("description")
    @classmethod
    def _description(cls, v: str | None) -> str | None:
        return _checked_description(v)

    @field_validator("window")
    @classmethod
    def _window(cls, v: str) -> str:
        if not 300 <= duration_seconds(v) <= 7 * 86400 or v.endswith("ms"):
            raise ValueError(f"window {v!r} must lie between 5m and 7d")
        return v

    @field_validator("for_")
    @classmethod
    def _for(cls, v: str) -> str:
        if duration_seconds(v) > 86400 or v.endswith("ms"):
            raise ValueError(f"for {v!r} must be at most 1d, in s, m, h or d")
        return v

    @model_validator(mode="after")
    def _tv_range(self) -> StabilitySLO:
        if self.metric == "tv" and self.max_drift >= 1:
            raise ValueError("total variation never exceeds 1: set max_drift below 1")
        return self


class InputDriftAlerting(AlertMeta):
    enabled: bool = Field(True, description="Set false to keep the recording rules but drop both alerts.")
    severity: str = _severity("ticket", "the input alerts")


FEATURE_NAME = r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,127}\[[0-9]{1,9}\]$"


class InputDriftSLO(SpecModel):
    kind: Literal["input-drift"] = Field(description="Live distributions of the most important input features vs "
                                         "their bins on data.eval (PSI per feature), and the share of non-finite "
                                         "or out-of-range input values.")
    name: Name | None = Field(None, description="Defaults to the kind; unique within the spec.")
    description: str | None = Field(None, max_length=500, description="Free text, shown in alert annotations.")
    features: list[Annotated[str, Field(pattern=FEATURE_NAME)]] | None = Field(
        None, min_length=1, max_length=50, description="Features to watch, as `input[i]` (i: the flat index of an "
        "element of one row). Default: the explanation's top_k most important, else the top_k of largest variance.")
    top_k: int = Field(5, ge=1, le=50, description="Features watched when `features` is not set.")
    bins: int = Field(10, ge=2, le=50, description="Quantile bins of each feature on data.eval.")
    max_psi: float = Field(0.2, gt=0, description="Alert when a feature's PSI over `window` exceeds this.")
    max_bad_share: float = Field(0.01, ge=0, lt=1, description="Alert when the share of an input's values that "
                                 "are non-finite or outside data.eval's range exceeds this over `window`.")
    window: str = Field("1h", description="Window of live traffic compared with the reference (5m to 7d).")
    for_: str = Field("15m", alias="for", description="How long a condition must last before its alert fires "
                      "(at most 1d).")
    min_rows: int = Field(100, ge=1, description="No alert when fewer rows than this fell in the window.")
    alerting: InputDriftAlerting = Field(default_factory=InputDriftAlerting, description="The two alerts.")

    @field_validator("description")
    @classmethod
    def _description(cls, v: str | None) -> str | None:
        return _checked_description(v)

    @field_validator("window")
    @classmethod
    def _window(cls, v: str) -> str:
        return StabilitySLO._window(v)

    @field_validator("for_")
    @classmethod
    def _for(cls, v: str) -> str:
        return StabilitySLO._for(v)

    @field_validator("features")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("a feature is listed more than once")
        return v


AnySLO = AvailabilitySLO | LatencySLO | StabilitySLO | InputDriftSLO
SLO = Annotated[AnySLO, Field(discriminator="kind")]


def input_drift_problems(slos: Sequence[AnySLO], has_eval: bool) -> list[tuple[tuple[str | int, ...], str]]:
    """At most one input-drift SLO, and only with data.eval (its bins come from there)."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    drift = [i for i, s in enumerate(slos) if isinstance(s, InputDriftSLO)]
    found += [(("slos", i, "kind"), "one input-drift SLO per spec: list every feature in its `features`")
              for i in drift[1:]]
    if drift and not has_eval:
        found.append((("slos", drift[0], "kind"), "input-drift compares with data.eval's inputs: set data.eval"))
    return found


def slo_name(slo: AnySLO) -> str:
    return slo.name or slo.kind


def threshold_seconds(threshold_ms: float) -> float:
    """The exact float the server's bucket and the rules' `le` label share (250 ms -> 0.25)."""
    return float(Decimal(repr(threshold_ms)) / 1000)


def latency_threshold_problems(
    slos: Sequence[AnySLO], default_buckets: Sequence[float]
) -> list[tuple[tuple[str | int, ...], str]]:
    """Refuse the thresholds past MAX_EXTRA_LATENCY_BUCKETS new buckets, located on the first one too many."""
    extra: list[float] = []
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for i, s in enumerate(slos):
        if not isinstance(s, LatencySLO):
            continue
        sec = threshold_seconds(s.threshold_ms)
        if sec in default_buckets or sec in extra:
            continue
        extra.append(sec)
        if len(extra) == MAX_EXTRA_LATENCY_BUCKETS + 1:
            problems.append((("slos", i, "threshold_ms"), f"more than {MAX_EXTRA_LATENCY_BUCKETS} distinct latency "
                             "thresholds: each adds a bucket to every request-duration series; reuse thresholds"))
    return problems
