"""Verification gates: the spec's limits checked on each shipped artifact's measured figures."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deployc.compiler.resolved import GateLimits
from deployc.schema.spec import Gates


@dataclass(frozen=True)
class GateCheck:
    artifact: str
    gate: str
    limit: float
    value: float | None
    passed: bool

    def __str__(self) -> str:
        shown = "not measured" if self.value is None else f"{self.value:g}"
        return f"{self.gate}: limit {self.limit:g}, measured {shown}"


def _values(reference: dict[str, Any], figures: dict[str, Any]) -> dict[str, tuple[float | None, bool]]:
    """gate name -> (measured value, True when a larger value is worse)."""
    def drop(key: str) -> float | None:
        got, ref = figures.get(key), reference.get(key)
        return round(ref - got, 6) if got is not None and ref is not None else None

    size = figures.get("size_bytes")
    return {
        "max_accuracy_drop": (drop("accuracy"), True),
        "min_agreement": (figures.get("agreement"), False),
        "max_abs_error": (figures.get("max_abs_error"), True),
        "max_relative_error": (figures.get("relative_error"), True),
        "max_auc_drop": (drop("auc"), True),
        "max_r2_drop": (drop("r2"), True),
        "max_size_mb": (round(size / 1e6, 6) if size is not None else None, True),
        # batch-1 p99 as deployc.ml.measure defines it, the same for ONNX, TFLite and SavedModel artifacts
        "max_latency_p99_ms": (figures.get("latency_p99_ms"), True),
        # deployc.ml.explain.agreement: the smallest of its three agreement figures
        "min_attribution_agreement": (figures.get("attribution_agreement"), False),
    }


def limits(gates: GateLimits | Gates) -> tuple[tuple[str, float], ...]:
    """(gate, limit) of each gate set, from the resolved model's limits or the spec's `gates:` mapping."""
    return (gates if isinstance(gates, GateLimits) else GateLimits(**gates.model_dump())).limits()


def check(gates: GateLimits | Gates, reference: dict[str, Any], figures: dict[str, Any], artifact: str
          ) -> list[GateCheck]:
    out = []
    values = _values(reference, figures)
    for gate, limit in limits(gates):
        value, larger_is_worse = values[gate]
        passed = value is not None and (value <= limit if larger_is_worse else value >= limit)
        out.append(GateCheck(artifact, gate, limit, value, passed))
    return out


def failures(gates: GateLimits | Gates, reference: dict[str, Any], figures: dict[str, Any], artifact: str = ""
             ) -> list[GateCheck]:
    return [c for c in check(gates, reference, figures, artifact) if not c.passed]


def table(checks: list[GateCheck]) -> str:
    rows = [("artifact", "gate", "limit", "measured", "result")]
    rows += [(c.artifact, c.gate, f"{c.limit:g}", "n/a" if c.value is None else f"{c.value:g}",
              "pass" if c.passed else "FAIL") for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)
