"""A spec value can never change the structure of a generated file.

Hostile strings (quotes, newlines, `{{ }}`, `{% %}`, YAML, Markdown, Dockerfile and PromQL metacharacters) go
into every field an emitter copies into its output: the SageMaker CloudFormation template (description, tags,
environment), the Dockerfile and the device README (the spec path in their headers), the monitoring rules
(alert labels, annotations, runbook_url, class names) and labels.txt. Every output must still parse, keep its
shape, and carry the value verbatim where it belongs. Values the schema refuses must be refused as validation
errors, never as a crash.

Markdown documents (the TFLite and Azure ML READMEs, report.md, `deployc diff`) are rendered to HTML with
markdown-it (CommonMark, raw HTML on, GFM tables and strike-through, as GitHub reads them): whatever the values,
the HTML holds the elements of a rendering with plain values, in the same order, and the header comment is one
comment that decodes to the header.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aws_support import ALARMS, emit_context, spec_for, tiny_onnx
from fuzz_support import hostile_text
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from ruamel.yaml import YAML

from deployc.render import _tojson
from deployc.schema.spec import DeploySpec
from deployc.targets.sagemaker import SageMakerTarget, dockerfile

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
    for got, base in zip(lines, baseline, strict=True):
        # the same instruction (or comment) on every line: values never start a new one
        assert got.split(" ", 1)[0] == base.split(" ", 1)[0], (got, base)
    assert lines[0].startswith("# ") and json.loads(lines[0][2:]) == header
    label = next(ln for ln in lines if ln.startswith("LABEL "))
    assert _json_literals(label) == [name, version]
    assert json.loads(next(ln for ln in lines if ln.startswith("ENTRYPOINT "))[len("ENTRYPOINT "):])[0] == "/bin/sh"


def _meta(name: str, tensor: str, spec_labels: bool, dtype: str = "float32", mode: str | None = None) -> dict[str, Any]:
    tensor_doc = {"name": tensor, "tensor": tensor, "index": 0, "dtype": dtype, "shape": [-1, 4],
                  "quantization": None}
    candidates = [] if mode is None else [{"mode": mode, "size_bytes": 10, "agreement": 0.5, "passed": True}]
    return {"name": name, "version": "1.0.0", "labels": "labels.txt" if spec_labels else None,
            "model": {"quantization": "float16", "io_type": "float32", "sha256": "0" * 64, "ops": ["FULLY_CONNECTED"],
                      "select_tf_ops": [], "device": "generic"},
            "inputs": [tensor_doc], "outputs": [dict(tensor_doc, shape=[-1, 3])], "normalization": None,
            "evaluation": {"size_bytes": 10, "gzip_bytes": 9}, "reference": {}, "candidates": candidates}


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


# What makes Markdown or HTML markup, and what closes an HTML comment.
MD_HOSTILE = ["-->", "--->", "--!>", "<!--", "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "|", "\\|",
              "`", "``", "*", "**", "_", "__", "[x](javascript:alert(1))", "![i](x)", "<https://x>", "&lt;", "&", "\n",
              "\r\n", "\r", "\u2028", "# ", "1. ", "- ", "> ", "~~", "\\", "$x$", "@team", "    ", "\t", "<", ">",
              "</td>", "<br>", "---", "==="]
md_hostile = st.lists(st.one_of(st.sampled_from(MD_HOSTILE), st.text(max_size=3)), min_size=1, max_size=10).map(
    "".join)


class _Outline:
    """The start tags (in order), comments and text of the HTML a GitHub-like renderer makes of some Markdown."""

    def __init__(self, markdown: str) -> None:
        from html.parser import HTMLParser

        from markdown_it import MarkdownIt

        self.html = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(markdown)
        self.tags: list[str] = []
        self.comments: list[str] = []
        self.text: list[str] = []
        outline = self

        class Parser(HTMLParser):
            def handle_starttag(self, tag: str, attrs: Any) -> None:
                outline.tags.append(tag)

            def handle_comment(self, data: str) -> None:
                outline.comments.append(data)

            def handle_data(self, data: str) -> None:
                outline.text.append(data)

        parser = Parser(convert_charrefs=True)
        parser.feed(self.html)
        parser.close()

    def same_structure_as(self, base: _Outline) -> None:
        assert "script" not in self.tags and "img" not in self.tags, self.html
        assert self.tags == base.tags, (self.tags, base.tags, self.html)
        assert len(self.comments) == len(base.comments), self.html


def _header_comment(markdown: str, header: str) -> None:
    """The document starts with one HTML comment, which decodes (JSON) to the header."""
    outline = _Outline(markdown)
    assert outline.comments and json.loads(outline.comments[0].strip()) == header, outline.html


def _shown(value: str) -> str:
    """What a renderer shows of an escaped value: line breaks as spaces, NUL as U+FFFD."""
    return re.sub(r"\r\n|[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]", " ", value).replace("\x00", "\ufffd")


@settings(FUZZ, max_examples=150)
@given(value=st.one_of(md_hostile, hostile_text(0, 60)))
def test_escaped_markdown_shows_the_value_and_nothing_else(value: str) -> None:
    from deployc.render import md_code, md_text

    para = _Outline(f"a {md_text(value)} b")
    assert para.tags == ["p"] and "".join(para.text).strip("\n") == f"a {_shown(value)} b", para.html
    code = _Outline(f"a {md_code(value)} b")
    assert code.tags == ["p", "code"], code.html
    assert "".join(code.text).strip("\n") == f"a {_shown(value) or ' '} b", code.html
    start = _shown(value).lstrip(" \t")  # at a line's start (indentation aside) it starts no block either
    line = _Outline(f"{md_text(start)} b")
    assert line.tags == ["p"] and "".join(line.text).strip("\n") == f"{start} b".lstrip(" "), line.html
    cell = _Outline(f"| h | c |\n|---|---|\n| {md_text(value)} | {md_code(value, in_table=True)} |\n")
    assert cell.tags == _Outline("| h | c |\n|---|---|\n| x | `y` |\n").tags, cell.html


@settings(FUZZ, max_examples=60)
@given(spec_file=md_hostile, tensor=md_hostile, dtype=md_hostile, mode=md_hostile)
def test_tflite_readme_renders_no_markup_from_values(spec_file: str, tensor: str, dtype: str, mode: str) -> None:
    from deployc import conventions as c
    from deployc.targets.tflite import readme

    base = _Outline(readme(_meta("digits", "x", True, mode="auto"), "deploy.yaml"))
    text = readme(_meta("digits", tensor, True, dtype=dtype, mode=mode), spec_file)
    _Outline(text).same_structure_as(base)
    _header_comment(text, c.GENERATED_HEADER.format(spec=spec_file))


def _azureml_readme(header: str, name: str, version: str, endpoint: str, deployment: str) -> str:
    from deployc.render import render_template

    return render_template("azureml", "README.md.j2", header=header, bundle_name=name, version=version,
                           endpoint=endpoint, deployment=deployment, traffic=50,
                           traffic_arg=f"{deployment}=50 OTHER=50", auth_mode="key",
                           autoscaling={"min": 1, "max": 3, "count": 1, "cpu": 70, "cpu_in": 35})


@settings(FUZZ, max_examples=60)
@given(header=md_hostile, name=md_hostile, version=md_hostile, endpoint=md_hostile, deployment=md_hostile)
def test_azureml_readme_renders_no_markup_from_values(header: str, name: str, version: str, endpoint: str,
                                                      deployment: str) -> None:
    base = _Outline(_azureml_readme("h", "digits", "1.0.0", "digits", "blue"))
    text = _azureml_readme(header, name, version, endpoint, deployment)
    _Outline(text).same_structure_as(base)
    _header_comment(text, header)
    heading = _Outline(text.splitlines()[1])
    shown = _shown(f"Azure ML deployment of {_tojson(name)} {_tojson(version)}")
    assert "".join(heading.text).strip("\n") == shown, heading.html


def _build_report(name: str, version: str, artifact: str, step: str, text: str) -> dict[str, Any]:
    ev = {"accuracy": 0.9, "agreement": 1.0, "size_bytes": 2048, "latency_p50_ms": 1.5}
    return {"name": name, "version": version, "spec_sha256": "ab" * 32, "reference": ev,
            "artifacts": [{"artifact": artifact, "step": step, "shipped": True, "evaluation": ev},
                          {"artifact": text, "step": step, "shipped": False, "evaluation": ev}],
            "passes": [{"step": step, "details": {text: text, "sparsity": [text, 0.5]}}],
            "gates": [{"artifact": artifact, "gate": text, "limit": 0.01, "value": None, "passed": False}],
            "steps": [{"id": step, "description": text, "key": "0" * 64}], "targets": ["local"]}


@settings(FUZZ, max_examples=80)
@given(name=md_hostile, version=md_hostile, artifact=md_hostile, step=md_hostile, text=md_hostile,
       spec_file=md_hostile)
def test_report_md_renders_no_markup_from_values(name: str, version: str, artifact: str, step: str, text: str,
                                                 spec_file: str) -> None:
    from deployc.compiler.report import render_markdown

    base = _Outline(render_markdown(_build_report("digits", "1.0.0", "onnx-fp32", "optimize[0].prune", "prune"),
                                    "deploy.yaml"))
    md = render_markdown(_build_report(name, version, artifact, step, text), spec_file)
    _Outline(md).same_structure_as(base)
    heading = _Outline(md.splitlines()[0])
    assert "".join(heading.text).strip("\n") == _shown(f"deployc build report: {name} {version}").strip(" \t"), \
        heading.html


def _diff(name: str, version: str, path: str, artifact: str, value: Any) -> dict[str, Any]:
    return {"old": "a", "new": "b", "name": [name, name], "version": ["1", version], "identical": False,
            "files": {"added": [{"path": path, "size": value}], "removed": [{"path": path, "size": 1}],
                      "changed": [{"path": path, "old_size": 1, "new_size": value}]},
            "figures": [{"artifact": artifact, "figure": "accuracy", "old": 0.5, "new": value}],
            "failed_gates": [], "versions": {artifact: [version, "2"]}}


@settings(FUZZ, max_examples=80)
@given(name=md_hostile, version=md_hostile, path=md_hostile, artifact=md_hostile,
       value=st.one_of(st.integers(0, 10**9), md_hostile))
def test_diff_markdown_renders_no_markup_from_values(name: str, version: str, path: str, artifact: str,
                                                     value: Any) -> None:
    """The build folders may come from a pull request: even a figure that is not a number is shown as text."""
    from deployc.diff import render_markdown

    base = _Outline(render_markdown(_diff("digits", "1.0.0", "local/model.onnx", "onnx-fp32", 1)))
    _Outline(render_markdown(_diff(name, version, path, artifact, value))).same_structure_as(base)


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
    from deployc.targets.bundle import serving_files

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
