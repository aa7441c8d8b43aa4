"""A spec value can never change the structure of a generated file.

Hostile strings (quotes, newlines, `{{ }}`, `{% %}`, YAML, Markdown, Dockerfile and PromQL metacharacters) go
into every field an emitter copies into its output: the SageMaker CloudFormation template (description, tags,
environment), the Dockerfile and the device README (the spec path in their headers), the monitoring rules
(alert labels, annotations, runbook_url, class names) and labels.txt. Every output must still parse, keep its
shape, and carry the value verbatim where it belongs. Values the schema refuses must be refused as validation
errors, never as a crash.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from ruamel.yaml import YAML

from aws_support import ALARMS, emit_context, spec_for, tiny_onnx
from deployc.schema.spec import DeploySpec
from deployc.targets.sagemaker import SageMakerTarget, dockerfile
from fuzz_support import hostile_text

FUZZ = settings(deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                derandomize=True, database=None)
RESOURCES = {"Model", "EndpointConfig", "Endpoint"}


def load_yaml(data: bytes) -> Any:
    return YAML(typ="safe", pure=True).load(data.decode())


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("tpl") / "model.onnx")


def _spec_or_refusal(build: Any) -> DeploySpec | None:
    """The spec, or None when the schema refuses the values: a ValidationError is the only allowed refusal."""
    try:
        spec = build()
    except ValidationError:
        _event("refused by the schema")
        return None
    _event("accepted by the schema")
    return spec


def _event(what: str) -> None:
    """hypothesis' statistics, when running under @given (plain parametrized tests call this too)."""
    from hypothesis.control import currently_in_test_context

    if currently_in_test_context():
        event(what)


env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
tag_keys = hostile_text(1, 60)


@settings(FUZZ, max_examples=60)
@given(description=hostile_text(0, 300), tags=st.dictionaries(tag_keys, hostile_text(0, 80), max_size=4),
       environment=st.dictionaries(env_names, hostile_text(0, 80), max_size=4))
def test_cloudformation_keeps_its_shape_and_the_values(model: Path, description: str, tags: dict[str, str],
                                                       environment: dict[str, str]) -> None:
    spec = _spec_or_refusal(lambda: spec_for({"tags": tags, "environment": environment}, description=description))
    if spec is None:
        return
    files = SageMakerTarget().emit(emit_context(spec, model, alarms=ALARMS))
    doc = load_yaml(files["sagemaker/cloudformation.yaml"])
    assert set(doc) - {"Parameters"} == {"AWSTemplateFormatVersion", "Description", "Resources", "Outputs"}
    assert set(doc["Resources"]) == RESOURCES | {"AvailabilityPageAlarm", "LatencyTicketAlarm"}
    expected = f"deployc: SageMaker endpoint digits 1.0.0 - {description}" if description else \
        "deployc: SageMaker endpoint digits 1.0.0"
    assert doc["Description"] == expected[:1024]
    props = doc["Resources"]["Model"]["Properties"]
    assert props["PrimaryContainer"]["Environment"] == environment
    want_tags = [{"Key": k, "Value": v} for k, v in sorted(tags.items())]
    for rid in doc["Resources"]:
        assert doc["Resources"][rid]["Properties"].get("Tags", []) == want_tags, rid
    plan = json.loads(files["sagemaker/deploy-plan.json"])
    model_call = next(c for c in plan["calls"] if c["operation"] == "create_model")
    assert model_call["parameters"]["PrimaryContainer"]["Environment"] == environment


def _json_literals(line: str) -> list[Any]:
    """Every JSON string literal in a line, decoded."""
    return [json.loads(m.group(0)) for m in re.finditer(r'"(?:[^"\\]|\\.)*"', line)]


@settings(FUZZ, max_examples=80)
@given(spec_file=hostile_text(1, 120),
       name=st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True),
       version=st.from_regex(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,10}", fullmatch=True))
def test_dockerfile_values_stay_inside_json_strings(spec_file: str, name: str, version: str) -> None:
    from deployc import conventions as c

    baseline = dockerfile("x", "1", header=c.GENERATED_HEADER.format(spec="deploy.yaml")).splitlines()
    header = c.GENERATED_HEADER.format(spec=spec_file)
    lines = dockerfile(name, version, header=header).splitlines()
    assert len(lines) == len(baseline)
    for got, base in zip(lines, baseline):
        # the same instruction (or comment) on every line: values never start a new one
        assert got.split(" ", 1)[0] == base.split(" ", 1)[0], (got, base)
    assert lines[0].startswith("# ") and json.loads(lines[0][2:]) == header
    label = next(ln for ln in lines if ln.startswith("LABEL "))
    assert _json_literals(label) == [name, version]
    assert json.loads(next(ln for ln in lines if ln.startswith("ENTRYPOINT "))[len("ENTRYPOINT "):])[0] == "/bin/sh"


def _meta(name: str, tensor: str, spec_labels: bool) -> dict[str, Any]:
    tensor_doc = {"name": tensor, "tensor": tensor, "index": 0, "dtype": "float32", "shape": [-1, 4],
                  "quantization": None}
    return {"name": name, "version": "1.0.0", "labels": "labels.txt" if spec_labels else None,
            "model": {"quantization": "float16", "io_type": "float32", "sha256": "0" * 64, "ops": ["FULLY_CONNECTED"],
                      "select_tf_ops": [], "device": "generic"},
            "inputs": [tensor_doc], "outputs": [dict(tensor_doc, shape=[-1, 3])], "normalization": None,
            "evaluation": {"size_bytes": 10, "gzip_bytes": 9}, "reference": {}, "candidates": []}


def _outside_fences(text: str) -> list[str]:
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            out.append(line)
        elif not fenced:
            out.append(line)
    return out


@settings(FUZZ, max_examples=80)
@given(spec_file=hostile_text(1, 120), tensor=hostile_text(1, 40), labels=st.booleans())
def test_tflite_readme_keeps_its_structure(spec_file: str, tensor: str, labels: bool) -> None:
    from deployc.targets.tflite import readme

    base = readme(_meta("digits", "x", labels), "deploy.yaml")
    text = readme(_meta("digits", tensor, labels), spec_file)
    assert text.count("\n") == base.count("\n")
    first = text.splitlines()[0]
    assert first.startswith("<!-- ") and first.endswith(" -->") and first.count("-->") == 1
    assert "deployc" in json.loads(first[5:-4])
    # the prose, headings and tables are those of the baseline; values appear only in fenced JSON blocks
    assert _outside_fences(text)[1:] == _outside_fences(base)[1:]
    blocks = re.findall(r"```json\n(.*?)\n```", text, re.S)
    decoded = [json.loads(b) for b in blocks]
    assert {"name": tensor, "dtype": "float32", "shape": [-1, 4], "quantization": None} in decoded


def _slo_spec(alerting: dict[str, Any], description: str | None, stability: bool) -> DeploySpec:
    slos: list[dict[str, Any]] = [{"kind": "availability", "objective": 99.9, "alerting": alerting}]
    if stability:
        slos.append({"kind": "stability", "alerting": {k: v for k, v in alerting.items() if k != "disabled_windows"}})
    if description is not None:
        slos[0]["description"] = description
    return DeploySpec.model_validate({
        "apiVersion": "deployc/v1", "name": "digits", "model": {"path": "model.onnx"}, "targets": {"local": {}},
        "data": {"eval": {"path": "eval.npz"}}, "slos": slos})


def _no_nel(s: str) -> str:
    """U+0085 is kept out: see test_next_line_character_survives_the_rules_file."""
    return s.replace("\x85", "")


label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True)
# annotation values: hostile text with Prometheus' own `{{ $labels.x }}` templates mixed in
annotation_values = st.lists(st.one_of(hostile_text(0, 20).map(lambda s: _no_nel(s.replace("{{", "{ {"))),
                                       st.just("{{ $labels.model }}")), max_size=4).map("".join)


@settings(FUZZ, max_examples=40)
@given(labels=st.dictionaries(label_names, hostile_text(0, 40).map(_no_nel), max_size=3),
       annotations=st.dictionaries(label_names, annotation_values, max_size=3),
       runbook=st.one_of(st.none(), annotation_values),
       classes=st.lists(hostile_text(1, 20).map(_no_nel).filter(bool), min_size=2, max_size=4, unique=True))
def test_monitoring_rules_carry_values_verbatim(labels: dict[str, str], annotations: dict[str, str],
                                                runbook: str | None, classes: list[str]) -> None:
    from deployc.monitoring import RULES_PATH, compile_monitoring

    alerting = {"labels": labels, "annotations": annotations, **({"runbook_url": runbook} if runbook else {})}
    spec = _spec_or_refusal(lambda: _slo_spec(alerting, None, stability=True))
    if spec is None:
        return
    files = compile_monitoring(spec, spec_file="deploy.yaml", reference_distribution=[1 / len(classes)] * len(classes),
                               class_names=classes)
    groups = load_yaml(files[RULES_PATH])["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert len(alerts) == 3  # page, ticket, drift
    for a in alerts:
        assert {k: v for k, v in a["labels"].items() if k != "severity"} == labels
        for k, v in annotations.items():
            assert a["annotations"][k] == v
        assert a["annotations"].get("runbook_url") == (runbook or None)
    shares = [r["labels"]["class"] for g in groups for r in g["rules"]
              if r.get("record") == "deployc:slo_reference_class_share:ratio"]
    assert shares == classes


@pytest.mark.skipif(__import__("shutil").which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_rules_and_tests_built_from_hostile_values(tmp_path: Path) -> None:
    """What Prometheus itself makes of the values: rules load and the generated unit tests pass."""
    from deployc.monitoring import compile_monitoring, run_promtool

    classes = ['a"b', "c}d{", "=~.*", "new\\nline", "\u2028x", "{{ $labels.model }}"]
    spec = _slo_spec({"labels": {"team": 'ml"}{x=~"', "route_to": "- a: b\n# c"},
                      "annotations": {"note": '{{ $labels.model }} said "hi" #: - &a *a !t {% x %}'},
                      "runbook_url": "https://runbooks/x?a=1&b={{ $labels.slo }}"}, None, stability=True)
    files = compile_monitoring(spec, spec_file="deploy.yaml", reference_distribution=[1 / len(classes)] * len(classes),
                               class_names=classes)
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    assert run_promtool(tmp_path / "monitoring")["promtool"] == "passed"


@pytest.mark.parametrize("description", ["{{ oops", "{{ .Value }}"])
def test_slo_description_cannot_act_as_a_template(description: str, tmp_path: Path) -> None:
    """Either the schema refuses the description, or the rules keep it as literal text that promtool accepts."""
    from deployc.monitoring import compile_monitoring, run_promtool

    spec = _spec_or_refusal(lambda: _slo_spec({}, description, stability=False))
    if spec is None:
        return
    files = compile_monitoring(spec, spec_file="deploy.yaml", reference_distribution=None, class_names=None)
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    assert run_promtool(tmp_path / "monitoring")["promtool"] == "passed"


def test_next_line_character_survives_the_rules_file() -> None:
    from deployc.monitoring import RULES_PATH, compile_monitoring

    spec = _slo_spec({"labels": {"team": "a\x85b"}, "annotations": {"note": "c\x85d"}}, None, stability=False)
    files = compile_monitoring(spec, spec_file="deploy.yaml", reference_distribution=None, class_names=None)
    alert = next(r for g in load_yaml(files[RULES_PATH])["groups"] for r in g["rules"] if "alert" in r)
    assert alert["labels"]["team"] == "a\x85b" and alert["annotations"]["note"] == "c\x85d"


@settings(FUZZ, max_examples=60)
@given(lines=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=6))
def test_labels_written_by_the_build_are_the_labels_the_server_reads(model: Path, tmp_path_factory: Any,
                                                                     lines: list[str]) -> None:
    """labels.txt -> build (splitlines, strip) -> bundle labels.txt -> `deployc serve`'s config: the same list."""
    from deployc.serve.config import load_config
    from deployc.targets.local import serving_files

    labels = tuple(ln.strip() for ln in "\n".join(lines).splitlines() if ln.strip())  # what the build reads
    if not labels:
        return
    spec = spec_for({})
    ctx = emit_context(spec, model)
    ctx = type(ctx)(**{**ctx.__dict__, "labels": labels})
    folder = tmp_path_factory.mktemp("labels")
    for rel, data in serving_files(ctx).items():
        (folder / rel).write_bytes(data)
    assert load_config(folder).labels == labels
