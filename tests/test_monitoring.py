"""SLO -> Prometheus rules: golden files, promtool check + unit tests, burn factors, schema limits."""
from __future__ import annotations

import json
import math
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from golden_support import assert_golden
from pydantic import ValidationError
from ruamel.yaml import YAML

from deployc import conventions as C
from deployc.errors import InputError
from deployc.monitoring import (
    CLOUDWATCH_PATH,
    RULES_PATH,
    TESTS_PATH,
    build_monitoring,
    compile_monitoring,
    latency_buckets,
    run_promtool,
)
from deployc.monitoring.model import BURN_CONDITIONS, resolve
from deployc.monitoring.promql import le_label
from deployc.monitoring.stability import drift_value
from deployc.schema import DeploySpec

GOLDEN = Path(__file__).parent / "golden" / "monitoring"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "deploy.yaml").is_file())
HAVE_PROMTOOL = shutil.which("promtool") is not None

BASE: dict[str, Any] = {"apiVersion": "deployc/v1", "name": "m", "model": {"path": "model.keras"},
                        "targets": {"local": {}}}


def spec_of(**extra: Any) -> DeploySpec:
    return DeploySpec.model_validate({**BASE, **extra})


def load_yaml(data: bytes | str) -> Any:
    return YAML(typ="safe", pure=True).load(data)


def compile_case(case: str) -> dict[str, bytes]:
    folder = GOLDEN / case
    spec = DeploySpec.model_validate(load_yaml((folder / "deploy.yaml").read_text()))
    ref = json.loads((folder / "reference.json").read_text()) if (folder / "reference.json").is_file() else {}
    files = compile_monitoring(spec, spec_file="deploy.yaml", reference_distribution=ref.get("distribution"),
                               class_names=ref.get("class_names"))
    if spec.targets.sagemaker is not None:  # the sagemaker target writes the alarms, from the same model
        model = build_monitoring(spec, spec_file="deploy.yaml", reference_distribution=ref.get("distribution"),
                                 class_names=ref.get("class_names"))
        assert model is not None
        files[CLOUDWATCH_PATH] = model.alarms_document(spec.name, C.SAGEMAKER_VARIANT_NAME)
    return files


def write(files: dict[str, bytes], root: Path) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    assert_golden(compile_case(case), GOLDEN / case / "expected")


@pytest.mark.parametrize("case", CASES)
def test_promtool_checks_and_unit_tests_pass(case: str, tmp_path: Path) -> None:
    if not HAVE_PROMTOOL:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    write(compile_case(case), tmp_path)
    result = run_promtool(tmp_path / C.MONITORING_DIR)
    assert result["promtool"] == "passed"


def test_promtool_reports_a_broken_rule(tmp_path: Path) -> None:
    if not HAVE_PROMTOOL:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    files = compile_case("availability-latency-30d")
    rules = files[RULES_PATH].decode().replace("(14.4 * 0.001)", "(144 * 0.001)")  # the page would never fire
    write({**files, RULES_PATH: rules.encode()}, tmp_path)
    with pytest.raises(InputError, match="DeploycSLOFastBurn"):
        run_promtool(tmp_path / C.MONITORING_DIR)


def test_run_promtool_skips_without_promtool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(compile_case("availability-latency-30d"), tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert run_promtool(tmp_path / C.MONITORING_DIR) == {"promtool": "skipped (promtool not installed)"}


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    for case in CASES:
        files = compile_case(case)
        alerts = {r["alert"] for g in load_yaml(files[RULES_PATH])["groups"] for r in g["rules"] if "alert" in r}
        tests = load_yaml(files[TESTS_PATH])["tests"]
        checks = [a for t in tests for a in t.get("alert_rule_test", [])]
        for alert in alerts:
            assert any(c["alertname"] == alert and c["exp_alerts"] for c in checks), (case, alert, "fires")
            assert any(c["alertname"] == alert and not c["exp_alerts"] for c in checks), (case, alert, "quiet")
        assert any("promql_expr_test" in t for t in tests)


@pytest.mark.parametrize("period, expected", [
    ("30d", [Fraction("14.4"), Fraction(6), Fraction(3), Fraction(1)]),
    ("28d", [Fraction("13.44"), Fraction("5.6"), Fraction("2.8"), Fraction(28, 30)]),
    ("7d", [Fraction("3.36"), Fraction("1.4"), Fraction("0.7"), Fraction(7, 30)]),
])
def test_burn_factors_derive_from_the_period(period: str, expected: list[Fraction]) -> None:
    assert [c.factor(period) for c in BURN_CONDITIONS] == expected
    assert [(c.long, c.short) for c in BURN_CONDITIONS] == [("1h", "5m"), ("6h", "30m"), ("1d", "2h"), ("3d", "6h")]


def test_28d_factors_reach_the_alert_expressions() -> None:
    rules = load_yaml(compile_case("custom-alerting-28d")[RULES_PATH])
    alerts = {(r["alert"], r["labels"]["severity"], r["expr"]) for g in rules["groups"] for r in g["rules"]
              if "alert" in r and "api-availability" in r["expr"]}
    exprs = {a: e for a, _, e in alerts}
    assert "(13.44 * 0.005)" in exprs["DeploycSLOFastBurn"]
    assert "5.6" not in exprs["DeploycSLOFastBurn"]  # the 6h window is disabled
    assert "(2.8 * 0.005)" in exprs["DeploycSLOSlowBurn"] and "(0.933333 * 0.005)" in exprs["DeploycSLOSlowBurn"]
    assert {s for _, s, _ in alerts} == {"page", "warning"}
    slow = [r for g in rules["groups"] for r in g["rules"]
            if r.get("alert") == "DeploycSLOSlowBurn" and "api-availability" in r["expr"]]
    assert len(slow) == 1 and slow[0]["labels"] == {"severity": "warning", "team": "risk-ml"}
    assert slow[0]["annotations"]["dashboard"].endswith("var-model={{ $labels.model }}")  # kept verbatim
    # fast-scoring has its page tier disabled: only a ticket alert.
    fast = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r and "fast-scoring" in r["expr"]]
    assert fast == ["DeploycSLOSlowBurn"]


def test_recording_rules_cover_every_window_with_labels() -> None:
    rules = load_yaml(compile_case("availability-latency-30d")[RULES_PATH])
    recorded = [(r["record"], r["labels"]["slo"], r["labels"]["model"]) for g in rules["groups"]
                for r in g["rules"] if "record" in r]
    for slo in ("availability", "latency"):
        for w in C.SLI_WINDOWS + ("30d",):
            assert (C.SLI_ERROR_RATIO.format(window=w), slo, "digits") in recorded
        for name in (C.SLO_OBJECTIVE, C.SLO_ERROR_BUDGET, C.SLO_PERIOD_DAYS, C.SLO_BURN_RATE,
                     C.SLO_BUDGET_REMAINING):
            assert (name, slo, "digits") in recorded
    text = compile_case("availability-latency-30d")[RULES_PATH].decode()
    assert text.startswith("# " + C.GENERATED_HEADER.format(spec="deploy.yaml"))
    assert 'le="0.25"' in text and 'route=~"infer|invocations|grpc_infer"' in text and 'code=~"5.."' in text


def test_latency_buckets_hold_every_threshold_exactly() -> None:
    spec = spec_of(slos=[{"kind": "latency", "objective": 99, "threshold_ms": 120.5},
                         {"kind": "latency", "name": "p2", "objective": 99.9, "threshold_ms": 250},
                         {"kind": "latency", "name": "p3", "objective": 90, "threshold_ms": 0.3}])
    buckets = latency_buckets(spec)
    assert list(buckets) == sorted(set(buckets))
    assert set(C.DEFAULT_LATENCY_BUCKETS) | {0.1205, 0.0003} == set(buckets)
    assert [le_label(b) for b in (0.1205, 0.0003, 1.0)] == ["0.1205", "0.0003", "1.0"]
    from prometheus_client.utils import floatToGoString  # what the server writes in `le`
    assert all(le_label(b) == floatToGoString(b) for b in buckets)


@pytest.mark.parametrize("threshold", [0.15, 250.05, 0.05])
def test_latency_threshold_finer_than_a_tenth_of_a_ms_is_a_field_error(threshold: float) -> None:
    with pytest.raises(ValidationError) as exc:
        spec_of(slos=[{"kind": "latency", "objective": 99, "threshold_ms": threshold}])
    locs = [e["loc"] for e in exc.value.errors()]
    assert locs == [("slos", 0, "latency", "threshold_ms")]


def test_too_many_latency_thresholds_is_located_on_the_first_one_too_many() -> None:
    slos = [{"kind": "latency", "name": f"l{i}", "objective": 99, "threshold_ms": 300 + i} for i in range(22)]
    slos.insert(3, {"kind": "latency", "name": "default", "objective": 99, "threshold_ms": 250})  # a default bucket
    with pytest.raises(ValidationError) as exc:
        spec_of(slos=slos)
    problems = exc.value.errors()[0]["ctx"]["error"].problems
    assert [loc for loc, _ in problems] == [("slos", 21, "threshold_ms")]
    assert "more than 20 distinct latency thresholds" in problems[0][1]
    spec_of(slos=slos[:21])  # 20 new buckets are fine


@pytest.mark.parametrize("alerting, fragment", [
    ({"annotations": {"x": "{{ $value }}"}}, "only {{ $labels.<name> }} templates"),
    ({"labels": {"severity": "x"}}, "set by deployc"),
    ({"labels": {"bad-name": "x"}}, "not a Prometheus label name"),
    ({"disabled_windows": ["2h"]}, "1h"),
])
def test_alerting_options_are_checked(alerting: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as exc:
        spec_of(slos=[{"kind": "availability", "objective": 99.9, "alerting": alerting}])
    assert fragment in str(exc.value)


def test_no_slos_no_files() -> None:
    assert compile_monitoring(spec_of(), spec_file="d.yaml", reference_distribution=None, class_names=None) == {}


def test_stability_needs_a_consistent_reference() -> None:
    spec = spec_of(data={"eval": {"path": "e.npz"}}, slos=[{"kind": "stability"}])
    with pytest.raises(InputError, match="reference"):
        compile_monitoring(spec, spec_file="d.yaml", reference_distribution=None, class_names=None)
    with pytest.raises(InputError, match="2 class names for 3"):
        compile_monitoring(spec, spec_file="d.yaml", reference_distribution=[0.2, 0.3, 0.5], class_names=["a", "b"])
    files = compile_monitoring(spec, spec_file="d.yaml", reference_distribution=[0.2, 0.3, 0.5], class_names=None)
    refs = {r["labels"]["class"]: r["expr"] for g in load_yaml(files[RULES_PATH])["groups"] for r in g["rules"]
            if r.get("record") == C.SLO_REFERENCE_SHARE}
    assert refs == {"0": "vector(0.2)", "1": "vector(0.3)", "2": "vector(0.5)"}


def test_drift_formulas() -> None:
    ref = [0.5, 0.3, 0.2]
    assert drift_value("tv", [0.2, 0.3, 0.5], ref) == pytest.approx(0.3)
    assert drift_value("psi", ref, ref) == 0
    assert drift_value("psi", [0.2, 0.3, 0.5], ref) == pytest.approx(2 * 0.3 * math.log(2.5))
    # An empty class counts as PSI_EPSILON: large but finite.
    assert drift_value("psi", [0.0, 0.5, 0.5], ref) == pytest.approx(
        (1e-4 - 0.5) * math.log(1e-4 / 0.5) + 0.2 * math.log(0.5 / 0.3) + 0.3 * math.log(0.5 / 0.2))


def test_dashboard_is_deterministic_and_covers_the_panels() -> None:
    a, b = compile_case("stability"), compile_case("stability")
    assert a == b
    dash = json.loads(a[f"{C.MONITORING_DIR}/grafana-dashboard.json"])
    titles = [p["title"] for p in dash["panels"]]
    for t in ("Request rate", "SLI error ratio (5m)", "Latency quantiles", "Error budget remaining",
              "Burn rate (5m)", "Batch size", "Predicted classes", "Prediction drift"):
        assert t in titles
    assert len({p["id"] for p in dash["panels"]}) == len(titles) and len(dash["uid"]) <= 40
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    assert C.METRIC_BATCH_SIZE + "_bucket" in exprs and C.SLO_DRIFT.format(metric="tv") in exprs


def test_resolve_keeps_spec_order_and_budget_exact() -> None:
    spec = spec_of(slos=[{"kind": "availability", "objective": 99.95, "window": "7d"}])
    (slo,) = resolve(spec, None, None)
    assert slo.budget == Fraction(5, 10000) and slo.period_days == 7  # type: ignore[union-attr]
