"""The resolved SLOs every monitoring emitter reads: defaults filled, budgets and burn factors computed exactly."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from deployc.errors import InputError
from deployc.schema.base import duration_seconds
from deployc.schema.slo import (
    AlertMeta,
    AvailabilitySLO,
    InputDriftSLO,
    LatencySLO,
    StabilitySLO,
    slo_name,
    threshold_seconds,
)
from deployc.schema.spec import DeploySpec


@dataclass(frozen=True)
class BurnCondition:
    """One window pair of the SRE workbook: fires when both windows burn faster than `factor`."""

    tier: str  # "page" or "ticket"
    long: str
    short: str
    budget_share: Fraction  # share of the period's budget this condition allows to be spent in `long`

    def factor(self, period: str) -> Fraction:
        """Budget share consumed x period hours / long-window hours (30d, 1h, 2% -> 14.4)."""
        return self.budget_share * Fraction(int(duration_seconds(period))) / Fraction(int(duration_seconds(self.long)))


# The Google SRE workbook's table (chapter 5, "multiwindow, multi-burn-rate alerts").
BURN_CONDITIONS = (
    BurnCondition("page", "1h", "5m", Fraction(2, 100)),
    BurnCondition("page", "6h", "30m", Fraction(5, 100)),
    BurnCondition("ticket", "1d", "2h", Fraction(10, 100)),
    BurnCondition("ticket", "3d", "6h", Fraction(10, 100)),
)


@dataclass(frozen=True)
class Tier:
    name: str  # page / ticket
    severity: str
    conditions: tuple[BurnCondition, ...]  # enabled ones only; empty means no alert


@dataclass(frozen=True)
class BudgetSLO:
    """An availability or latency SLO: a ratio of bad events with an error budget over `period`."""

    name: str
    kind: str  # availability / latency
    description: str | None
    objective: Decimal  # as a ratio (0.999)
    period: str  # 30d
    threshold_s: float | None  # latency only: the `le` bucket
    threshold_ms: float | None
    tiers: tuple[Tier, ...]
    alerting: AlertMeta

    @property
    def budget(self) -> Fraction:
        """The error budget as an exact ratio (99.9% -> 1/1000)."""
        return Fraction(1 - self.objective)

    @property
    def period_days(self) -> int:
        return int(duration_seconds(self.period) // 86400)

    def factor(self, cond: BurnCondition) -> Fraction:
        return cond.factor(self.period)


@dataclass(frozen=True)
class DriftSLO:
    """A stability SLO: the live predicted-class distribution against the build's reference."""

    name: str
    description: str | None
    metric: str  # psi / tv
    max_drift: float
    window: str
    for_: str
    min_requests: int
    classes: tuple[str, ...]
    reference: tuple[float, ...]
    severity: str
    enabled: bool
    alerting: AlertMeta


@dataclass(frozen=True)
class WatchedFeature:
    name: str  # input[i]
    reference: tuple[float, ...]  # data.eval's share of rows in each bin ("0", "1", ...)


@dataclass(frozen=True)
class InputSLO:
    """An input-drift SLO, resolved with the build's input profile."""

    name: str
    description: str | None
    max_psi: float
    max_bad_share: float
    window: str
    for_: str
    min_rows: int
    features: tuple[WatchedFeature, ...]
    inputs: tuple[str, ...]  # inputs whose values are range-checked
    severity: str
    enabled: bool
    alerting: AlertMeta


def resolve_input_slo(s: InputDriftSLO, profile: Mapping[str, Any] | None) -> InputSLO:
    if profile is None:
        raise InputError("an input-drift SLO needs the build's input profile (step profile:inputs, on data.eval)")
    feats = []
    for f in profile.get("features", []):
        ref = tuple(float(p) for p in f["reference"])
        if not ref or any(not math.isfinite(p) or p < 0 for p in ref) or abs(sum(ref) - 1) > 1e-6:
            raise InputError(f"feature {f['name']}: reference bin shares must sum to 1, got {list(ref)}")
        feats.append(WatchedFeature(str(f["name"]), ref))
    missing = [f for f in s.features or () if f not in {w.name for w in feats}]
    if missing:
        raise InputError(f"input-drift SLO: the input profile has no reference bins for feature {missing[0]!r} "
                         "(data.eval holds no finite value of it, or the profile predates the SLO's `features`)")
    return InputSLO(name=slo_name(s), description=s.description, max_psi=s.max_psi, max_bad_share=s.max_bad_share,
                    window=s.window, for_=s.for_, min_rows=s.min_rows, features=tuple(feats),
                    inputs=tuple(sorted(profile.get("inputs", {}))), severity=s.alerting.severity,
                    enabled=s.alerting.enabled, alerting=s.alerting)


def objective_ratio(percent: float) -> Decimal:
    return Decimal(repr(percent)) / 100


def resolve(spec: DeploySpec, reference: tuple[float, ...] | None, classes: tuple[str, ...] | None,
            budget_only: bool = False, input_profile: Mapping[str, Any] | None = None
            ) -> list[BudgetSLO | DriftSLO | InputSLO]:
    """Lower the spec's SLOs; `budget_only` skips stability and input-drift SLOs (for outputs that cannot
    express them); `input_profile`: serving.json's `input_monitor` (the input-drift SLO's reference bins)."""
    out: list[BudgetSLO | DriftSLO | InputSLO] = []
    for s in spec.slos:
        if isinstance(s, InputDriftSLO):
            if not budget_only:
                out.append(resolve_input_slo(s, input_profile))
            continue
        if isinstance(s, StabilitySLO):
            if budget_only:
                continue
            if reference is None or classes is None:
                raise ValueError("a stability SLO needs the reference distribution and class names")
            out.append(DriftSLO(
                name=slo_name(s), description=s.description, metric=s.metric, max_drift=s.max_drift,
                window=s.window, for_=s.for_, min_requests=s.min_requests, classes=classes, reference=reference,
                severity=s.alerting.severity, enabled=s.alerting.enabled, alerting=s.alerting,
            ))
            continue
        assert isinstance(s, (AvailabilitySLO, LatencySLO))
        tiers = []
        for tier_name in ("page", "ticket"):
            tier_cfg = getattr(s.alerting, tier_name)
            conds = tuple(c for c in BURN_CONDITIONS
                          if c.tier == tier_name and c.long not in s.alerting.disabled_windows and tier_cfg.enabled)
            tiers.append(Tier(tier_name, tier_cfg.severity, conds))
        ms = s.threshold_ms if isinstance(s, LatencySLO) else None
        out.append(BudgetSLO(
            name=slo_name(s), kind=s.kind, description=s.description, objective=objective_ratio(s.objective),
            period=s.window, threshold_s=threshold_seconds(ms) if ms is not None else None, threshold_ms=ms,
            tiers=tuple(tiers), alerting=s.alerting,
        ))
    return out


def num(x: Fraction | Decimal | float | int) -> str:
    """A number as rules and tests print it: at most 6 significant digits (14.4, 0.933333, 0.001)."""
    return f"{float(x):.6g}"
