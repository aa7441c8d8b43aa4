"""PromQL building blocks over the metrics `deployc serve` exports (names from deployc.conventions)."""
from __future__ import annotations

import json

from deployc import conventions as C
from deployc.monitoring.model import BudgetSLO


def quote(value: str) -> str:
    """A PromQL string literal: JSON's escapes are a subset of the Go escapes PromQL reads."""
    return json.dumps(value, ensure_ascii=False)


def le_label(seconds: float) -> str:
    """The `le` label text of a bucket as prometheus_client writes it (Python repr; 1.0 stays "1.0")."""
    text = repr(float(seconds))
    if "e" in text:  # never reached for thresholds the schema accepts (0.1 ms .. 600 s)
        raise ValueError(f"bucket {seconds} would be written in exponent form")
    return text


def selector(metric: str, model: str, **matchers: str) -> str:
    """`metric{model="m",k=~"v"}`: a matcher value starting with '~' is a regex match."""
    parts = [f"{C.LABEL_MODEL}={quote(model)}"]
    for key, val in matchers.items():
        parts.append(f"{key}=~{quote(val[1:])}" if val.startswith("~") else f"{key}={quote(val)}")
    return metric + "{" + ",".join(parts) + "}"


def infer_routes() -> str:
    return "~" + "|".join(C.INFER_ROUTES)


def sli_error_ratio(slo: BudgetSLO, model: str, window: str) -> str:
    """The share of bad inference requests over `window`; no series at all when there was no traffic."""
    routes = infer_routes()
    if slo.kind == "availability":
        bad = selector(C.METRIC_REQUESTS, model, **{C.LABEL_ROUTE: routes, C.LABEL_CODE: "~5.."})
        total = selector(C.METRIC_REQUESTS, model, **{C.LABEL_ROUTE: routes})
        # A label set that never saw a 5xx has no series: `or vector(0)` keeps the ratio defined.
        return f"(sum(rate({bad}[{window}])) or vector(0)) / sum(rate({total}[{window}]))"
    assert slo.threshold_s is not None
    count = selector(C.METRIC_REQUEST_DURATION + "_count", model, **{C.LABEL_ROUTE: routes})
    fast = selector(C.METRIC_REQUEST_DURATION + "_bucket", model,
                    **{C.LABEL_ROUTE: routes, "le": le_label(slo.threshold_s)})
    return f"(sum(rate({count}[{window}])) - sum(rate({fast}[{window}]))) / sum(rate({count}[{window}]))"


def slo_selector(metric: str, slo: str, model: str) -> str:
    return f"{metric}{{{C.LABEL_SLO}={quote(slo)},{C.LABEL_MODEL}={quote(model)}}}"


def sli_name(window: str) -> str:
    return C.SLI_ERROR_RATIO.format(window=window)
