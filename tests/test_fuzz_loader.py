"""Fuzzing `deployc validate`: whatever the file holds, the answer is exit 0 or 1 with located messages.

Generated YAML (tags, anchors, aliases, flow/block mixes, odd unicode), mutations of a real spec, and random
bytes go through `deployc.cli.main` in-process (fast), a few through a real process. No example may raise, print
a traceback, take long (hypothesis `deadline`) or grow this process's peak memory by much.
"""
from __future__ import annotations

import copy
import json
import shutil
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from conftest import run_deployc
from fuzz_support import FIELD_NAMES, HOSTILE, max_rss_kb, yaml_documents
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from deployc.cli import main

GOOD = Path(__file__).parent / "specs" / "good"
FUZZ = settings(deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                derandomize=True, database=None)
MAX_RSS_GROWTH_KB = 150 * 1024
FULL_SPEC = YAML(typ="safe", pure=True).load((GOOD / "full.yaml").read_text())


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the good corpus' model and data files, so mutated specs reach the path checks."""
    d = tmp_path_factory.mktemp("fuzz-loader")
    for p in GOOD.iterdir():
        if p.suffix != ".yaml":
            shutil.copy(p, d / p.name)
    return d


def check_validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `deployc validate PATH` in-process; assert the exit code and the shape of every message."""
    capsys.readouterr()
    rc = main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert rc in (0, 1), (rc, err)
    assert "Traceback" not in out + err
    if rc == 0:
        assert out.startswith(f"{path}: valid (") and err == ""
    else:
        assert err.strip(), "exit 1 without a message"
        for line in err.splitlines():  # file:line:col: ... on every line (indented lines continue one)
            if line.startswith("  "):
                continue
            file, line_no, col, _ = line.split(":", 3)
            assert file == str(path) and int(line_no) >= 1 and int(col) >= 1, line
    return rc, out, err


@settings(FUZZ, max_examples=150)
@given(text=yaml_documents())
def test_generated_yaml_never_crashes(text: str, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = folder / "deploy.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check_validate(path, capsys)


def _values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64), st.floats(allow_nan=False),
                       st.text(max_size=20), st.sampled_from(HOSTILE), st.sampled_from(FIELD_NAMES))
    return st.recursive(leaves, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                       st.dictionaries(st.sampled_from(FIELD_NAMES), kids,
                                                                       max_size=4)), max_leaves=8)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated_specs(draw: Any) -> Any:
    """The full corpus spec with a few subtrees replaced, removed or joined by unknown keys."""
    doc = copy.deepcopy(FULL_SPEC)
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(doc) if p]
        where = draw(st.sampled_from(paths))
        parent = doc
        for k in where[:-1]:
            parent = parent[k]
        action = draw(st.integers(0, 2))
        if action == 0:
            parent[where[-1]] = draw(_values())
        elif action == 1 and isinstance(parent, dict):
            del parent[where[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(FIELD_NAMES + ["unknown"]))] = draw(_values())
    return doc


@settings(FUZZ, max_examples=120)
@given(doc=mutated_specs(), style=st.sampled_from(["json", "block"]))
def test_mutated_real_spec_is_validated_with_located_messages(doc: Any, style: str, folder: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    if style == "json":
        text = json.dumps(doc, ensure_ascii=False)
    else:
        buf = StringIO()
        yaml = YAML(typ="safe", pure=True)
        yaml.default_flow_style = False
        yaml.dump(doc, buf)
        text = buf.getvalue()
    path = folder / "deploy.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check_validate(path, capsys)


@settings(FUZZ, max_examples=150)
@given(data=st.one_of(st.binary(max_size=300),
                      st.binary(max_size=40).map(lambda b: (GOOD / "minimal.yaml").read_bytes() + b),
                      st.binary(max_size=40).map(lambda b: b"\xef\xbb\xbf" + b)))
def test_random_bytes_never_crash(data: bytes, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = folder / "deploy.yaml"
    path.write_bytes(data)
    check_validate(path, capsys)


def test_peak_memory_and_alias_bomb_are_bounded(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A billion-laughs file and 60,000 aliases fail fast, without growing this process's peak RSS."""
    before = max_rss_kb()
    bomb = ["apiVersion: deployc/v1", "name: bomb", "model: {path: model.onnx}", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 12)]
    path = folder / "deploy.yaml"
    path.write_text("\n".join(bomb) + "\n")
    rc, _, err = check_validate(path, capsys)
    assert rc == 1 and "expands to more than 50000 nodes" in err
    path.write_text("a: &a [1]\nb: [" + ", ".join(["*a"] * 60_000) + "]\n")
    rc, _, err = check_validate(path, capsys)
    assert rc == 1 and ("expands to more than" in err or "limited to" in err)
    assert max_rss_kb() - before < MAX_RSS_GROWTH_KB


def test_fuzzing_did_not_grow_peak_memory(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Hundreds more generated documents after the others ran: the peak RSS stays where it was."""
    before = max_rss_kb()

    @settings(FUZZ, max_examples=60)
    @given(text=yaml_documents())
    def run(text: str) -> None:
        path = folder / "deploy.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        check_validate(path, capsys)

    run()
    assert max_rss_kb() - before < MAX_RSS_GROWTH_KB


@pytest.mark.parametrize("text", ["a: " + "[" * 1000 + "]" * 1000 + "\n",
                                  "a: " + "{k: " * 300 + "1" + "}" * 300 + "\n"])
def test_deeply_nested_document_is_refused_cleanly(text: str, folder: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = folder / "deploy.yaml"
    path.write_text(text)
    check_validate(path, capsys)


@pytest.mark.parametrize("text", ["- !!int deployc/v1\n", "a: !!float x\n", "a: !!bool maybe\n",
                                  "a: !!timestamp 2020-13-45\n"])
def test_core_tag_on_a_wrong_value_is_refused_cleanly(text: str, folder: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = folder / "deploy.yaml"
    path.write_text(text)
    check_validate(path, capsys)


@pytest.mark.parametrize("data", [
    b"apiVersion: deployc/v1\nname: x\nmodel: !!python/object/apply:os.system ['touch /tmp/deployc-pwned']\n",
    b"\x00\x01\x02garbage",
    b"a: [1, 2\n",
    "name: \U0001f600\u202e\nmodel: {path: \"\\ud800\"}\n".encode(),
])
def test_real_process_exits_1_without_traceback(data: bytes, tmp_path: Path) -> None:
    spec = tmp_path / "deploy.yaml"
    spec.write_bytes(data)
    r = run_deployc("validate", "deploy.yaml", cwd=tmp_path, timeout=60)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.startswith("deploy.yaml:")
    assert not Path("/tmp/deployc-pwned").exists()
