"""The generated rules in a real Prometheus: they load, evaluate, and hold the SLI values of known traffic."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from deployc.monitoring import RULES_PATH, compile_monitoring, latency_buckets
from deployc.schema import DeploySpec
from tests.prom_support import DeploycMetrics, Prometheus, prometheus_binary, wait_for

pytestmark = pytest.mark.skipif(prometheus_binary() is None,
                                reason="the prometheus server binary is not installed (apt-get install prometheus)")

SPEC = {
    "apiVersion": "deployc/v1", "name": "digits", "model": {"path": "model.keras"},
    "data": {"eval": {"path": "eval.npz", "y": "y"}}, "targets": {"local": {}},
    "slos": [
        {"kind": "availability", "objective": 99.9},
        {"kind": "latency", "objective": 99, "threshold_ms": 37.5},
        {"kind": "stability", "metric": "tv", "max_drift": 0.3, "window": "5m", "for": "0s", "min_requests": 10},
    ],
}
CLASSES = ["cat", "dog"]


def test_rules_load_and_hold_expected_sli_values(tmp_path: Path) -> None:
    spec = DeploySpec.model_validate(SPEC)
    files = compile_monitoring(spec, spec_file="deploy.yaml", reference_distribution=[0.5, 0.5],
                               class_names=CLASSES)
    rules = tmp_path / "prometheus-rules.yaml"
    rules.write_bytes(files[RULES_PATH])

    metrics = DeploycMetrics("digits", latency_buckets(spec))
    target, stop_exporter = metrics.serve()
    stop = threading.Event()

    def traffic() -> None:  # per tick: 10% 5xx, 20% slower than 37.5 ms, 90/10 cat/dog, health-check noise
        while not stop.is_set():
            metrics.add(code="200", n=72, seconds=0.02, predicted="cat")
            metrics.add(code="200", n=18, seconds=0.1, predicted="dog")
            metrics.add(code="500", n=8, seconds=0.0375, predicted="cat")  # exactly at the threshold: fast
            metrics.add(code="500", n=2, seconds=0.5, predicted="cat")
            metrics.add(route="ready", code="503", n=50)
            stop.wait(0.1)

    metrics.add(code="200", n=0, seconds=0.02)  # every series exists from the first scrape
    metrics.add(code="500", n=0, seconds=0.02)
    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        with Prometheus(tmp_path, [rules], [target]) as prom:
            def rules_ok() -> bool:
                groups = prom.rule_groups()
                rules_ = [r for g in groups for r in g["rules"]]
                bad = [r for r in rules_ if r["health"] != "ok"]
                assert not bad, f"rules not healthy: {bad}"
                return len(groups) > 0 and all(r["health"] == "ok" and r.get("lastEvaluation", "").startswith("2")
                                               for r in rules_)

            wait_for(rules_ok, 20, "every rule to be evaluated")
            names = {g["name"] for g in prom.rule_groups()}
            assert names == {"deployc-digits-availability", "deployc-digits-latency", "deployc-digits-stability"}

            def sli(slo: str) -> float | None:
                return prom.value(f'deployc:sli_error:ratio_rate5m{{slo="{slo}",model="digits"}}')

            avail = wait_for(lambda: sli("availability"), 30, "the availability SLI")
            assert avail == pytest.approx(0.1, abs=1e-9)

            def eventually(expr: str) -> float:  # groups evaluate independently: the next one may lag a tick
                return float(wait_for(lambda: prom.value(expr), 10, expr))

            assert eventually('deployc:sli_error:ratio_rate5m{slo="latency",model="digits"}') == pytest.approx(
                0.2, abs=1e-9)

            assert eventually('deployc:slo_current_burn_rate:ratio{slo="availability"}') == pytest.approx(100)
            assert eventually('deployc:slo_error_budget:ratio{slo="latency"}') == pytest.approx(0.01)
            assert eventually('deployc:slo_period_error_budget_remaining:ratio{slo="latency"}') == pytest.approx(-19)
            # Live shares cat 0.82 / dog 0.18 against 0.5 / 0.5: total variation 0.32.
            tv = eventually('deployc:slo_prediction_drift:tv{slo="stability"}')
            assert tv == pytest.approx(0.32, abs=1e-9)

            def firing() -> set[tuple[str, str]]:
                return {(a["labels"]["alertname"], a["labels"]["slo"]) for a in prom.alerts()
                        if a["state"] == "firing"}

            fired = wait_for(lambda: {("DeploycSLOFastBurn", "availability"), ("DeploycPredictionDrift",
                                      "stability")} <= firing() and firing(), 15, "the page and drift alerts")
            assert ("DeploycSLOFastBurn", "latency") in fired  # 20% slow burns 20x the 1% budget
    finally:
        stop.set()
        worker.join(timeout=5)
        stop_exporter()
