"""The input-drift SLO: its rules (PSI per feature, bad-value share per input), alerts, promtool tests, dashboard
panels and the errors of a spec or build that cannot express it (docs/monitoring.md, "input-drift")."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from ruamel.yaml import YAML

from deployc import conventions as C
from deployc.errors import InputError
from deployc.monitoring import (
    DASHBOARD_PATH,
    RULES_PATH,
    TESTS_PATH,
    build_monitoring,
    compile_monitoring,
    run_promtool,
)
from deployc.monitoring.inputs import psi
from deployc.schema import DeploySpec
from deployc.schema.slo import InputDriftSLO, input_drift_problems

HAVE_PROMTOOL = shutil.which("promtool") is not None
NO_PROMTOOL = "promtool is not installed (apt-get install prometheus)"

PROFILE: dict[str, Any] = {
    "inputs": {"pixels": {"min": 0.0, "max": 16.0}, "aux": {"min": -1.0, "max": 1.0}},
    "features": [
        {"name": "pixels[36]", "input": "pixels", "index": 36, "edges": [1.0, 4.0, 9.0],
         "reference": [0.2, 0.3, 0.25, 0.25]},
        {"name": "pixels[2]", "input": "pixels", "index": 2, "edges": [0.5], "reference": [0.9, 0.1]},
    ],
}
DRIFT: dict[str, Any] = {"kind": "input-drift", "features": ["pixels[36]", "pixels[2]"]}


def spec_of(*slos: dict[str, Any], data: bool = True) -> DeploySpec:
    raw: dict[str, Any] = {"apiVersion": "deployc/v1", "name": "digits", "model": {"path": "model.keras"},
                           "targets": {"local": {}}, "slos": list(slos)}
    if data:
        raw["data"] = {"eval": {"path": "eval.npz", "y": "y"}}
    return DeploySpec.model_validate(raw)


def compile_with(*slos: dict[str, Any], profile: dict[str, Any] | None = PROFILE) -> dict[str, bytes]:
    return compile_monitoring(spec_of(*slos), spec_file="deploy.yaml", reference_distribution=[0.5, 0.5],
                              class_names=None, input_profile=profile)


def load_yaml(data: bytes) -> Any:
    return YAML(typ="safe", pure=True).load(data)


def rules_of(files: dict[str, bytes]) -> list[dict[str, Any]]:
    groups = load_yaml(files[RULES_PATH])["groups"]
    return [r for g in groups if g["name"] == "deployc-digits-input-drift" for r in g["rules"]]


def test_schema_defaults_and_alias() -> None:
    slo = spec_of({"kind": "input-drift", "for": "5m"}).slos[0]
    assert isinstance(slo, InputDriftSLO)
    assert (slo.features, slo.top_k, slo.bins, slo.max_psi, slo.window, slo.for_, slo.min_rows,
            slo.max_bad_share) == (None, 5, 10, 0.2, "1h", "5m", 100, 0.01)
    assert (slo.alerting.severity, slo.alerting.enabled) == ("ticket", True)


@pytest.mark.parametrize("field", [
    {"bins": 1}, {"bins": 51}, {"window": "1m"}, {"for": "2d"}, {"max_psi": 0}, {"max_bad_share": 1},
    {"min_rows": 0}, {"features": []}, {"features": ["pixels"]}, {"features": ["a[1]", "a[1]"]},
])
def test_schema_refuses_bad_fields(field: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        spec_of({"kind": "input-drift", **field})


def test_one_input_drift_slo_per_spec() -> None:
    second = {"kind": "input-drift", "name": "more", "features": ["pixels[1]"]}
    slos = [InputDriftSLO.model_validate(DRIFT), InputDriftSLO.model_validate(second)]
    found = input_drift_problems(slos, has_eval=True)
    assert [loc for loc, _ in found] == [("slos", 1, "kind")]
    assert "one input-drift SLO per spec" in found[0][1]
    with pytest.raises(ValueError, match="one input-drift SLO per spec"):
        spec_of(DRIFT, second)


def test_input_drift_needs_data_eval() -> None:
    found = input_drift_problems([InputDriftSLO.model_validate(DRIFT)], has_eval=False)
    assert found == [(("slos", 0, "kind"), "input-drift compares with data.eval's inputs: set data.eval")]
    with pytest.raises(ValueError, match="set data.eval"):
        spec_of(DRIFT, data=False)


def test_without_a_profile_is_an_input_error() -> None:
    with pytest.raises(InputError, match="input profile"):
        compile_with(DRIFT, profile=None)


def test_a_named_feature_missing_from_the_profile_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"pixels\[7\]"):
        compile_with({"kind": "input-drift", "features": ["pixels[36]", "pixels[7]"]})


def test_reference_shares_must_sum_to_one() -> None:
    bad = {**PROFILE, "features": [{**PROFILE["features"][0], "reference": [0.5, 0.2, 0.1, 0.1]}]}
    with pytest.raises(InputError, match="sum to 1"):
        compile_with({"kind": "input-drift", "features": ["pixels[36]"]}, profile=bad)


def test_recording_rules() -> None:
    rules = rules_of(compile_with(DRIFT))
    refs = [r for r in rules if r.get("record") == C.SLO_FEATURE_REFERENCE_SHARE]
    assert [(r["labels"][C.LABEL_FEATURE], r["labels"][C.LABEL_BIN], r["expr"]) for r in refs] == [
        ("pixels[36]", "0", "vector(0.2)"), ("pixels[36]", "1", "vector(0.3)"), ("pixels[36]", "2", "vector(0.25)"),
        ("pixels[36]", "3", "vector(0.25)"), ("pixels[2]", "0", "vector(0.9)"), ("pixels[2]", "1", "vector(0.1)")]
    assert all(r["labels"][C.LABEL_SLO] == "input-drift" and r["labels"][C.LABEL_MODEL] == "digits" for r in rules
               if "record" in r)
    by_name = {r["record"]: r["expr"] for r in rules if "record" in r and r["record"] != C.SLO_FEATURE_REFERENCE_SHARE}
    assert set(by_name) == {C.SLO_FEATURE_LIVE_SHARE, C.SLO_FEATURE_WINDOW_ROWS, C.SLO_FEATURE_DRIFT,
                            C.SLO_INPUT_BAD_SHARE}
    assert by_name[C.SLO_FEATURE_WINDOW_ROWS] == \
        'sum by (feature) (increase(deployc_feature_bin_total{model="digits"}[1h]))'
    assert 'increase(deployc_feature_bin_total{model="digits"}[1h])' in by_name[C.SLO_FEATURE_LIVE_SHARE]
    assert "clamp_min(deployc:slo_live_feature_bin_share:ratio" in by_name[C.SLO_FEATURE_DRIFT]
    assert f"clamp_min(deployc:slo_reference_feature_bin_share:ratio{{slo=\"input-drift\",model=\"digits\"}}, " \
           f"{C.PSI_EPSILON:g})" in by_name[C.SLO_FEATURE_DRIFT]
    assert by_name[C.SLO_FEATURE_DRIFT].startswith("sum by (feature) (")
    for metric in (C.METRIC_INPUT_NONFINITE, C.METRIC_INPUT_OUT_OF_RANGE, C.METRIC_INPUT_VALUES):
        assert f'sum by (input) (increase({metric}{{model="digits"}}[1h]))' in by_name[C.SLO_INPUT_BAD_SHARE]
    # the shares are recorded before the PSI that reads them, in one group (same evaluation)
    order = [r.get("record") for r in rules]
    assert order.index(C.SLO_FEATURE_LIVE_SHARE) < order.index(C.SLO_FEATURE_DRIFT)


def test_alert_rules() -> None:
    slo = {**DRIFT, "max_psi": 0.25, "max_bad_share": 0.05, "for": "10m", "min_rows": 200, "description": "Camera?",
           "alerting": {"severity": "page", "labels": {"team": "ml"}, "runbook_url": "https://r.example/x"}}
    alerts = {r["alert"]: r for r in rules_of(compile_with(slo)) if "alert" in r}
    assert set(alerts) == {C.ALERT_INPUT_DRIFT, C.ALERT_INPUT_QUALITY}
    drift, quality = alerts[C.ALERT_INPUT_DRIFT], alerts[C.ALERT_INPUT_QUALITY]
    assert drift["expr"] == ('deployc:slo_feature_drift:psi{slo="input-drift",model="digits"} > 0.25 and '
                             'on(slo, model, feature) deployc:slo_window_feature_rows:count'
                             '{slo="input-drift",model="digits"} >= 200')
    assert quality["expr"] == 'deployc:slo_input_bad_value_share:ratio{slo="input-drift",model="digits"} > 0.05'
    for a in (drift, quality):
        assert a["for"] == "10m"
        assert a["labels"] == {"severity": "page", "team": "ml"}
        assert a["annotations"]["runbook_url"] == "https://r.example/x"
        assert a["annotations"]["description"].endswith("Camera?")
    assert "{{ $labels.feature }}" in drift["annotations"]["description"]
    assert "population stability index" in drift["annotations"]["description"]
    assert "{{ $labels.input }}" in quality["annotations"]["description"]


def test_disabled_alerting_keeps_the_recording_rules() -> None:
    rules = rules_of(compile_with({**DRIFT, "alerting": {"enabled": False}}))
    assert not [r for r in rules if "alert" in r]
    assert any(r.get("record") == C.SLO_FEATURE_DRIFT for r in rules)


def test_default_features_come_from_the_profile() -> None:
    rules = rules_of(compile_with({"kind": "input-drift"}))
    assert {r["labels"][C.LABEL_FEATURE] for r in rules if r.get("record") == C.SLO_FEATURE_REFERENCE_SHARE} == \
        {"pixels[36]", "pixels[2]"}


def test_generated_unit_tests_cover_each_case() -> None:
    tests = [t for t in load_yaml(compile_with(DRIFT)[TESTS_PATH])["tests"] if t["name"].startswith("input-drift")]

    def fired(t: dict[str, Any], alertname: str) -> list[dict[str, str]]:
        return [e["exp_labels"] for a in t["alert_rule_test"] if a["alertname"] == alertname for e in a["exp_alerts"]]

    names = [t["name"] for t in tests]
    assert names == ["input-drift: every feature at its reference shares",
                     "input-drift: pixels[36]: every row in its rarest bin",
                     "input-drift: same drift, fewer than 100 rows",
                     "input-drift: 2% bad values in input aux"]
    quiet, drifting, few, bad = tests
    assert fired(quiet, C.ALERT_INPUT_DRIFT) == [] and fired(few, C.ALERT_INPUT_DRIFT) == []
    assert [a[C.LABEL_FEATURE] for a in fired(drifting, C.ALERT_INPUT_DRIFT)] == ["pixels[36]"]  # not pixels[2]
    assert [a[C.LABEL_INPUT] for a in fired(bad, C.ALERT_INPUT_QUALITY)] == ["aux"]  # not pixels
    expected = psi([1.0, 0.0, 0.0, 0.0], [0.2, 0.3, 0.25, 0.25])  # bin 0 is the rarest (0.2)
    assert any(f"- {expected!r}) <" in e["expr"] for e in drifting["promql_expr_test"])


def test_psi_oracle_floors_empty_bins() -> None:
    assert psi([0.25, 0.75], [0.25, 0.75]) == 0
    eps = C.PSI_EPSILON
    assert math.isclose(psi([1.0, 0.0], [0.5, 0.5]),
                        (1 - 0.5) * math.log(1 / 0.5) + (eps - 0.5) * math.log(eps / 0.5))


def test_dashboard_panels() -> None:
    dash = json.loads(compile_with(DRIFT)[DASHBOARD_PATH])
    exprs = {p["title"]: [t["expr"] for t in p["targets"]] for p in dash["panels"]}
    assert exprs["Input drift (PSI per feature over 1h)"] == \
        ['deployc:slo_feature_drift:psi{slo="input-drift",model="digits"}']
    assert exprs["Bad input values (share over 1h)"] == \
        ['deployc:slo_input_bad_value_share:ratio{slo="input-drift",model="digits"}']
    assert compile_with(DRIFT)[DASHBOARD_PATH] == compile_with(DRIFT)[DASHBOARD_PATH]


def test_no_cloudwatch_alarm() -> None:
    model = build_monitoring(spec_of(DRIFT), spec_file="deploy.yaml", reference_distribution=None, class_names=None,
                             input_profile=PROFILE)
    assert model is not None
    assert model.alarms("digits", C.SAGEMAKER_VARIANT_NAME) == []


def write(files: dict[str, bytes], root: Path) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root / C.MONITORING_DIR


@pytest.mark.skipif(not HAVE_PROMTOOL, reason=NO_PROMTOOL)
@pytest.mark.parametrize("slos", [
    pytest.param([DRIFT], id="alone"),
    pytest.param([{"kind": "availability", "objective": 99.9}, {"kind": "stability", "min_requests": 10},
                  {**DRIFT, "window": "30m", "for": "5m", "min_rows": 1000, "max_bad_share": 0}], id="with-others"),
    pytest.param([{**DRIFT, "alerting": {"enabled": False}}], id="no-alerts"),
])
def test_promtool_checks_and_unit_tests_pass(slos: list[dict[str, Any]], tmp_path: Path) -> None:
    assert run_promtool(write(compile_with(*slos), tmp_path))["promtool"] == "passed"


@pytest.mark.skipif(not HAVE_PROMTOOL, reason=NO_PROMTOOL)
def test_promtool_catches_a_wrong_expectation(tmp_path: Path) -> None:
    """The generated tests have teeth: claiming the drifting feature stays quiet fails `promtool test rules`."""
    files = compile_with(DRIFT)
    doc = load_yaml(files[TESTS_PATH])
    for t in doc["tests"]:
        if t["name"] == "input-drift: pixels[36]: every row in its rarest bin":
            for a in t["alert_rule_test"]:
                a["exp_alerts"] = []
    out = write(files, tmp_path)
    with (out / Path(TESTS_PATH).name).open("w") as fh:
        YAML(typ="safe", pure=True).dump(doc, fh)
    with pytest.raises(InputError, match="promtool test rules"):
        run_promtool(out)
