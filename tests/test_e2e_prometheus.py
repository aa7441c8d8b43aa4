"""End to end: `deployc build` rules loaded by a real Prometheus scraping a real `deployc serve`.

The SLI values Prometheus records must equal what the server's own counters say for the same traffic.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_deployc
from prom_support import Prometheus, prometheus_binary, wait_for
from prometheus_client.parser import text_string_to_metric_families
from serve_support import Server

pytestmark = pytest.mark.skipif(prometheus_binary() is None,
                                reason="Debian's `prometheus` package is not installed (make test installs it)")

SPEC = """\
apiVersion: deployc/v1
name: digits
version: 1.0.0
model: {path: model.keras, labels: labels.txt}
data:
  eval: {path: data/eval.npz, x: x, y: y}
measure: {min_seconds: 0.1}
targets:
  local: {batching: {enabled: false}}
slos:
  - {kind: availability, objective: 99.9}
  - {kind: latency, objective: 99, threshold_ms: 25}
  - {kind: stability, metric: tv, max_drift: 0.5, window: 1h, min_requests: 10}
"""


def server_counts(server: Server) -> dict[str, float]:
    """count / fast (le=0.025) of inference requests, and predictions per class, from the server's /metrics."""
    _, _, text = server.request("GET", "/metrics")
    out: dict[str, float] = {"count": 0.0, "fast": 0.0}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            route = s.labels.get("route")
            if s.name == "deployc_request_duration_seconds_count" and route == "infer":
                out["count"] += s.value
            elif s.name == "deployc_request_duration_seconds_bucket" and route == "infer" \
                    and float(s.labels["le"]) == 0.025:
                out["fast"] += s.value
            elif s.name == "deployc_predictions_total":
                out["class:" + s.labels["class"]] = out.get("class:" + s.labels["class"], 0.0) + s.value
    return out


def infer(server: Server, x: np.ndarray) -> None:
    body = {"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    status, _, data = server.request("POST", "/v2/models/digits/infer", body)
    assert status == 200, data[:300]


def test_rules_record_the_servers_sli_values(digits: Path, session_cache: Path, tmp_path: Path) -> None:
    (digits / "deploy.yaml").write_text(SPEC)
    out = tmp_path / "out"
    r = run_deployc("build", "deploy.yaml", "--out", str(out), "-q", cwd=digits, cache_dir=session_cache)
    assert r.returncode == 0, r.stderr
    x = np.load(digits / "data" / "eval.npz")["x"]
    (tmp_path / "prom").mkdir()

    with Server(out) as server, \
            Prometheus(tmp_path / "prom", [out / "monitoring" / "prometheus-rules.yaml"],
                       [f"127.0.0.1:{server.port}"]) as prom:
        infer(server, x[:100])  # every series (each class too) exists before the measured traffic
        wait_for(lambda: prom.value('sum(deployc_predictions_total{model="digits"})') == 100, 30,
                 "Prometheus to scrape the warm-up request")
        before = server_counts(server)
        for i in range(20):
            infer(server, x[i:i + 1])
        big = np.resize(x, (20000, 64)).astype(np.float32)  # slow: far past the 25 ms threshold to parse
        for _ in range(3):
            infer(server, big)
        after = server_counts(server)
        total = after["count"] - before["count"]
        slow = total - (after["fast"] - before["fast"])
        assert total == 23
        wait_for(lambda: prom.value('sum(deployc_request_duration_seconds_count{route="infer"})')
                 == after["count"], 30, "Prometheus to scrape the measured traffic")

        groups = prom.rule_groups()
        assert {g["name"] for g in groups} == {"deployc-digits-availability", "deployc-digits-latency",
                                               "deployc-digits-stability"}
        for g in groups:
            for rule in g["rules"]:
                assert rule["health"] in ("ok", "unknown") and not rule.get("lastError"), rule

        def sli(slo: str) -> float | None:
            return prom.value(f'deployc:sli_error:ratio_rate5m{{slo="{slo}",model="digits"}}')

        wait_for(lambda: sli("latency") is not None and abs(sli("latency") - slow / total) < 1e-9, 30,
                 f"the latency SLI to record {slow}/{total}")
        assert sli("availability") == 0.0  # no 5xx: the series exists and holds zero
        budget = prom.value('deployc:slo_error_budget:ratio{slo="availability",model="digits"}')
        assert budget is not None and abs(budget - 0.001) < 1e-12

        classes = {k: after[k] - before.get(k, 0.0) for k in after if k.startswith("class:")}
        n = sum(classes.values())
        assert n == 20 + 3 * 20000
        share = prom.value('deployc:slo_live_class_share:ratio{slo="stability",model="digits",class="digit-3"}')
        # increase() extrapolates each series from its own first sample, so allow a little slack here
        assert share is not None and abs(share - classes["class:digit-3"] / n) < 1e-3
        reference = json.loads((out / "report.json").read_text())
        assert reference["reference"]["accuracy"] > 0.9
