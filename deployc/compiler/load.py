"""Stage 1: read deploy.yaml safely, keeping every key's position for error messages.

Safe means: a size limit, UTF-8 only, no tags beyond YAML's core schema (no Python objects, no custom
constructors), duplicate keys are errors, and aliases are bounded (a billion-laughs file fails at once).
The one extra tag, `!ENV NAME` on a scalar, constructs nothing: it becomes the plain reference
`{"$env": "NAME"}` (deployc/schema/envref.py), and validation decides where one may stand.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

from deployc.errors import Problem, SpecError
from deployc.schema.envref import ENV_KEY, ENV_TAG, env_ref_name_problem

MAX_BYTES = 1024 * 1024
MAX_EXPANDED_NODES = 50_000
MAX_DEPTH = 64
_TAG_FORMS = {  # what an explicitly tagged scalar must look like to construct
    "tag:yaml.org,2002:int": re.compile(r"^[-+]?(0b[01_]+|0o?[0-7_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*)$"),
    "tag:yaml.org,2002:float": re.compile(r"^[-+]?((\.[0-9]+|[0-9][0-9_]*)(\.[0-9_]*)?([eE][-+]?[0-9]+)?"
                                          r"|\.(inf|Inf|INF))$|^\.(nan|NaN|NAN)$"),
    "tag:yaml.org,2002:bool": re.compile(r"^(true|True|TRUE|false|False|FALSE|yes|Yes|YES|no|No|NO|on|On|ON|off"
                                         r"|Off|OFF)$"),
    "tag:yaml.org,2002:timestamp": re.compile(r"^\d{4}-\d{2}-\d{2}"),
}
CORE_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")}


@dataclass(frozen=True)
class LoadedSpec:
    path: Path  # as given
    display: str  # how errors name the file
    text: str
    tree: Any  # ruamel CommentedMap (positions in .lc)
    data: Any  # the same document as plain dict/list/str/int/float/bool/None


def load_spec(path: Path) -> LoadedSpec:
    display = str(path)

    def fail(msg: str, line: int = 1, col: int = 1) -> SpecError:
        return SpecError([Problem(display, line, col, "", msg)])

    try:
        if path.is_dir():
            raise fail("is a folder; give the path of a deploy.yaml file")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise fail(f"file is {size} bytes; deploy.yaml files are limited to {MAX_BYTES} bytes")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise fail("no such file") from None
    except PermissionError:
        raise fail("permission denied") from None
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise fail(f"not UTF-8 text (byte {exc.start})", line) from None
    if not text.strip() or all(ln.strip().startswith("#") or not ln.strip() for ln in text.splitlines()):
        raise fail("file is empty: expected a mapping with apiVersion, name and model")

    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError
    from ruamel.yaml.reader import ReaderError

    yaml = YAML(typ="rt", pure=True)
    try:
        nodes = list(yaml.compose_all(StringIO(text)))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        msg = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise fail(f"invalid YAML: {msg}", mark.line + 1 if mark else 1, mark.column + 1 if mark else 1) from None
    except ReaderError as exc:  # a character YAML does not allow
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        raise fail(f"invalid YAML: character {char!r} is not allowed", line, col) from None
    except YAMLError as exc:
        raise fail(f"invalid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise fail(f"the document is nested more than {MAX_DEPTH} levels deep") from None
    if len(nodes) != 1:
        raise fail(f"expected one YAML document, found {len(nodes)}")
    problems = _check_nodes(nodes[0], display)
    if problems:
        raise SpecError(problems)
    try:
        tree = yaml.load(StringIO(text))
    except MarkedYAMLError as exc:  # e.g. a value the constructor rejects
        mark = exc.problem_mark or exc.context_mark
        raise fail(f"invalid YAML: {exc.problem}", mark.line + 1 if mark else 1,
                   mark.column + 1 if mark else 1) from None
    except (ValueError, KeyError, TypeError, OverflowError) as exc:  # e.g. `!!int abc`
        line, col = _mistagged(nodes[0])
        raise fail(f"invalid YAML: a value does not fit its explicit tag ({type(exc).__name__}: {exc})",
                   line, col) from None
    if not isinstance(tree, dict):
        raise fail(f"the document must be a mapping (apiVersion, name, model, ...), not a {_kind(tree)}")
    return LoadedSpec(path=path, display=display, text=text, tree=tree, data=plain(tree))


def _check_nodes(root: Any, display: str) -> list[Problem]:
    """Refuse non-core tags and duplicate keys, and bound alias expansion, before anything is constructed."""
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    problems: list[Problem] = []
    budget = [MAX_EXPANDED_NODES]
    stack: set[int] = set()

    def at(node: Any) -> tuple[int, int]:
        return node.start_mark.line + 1, node.start_mark.column + 1

    def walk(node: Any, depth: int = 0, path: str = "") -> None:
        if depth > MAX_DEPTH:
            raise SpecError([Problem(display, *at(node), "", f"the document is nested more than {MAX_DEPTH} "
                                     "levels deep")])
        budget[0] -= 1
        if budget[0] < 0:
            raise SpecError([Problem(display, *at(root), "", f"the document expands to more than "
                                     f"{MAX_EXPANDED_NODES} nodes (aliases nested too deeply?)")])
        if id(node) in stack:
            raise SpecError([Problem(display, *at(node), "", "a recursive alias refers to itself")])
        if node.tag == ENV_TAG:
            if isinstance(node, (MappingNode, SequenceNode)):
                kind = "mapping" if isinstance(node, MappingNode) else "list"
                problems.append(Problem(display, *at(node), path, f"!ENV takes an environment variable name, "
                                        f"not a {kind}"))
            else:
                msg = env_ref_name_problem(str(node.value))
                if msg:
                    problems.append(Problem(display, *at(node), path, msg))
            return
        if node.tag not in CORE_TAGS:
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            hint = " (did you mean !ENV?)" if tag.upper() == ENV_TAG else ""
            problems.append(Problem(display, *at(node), "", f"tag {tag} is not allowed: deploy.yaml holds "
                                    f"plain mappings, lists, strings, numbers and booleans{hint}"))
            return
        if isinstance(node, (MappingNode, SequenceNode)):
            stack.add(id(node))
            if isinstance(node, MappingNode):
                seen: dict[Any, Any] = {}
                for k, v in node.value:
                    if k.tag == "tag:yaml.org,2002:merge":
                        problems.append(Problem(display, *at(k), "", "merge keys (<<) are not supported"))
                        continue
                    key = getattr(k, "value", None)
                    if k.tag == ENV_TAG:
                        problems.append(Problem(display, *at(k), path, "!ENV cannot tag a key, only a value"))
                        continue
                    if key == ENV_KEY:
                        problems.append(Problem(display, *at(k), path, f"the key {ENV_KEY!r} is reserved for "
                                                "!ENV references: write `!ENV NAME` instead"))
                        continue
                    if isinstance(key, str) and key in seen:
                        first = seen[key]
                        problems.append(Problem(display, *at(k), "", f"duplicate key {key!r} (first at line "
                                                f"{first.start_mark.line + 1})"))
                    elif isinstance(key, str):
                        seen[key] = k
                    walk(k, depth + 1, path)
                    walk(v, depth + 1, f"{path}.{key}" if path else str(key))
            else:
                for i, item in enumerate(node.value):
                    walk(item, depth + 1, f"{path}[{i}]")
            stack.discard(id(node))

    walk(root)
    return problems


def _mistagged(root: Any) -> tuple[int, int]:
    """Position of the first scalar whose explicit core tag it cannot hold (1:1 when none is found)."""
    stack = [root]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        form = _TAG_FORMS.get(str(node.tag))
        if form is not None and isinstance(node.value, str) and not form.match(node.value):
            return node.start_mark.line + 1, node.start_mark.column + 1
        if isinstance(node.value, list):
            for item in reversed(node.value):
                stack.extend(reversed(item) if isinstance(item, tuple) else [item])
    return 1, 1


def plain(value: Any) -> Any:
    """ruamel's round-trip types -> plain Python (a YAML `true` must not pass as the integer 1); `!ENV NAME` ->
    {"$env": "NAME"}."""
    tag = getattr(value, "tag", None)
    if type(value).__name__ == "TaggedScalar" and str(getattr(tag, "value", tag)) == ENV_TAG:
        return {ENV_KEY: str(value.value)}
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, bool) or type(value).__name__ == "ScalarBoolean":
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def _kind(value: Any) -> str:
    kinds = {list: "list", str: "string", int: "number", float: "number", dict: "!ENV reference"}
    return kinds.get(type(plain(value)), type(value).__name__)


def position(tree: Any, loc: tuple[Any, ...]) -> tuple[int, int, str]:
    """Walk `loc` (a pydantic error location) through the tree: (line, col, dotted path) of the deepest match.

    Elements that are not keys of the tree (pydantic's union tags, e.g. `quantize` twice) are skipped. For a
    missing key, the position is the mapping that should hold it.
    """
    node = tree
    line, col = 1, 1
    parts: list[str] = []
    for i, elem in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and isinstance(elem, str) and elem in node:
            line, col = _mark(node, "key", elem) or (line, col)
            parts.append(elem)
            node = node[elem]
        elif isinstance(node, list) and isinstance(elem, int) and 0 <= elem < len(node):
            line, col = _mark(node, "item", elem) or (line, col)
            parts[-1:] = [f"{parts[-1]}[{elem}]"] if parts else [f"[{elem}]"]
            node = node[elem]
        elif last and isinstance(node, dict):
            parts.append(str(elem))  # a missing key: point at the mapping that should hold it
        elif not isinstance(node, (dict, list)):
            break
        # else: a union tag pydantic adds to the location (e.g. `quantize` in optimize[0].quantize.quantize)
    return line, col, ".".join(parts)


def _mark(node: Any, kind: str, elem: Any) -> tuple[int, int] | None:
    """1-based (line, column) that ruamel recorded for a key or list item, when it recorded one."""
    try:
        ln, cl = getattr(node.lc, kind)(elem)
    except (AttributeError, KeyError, TypeError):
        return None
    return ln + 1, cl + 1


def value_position(tree: Any, path: tuple[Any, ...]) -> tuple[int, int]:
    """Position of the value at an exact key path (for checks made after validation, e.g. paths on disk)."""
    node = tree
    pos = (1, 1)
    for elem in path:
        try:
            if isinstance(node, dict):
                ln, cl = node.lc.value(elem)
            else:
                ln, cl = node.lc.item(elem)
            pos = (ln + 1, cl + 1)
            node = node[elem]
        except (AttributeError, KeyError, IndexError, TypeError):
            break
    return pos
