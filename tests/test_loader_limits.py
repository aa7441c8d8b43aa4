"""The loader's bounds hold while it reads: any file under the 1 MiB limit is accepted or refused quickly.

Each hostile file is refused at the line, word or node where its bound passed (file:line:col: message), within a
generous time bound (the target, on the bench, is well under 1 s: bench/loader.py). Big but harmless files load.
The expanded-node count the composer keeps is checked against a brute-force count of the composed tree.
"""
from __future__ import annotations

import time
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from deployc.compiler import load
from deployc.compiler.load import MAX_BYTES, MAX_DEPTH, MAX_EXPANDED_NODES, MAX_LINES, MAX_NODES, MAX_WORDS, load_spec
from deployc.errors import SpecError

SECONDS = 5.0  # generous: a loaded CI machine, not the target
HEAD = "apiVersion: deployc/v1\nname: big\nmodel: {path: model.onnx}\n"  # 9 nodes
LIMIT = MAX_BYTES - 64


def _fill(head: str, line: str) -> str:
    return head + line * ((LIMIT - len(head)) // len(line))


def _refused(tmp_path: Path, text: str) -> tuple[str, float]:
    path = tmp_path / "deploy.yaml"
    path.write_text(text, encoding="utf-8")
    assert path.stat().st_size <= MAX_BYTES
    t0 = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load_spec(path)
    seconds = time.perf_counter() - t0
    (line,) = info.value.lines()
    assert line.startswith(f"{path}:"), line
    return line.removeprefix(f"{path}:"), seconds


def _bomb(levels: int = 12) -> str:
    lines = [HEAD.rstrip("\n"), "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


NODES = f"the document has more than {MAX_NODES} nodes (keys, values and list items)"
EXPANDS = f"the document expands to more than {MAX_EXPANDED_NODES} nodes (aliases nested too deeply?)"
LINES = f"the file has more than {MAX_LINES} lines"
WORDS = f"the file has more than {MAX_WORDS} words"
# Node MAX_NODES + 1 of `HEAD + "x: [1,1,...]"` is list item MAX_NODES + 1 - 11 (HEAD, `x` and the list come first).
FLOW_COL = 5 + 2 * (MAX_NODES + 1 - 11 - 1)
HOSTILE = {
    "flow list, 300k items": (HEAD + "x: [" + ",".join(["1"] * 300_000) + "]\n", f"4:{FLOW_COL}: {NODES}"),
    "mapping, 80k keys": (_fill(HEAD, "k000000: 1\n"), f"{MAX_LINES + 1}:1: {LINES}"),
    "mapping under the line bound": (HEAD + "".join(f"k{i:06d}: 1\n" for i in range(9000)),
                                     f"{(MAX_NODES - 9) // 2 + 4}:10: {NODES}"),  # the value of key 4995
    "JSON mapping on one line": (HEAD + "x: {" + ",".join(f'"k{i}":1' for i in range(80_000)) + "}\n", NODES),
    "nested flow mappings, no spaces": (_fill(HEAD, "n: " + '{"a":' * 30 + "1" + "}" * 30 + "\n"), NODES),
    "aliases of one anchor, no spaces": (_fill(HEAD + "base: &b {x: 1, y: [1, 2]}\nuses: [*b", ",*b") + "]\n",
                                         EXPANDS),
    "aliases of one anchor, spaced": (_fill(HEAD + "base: &b [1]\nuses: [*b", ", *b") + "]\n", WORDS),
    "billion laughs": (_bomb(), f"8:35: {EXPANDS}"),  # the sixth alias in a4: 8,318 nodes before, a3 holds 7,381
    "1 MiB of comment lines": (_fill(HEAD, "# a comment line\n"), f"{MAX_LINES + 1}:1: {LINES}"),
    "1 MiB of blank lines": (_fill(HEAD, "\n"), f"{MAX_LINES + 1}:1: {LINES}"),
    "1 MiB of \\r line breaks": (_fill(HEAD, "\r"), f"{MAX_LINES + 1}:1: {LINES}"),
    "1 MiB quoted scalar of words": (HEAD + 'd: "' + "x " * ((LIMIT - len(HEAD)) // 2 - 4) + '"\n',
                                     f"4:{5 + 2 * (MAX_WORDS - 8)}: {WORDS}"),  # HEAD holds 7 words, `d:` 1
    "deep nesting": ("a: " + "[" * 1000 + "]" * 1000 + "\n", f"1:{3 + MAX_DEPTH + 1}: the document is nested "
                     f"more than {MAX_DEPTH} levels deep"),
    "two documents, each big": (HEAD + "x: [" + ",".join(["1"] * 6000) + "]\n---\n" + HEAD + "x: ["
                                + ",".join(["1"] * 6000) + "]\n", NODES),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_file_is_refused_quickly_where_its_bound_passed(name: str, tmp_path: Path) -> None:
    text, expected = HOSTILE[name]
    message, seconds = _refused(tmp_path, text)
    assert expected in message, message
    assert message.split(":")[0].isdigit() and message.split(":")[1].isdigit(), message
    assert seconds < SECONDS, f"{name}: {seconds:.1f} s"


def _near_limits() -> str:
    """Every bound nearly reached at once, the rest of the 1 MiB in one long plain scalar."""
    body = "".join(f"k{i:04d}: [1,1]\n" for i in range(2390))  # 9,560 nodes + HEAD's 9 + 2 below
    body += "# a comment of six words\n" * 7000
    return HEAD + body + "x: " + "x" * (LIMIT - len(HEAD) - len(body) - 10) + "\n"


BIG_BUT_HARMLESS = {
    "1 MiB of long comment lines": _fill(HEAD, "# " + "x" * 2000 + "\n"),
    "1 MiB plain scalar": HEAD + "description: " + "x" * (LIMIT - len(HEAD) - 20) + "\n",
    "1 MiB block scalar": HEAD + "description: |\n" + ("  " + "x" * 500 + "\n") * ((LIMIT - len(HEAD)) // 520),
    "every bound nearly reached": _near_limits(),
}


@pytest.mark.parametrize("name", list(BIG_BUT_HARMLESS))
def test_big_but_harmless_file_loads_quickly(name: str, tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(BIG_BUT_HARMLESS[name], encoding="utf-8")
    assert path.stat().st_size <= MAX_BYTES
    t0 = time.perf_counter()
    loaded = load_spec(path)
    assert time.perf_counter() - t0 < SECONDS
    assert loaded.data["apiVersion"] == "deployc/v1"


def _flow_list(items: int) -> str:
    """A document of exactly `items` + 11 nodes."""
    return HEAD + "x: [" + ",".join(["1"] * items) + "]\n"


def test_the_node_bound_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(_flow_list(MAX_NODES - 11))
    assert len(load_spec(path).data["x"]) == MAX_NODES - 11
    message, _ = _refused(tmp_path, _flow_list(MAX_NODES - 10))
    assert message == f"4:{5 + 2 * (MAX_NODES - 11)}: {NODES}; deploy.yaml files are limited to {MAX_NODES}"


def _aliases(pad: int) -> str:
    """An anchored list of 100 nodes aliased 498 times, and a list of `pad` items: 49,904 + 2 + pad nodes."""
    return ("a: &a [" + ",".join(["1"] * 99) + "]\nb: [" + ",".join(["*a"] * 498) + "]\nc: ["
            + ",".join(["1"] * pad) + "]\n")


def test_the_expansion_bound_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(_aliases(94))  # 50,000 nodes expanded
    assert len(load_spec(path).data["b"]) == 498
    message, _ = _refused(tmp_path, _aliases(95))  # 50,001: the last item of c
    assert message == f"3:{5 + 2 * 94}: {EXPANDS}"


def test_the_line_and_word_bounds_are_exact(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text("a: 1\n" + "#\n" * (MAX_LINES - 1))
    assert load_spec(path).data == {"a": 1}
    assert _refused(tmp_path, "a: 1\n" + "#\n" * MAX_LINES)[0].startswith(f"{MAX_LINES + 1}:1: {LINES}")
    path.write_text("a: '" + "w " * (MAX_WORDS - 2) + "'\n")  # `a:` and `'w` are words too: MAX_WORDS in all
    assert load_spec(path).data["a"].count("w") == MAX_WORDS - 2
    message, _ = _refused(tmp_path, "a: '" + "w " * (MAX_WORDS - 1) + "'\n")  # the closing quote is one too many
    assert message.startswith(f"1:{5 + 2 * (MAX_WORDS - 1)}: {WORDS}"), message


@st.composite
def alias_documents(draw: Any) -> str:
    """Mappings whose values are lists of scalars and aliases of earlier anchors, some of them anchored."""
    lines, anchors = [], []
    for i in range(draw(st.integers(1, 8))):
        items = draw(st.lists(st.sampled_from(["1", "x"] + [f"*{a}" for a in anchors]), max_size=6))
        anchor = f"&a{i} " if draw(st.booleans()) else ""
        lines.append(f"k{i}: {anchor}[{', '.join(items)}]")
        if anchor:
            anchors.append(f"a{i}")
    return "\n".join(lines) + "\n"


def _expanded(node: Any) -> int:
    """Brute force: the nodes of the composed tree, every alias walked again."""
    if isinstance(node.value, list):
        kids = [x for item in node.value for x in (item if isinstance(item, tuple) else (item,))]
        return 1 + sum(_expanded(k) for k in kids)
    return 1


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=alias_documents(), bound=st.integers(1, 300))
def test_expansion_count_matches_a_brute_force_count(text: str, bound: int, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    expanded = _expanded(YAML(typ="rt", pure=True).compose(StringIO(text)))
    monkeypatch.setattr(load, "MAX_EXPANDED_NODES", bound)
    path = tmp_path / "deploy.yaml"
    path.write_text(text)
    try:
        load_spec(path)
        refused = False
    except SpecError as exc:
        assert "expands to more than" in str(exc), str(exc)
        refused = True
    assert refused == (expanded > bound), (expanded, bound)
