"""Helpers for the fuzz and security tests: YAML-document strategies, hostile strings, process memory readings.

The YAML strategy writes text directly (not through a YAML library) so that it can produce what a library would
never emit: tags, anchors and aliases, flow and block styles mixed, odd unicode, broken indentation.
"""
from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

# Field names of deploy.yaml (and of its nested sections), so generated documents reach deep validators.
FIELD_NAMES = [
    "apiVersion", "name", "version", "description", "model", "path", "format", "inputs", "labels", "task",
    "data", "eval", "calibration", "train", "x", "y", "limit", "optimize", "quantize", "prune", "distill", "mode",
    "candidates", "sparsity", "structured", "width", "temperature", "alpha", "epochs", "student", "gates",
    "max_accuracy_drop", "min_agreement", "max_abs_error", "max_size_mb", "max_latency_p99_ms", "measure",
    "threads", "batch_size", "min_seconds", "targets", "local", "port", "host", "workers", "batching",
    "max_batch_size", "max_delay_ms", "auth", "token_env", "tflite", "io_type", "max_size_kb", "normalization",
    "mean", "std", "device", "sagemaker", "region", "role_arn", "image_uri", "s3_prefix", "instance_type",
    "serverless", "autoscaling", "min_instances", "max_instances", "target_invocations_per_instance", "vpc",
    "subnets", "security_groups", "rollout", "strategy", "canary_percent", "tags", "environment", "slos", "kind",
    "objective", "window", "threshold_ms", "metric", "max_drift", "for", "min_requests", "alerting", "page",
    "ticket", "severity", "annotations", "runbook_url", "disabled_windows", "shape", "dtype",
]
# Values the validators care about, and values that trip parsers.
SCALARS = [
    "deployc/v1", "digits", "model.keras", "model.onnx", "eval.npz", "labels.txt", "../../etc/passwd", "/etc/passwd",
    "~/x", "classification", "regression", "int8", "auto", "float16", "availability", "latency", "stability",
    "30d", "28d", "1h", "psi", "tv", "us-east-1", "ml.c6i.large", "s3://b/p", "-1", "0", "1", "99.9", "1e309",
    "-.inf", ".nan", "0x1F", "0o17", "1_000", "true", "false", "yes", "no", "on", "off", "null", "~", "",
    "2001-12-14t21:59:43.10-05:00", "2002-12-14", "12:30:45", "<<", "=", "'single'", '"double \\u0000 esc"',
    '"\\x41\\U0001F600"', "|", ">", "'it''s'", "\u202e\u0645\u0631\u062d\u0628\u0627", "\ufeff", "\u2028",
    "\U0001f600", "a\u0301", "\u0130", "\uffff", "AKIAABCDEFGHIJKLMNOP", "{{ x }}", "{% if %}", "%TAG",
    "9" * 400, "-" * 3, "...",
]
TAGS = ["!!str", "!!null", "!!map", "!!seq", "!!binary", "!!set", "!!omap", "!!python/object/apply:os.system",
        "!!python/name:os.system", "!custom", "!", "!<tag:x>", "!!merge"]
# Core scalar tags on a value they cannot hold (`!!int abc`) crash the loader today; they are kept out of the
# generated documents and pinned by test_fuzz_loader.test_core_tag_on_a_wrong_value_is_refused_cleanly.
KNOWN_CRASHING_TAGS = ["!!int", "!!float", "!!bool", "!!timestamp"]
# Characters that mean something to YAML, Jinja, Markdown, Dockerfiles or PromQL.
HOSTILE = ['"', "'", "\\", "\n", "\r", "\t", "{{", "}}", "{%", "%}", "{#", ": ", "- ", "#", "&a", "*a", "!",
           "!!python/object:os.system", "|", ">", "%", "@", "`", "{", "}", "[", "]", ",", "=~", "\\n", "---", "...",
           "$labels", "${HOME}", "$(id)", "\u2028", "\u0085", "\x00", "\x7f", "<!--", "-->", "\u202e", "RUN ",
           "\nRUN rm -rf /\n", "\nResources:\n  Evil: 1\n"]


def hostile_text(min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    """Strings mixing metacharacters of every output format with arbitrary unicode."""
    piece = st.one_of(st.sampled_from(HOSTILE), st.text(min_size=1, max_size=4))
    return st.lists(piece, min_size=1, max_size=12).map("".join).filter(
        lambda s: min_size <= len(s) <= max_size)


def _scalar() -> st.SearchStrategy[str]:
    plain = st.sampled_from(SCALARS)
    quoted = st.text(max_size=12).map(lambda s: json.dumps(s))
    weird = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)
    return st.one_of(plain, plain, quoted, weird, st.integers(-2**70, 2**70).map(str),
                     st.floats(allow_nan=True).map(repr))


def _decorate(draw: Any, text: str, anchors: list[str]) -> str:
    """Randomly put a tag and/or an anchor in front of a node, or replace it by an alias."""
    roll = draw(st.integers(0, 9))
    if roll == 0:
        return draw(st.sampled_from(TAGS)) + " " + text
    if roll == 1:
        name = draw(st.sampled_from(["a", "b", "c", "x1"]))
        anchors.append(name)
        return f"&{name} {text}"
    if roll == 2 and anchors:
        return "*" + draw(st.sampled_from(anchors))
    if roll == 3:
        return "*undefined"
    return text


@st.composite
def _flow(draw: Any, depth: int, anchors: list[str]) -> str:
    if depth <= 0 or draw(st.integers(0, 2)) == 0:
        return _decorate(draw, draw(_scalar()), anchors)
    items = draw(st.lists(_flow(depth - 1, anchors), max_size=4))
    if draw(st.booleans()):
        return _decorate(draw, "[" + ", ".join(items) + "]", anchors)
    keys = draw(st.lists(st.sampled_from(FIELD_NAMES), min_size=len(items), max_size=len(items)))
    return _decorate(draw, "{" + ", ".join(f"{k}: {v}" for k, v in zip(keys, items, strict=True)) + "}", anchors)


@st.composite
def _block(draw: Any, depth: int, indent: int, anchors: list[str]) -> list[str]:
    """Lines of a block mapping or sequence at `indent`; values nest as blocks or flow collections."""
    pad = " " * indent
    lines: list[str] = []
    as_list = draw(st.integers(0, 3)) == 0
    for _ in range(draw(st.integers(1, 5))):
        key = draw(st.one_of(st.sampled_from(FIELD_NAMES), _scalar()))
        head = f"{pad}- " if as_list else f"{pad}{key}:"
        if depth > 0 and draw(st.integers(0, 2)) == 0:
            prefix = _decorate(draw, "", anchors).strip()  # a tag or an anchor on the nested block
            lines.append(f"{head.rstrip()} {prefix}".rstrip())
            lines += draw(_block(depth - 1, indent + draw(st.sampled_from([1, 2, 4])), anchors))
        else:
            lines.append(f"{head} {draw(_flow(2, anchors))}")
        if draw(st.integers(0, 9)) == 0:  # comments, stray indentation, directives, document markers
            lines.append(draw(st.sampled_from(["# comment", "\t- tab", "  odd", "---", "...", "%YAML 1.1", "? k",
                                               ": v", "<<: *a", "key: |", "  literal", "key: >-"])))
    return lines


@st.composite
def yaml_documents(draw: Any) -> str:
    """A YAML document that often starts like a real deploy.yaml and then goes wrong somewhere."""
    anchors: list[str] = []
    head = []
    if draw(st.booleans()):
        head = ["apiVersion: deployc/v1", f"name: {draw(st.sampled_from(['digits', 'Bad Name', '-x', 'a' * 70]))}"]
        if draw(st.booleans()):
            head.append("model: {path: model.onnx}")
    body = draw(_block(3, 0, anchors))
    text = "\n".join(head + body)
    return text + draw(st.sampled_from(["", "\n", "\r\n", "\n\n\n"]))


def max_rss_kb() -> int:
    """This process's peak resident set size so far, in KiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_kb(pid: int) -> int:
    """Current resident set size of a process, from /proc/<pid>/status (VmRSS, KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def in_tmp(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


__all__ = ["FIELD_NAMES", "HOSTILE", "hostile_text", "yaml_documents", "max_rss_kb", "rss_kb", "in_tmp"]
