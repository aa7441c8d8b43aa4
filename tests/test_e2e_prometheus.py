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
  - {kind: input-drift, features: ["pixels[36]", "pixels[20]"], window: 1h, min_rows: 10}
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
            elif s.name == "deployc_feature_bin_total":
                key = f"bin:{s.labels['feature']}:{s.labels['bin']}"
                out[key] = out.get(key, 0.0) + s.value
            elif s.name in ("deployc_input_values_total", "deployc_input_out_of_range_values_total",
                            "deployc_input_nonfinite_values_total"):
                out[s.name] = out.get(s.name, 0.0) + s.value
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
                                               "deployc-digits-stability", "deployc-digits-input-drift"}
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
        # input drift: the PSI Prometheus records per feature is the one of the server's own bin counts
        from deployc.monitoring.inputs import psi

        monitor = json.loads((out / "local" / "serving.json").read_text())["input_monitor"]
        for f in monitor["features"]:
            counts = [after.get(f"bin:{f['name']}:{b}", 0.0) for b in range(len(f["reference"]))]
            expect = psi([c / sum(counts) for c in counts], f["reference"])

            def recorded(name: str = f["name"]) -> float | None:
                return prom.value(f'deployc:slo_feature_drift:psi{{slo="input-drift",model="digits",'
                                  f'feature="{name}"}}')
            wait_for(lambda: recorded() is not None, 30, f"the PSI of {f['name']} to be recorded")
            got = recorded()
            assert got is not None and abs(got - expect) <= 0.02 * expect + 1e-6, (f["name"], got, expect)
        values = after["deployc_input_values_total"]
        assert values == (100 + 20 + 3 * 20000) * 64
        assert after.get("deployc_input_out_of_range_values_total", 0.0) == 0.0
        bad = prom.value('deployc:slo_input_bad_value_share:ratio{slo="input-drift",model="digits",input="pixels"}')
        assert bad == 0.0
        reference = json.loads((out / "report.json").read_text())
        assert reference["reference"]["accuracy"] > 0.9
