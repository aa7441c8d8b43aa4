"""Stage 1: read deploy.yaml safely, keeping every key's position for error messages.

Safe means: a size limit, UTF-8 only, no tags beyond YAML's core schema (no Python objects, no custom
constructors), duplicate keys are errors, and aliases are bounded (a billion-laughs file fails at once).
Fast means: ruamel's pure-Python parser costs up to ~1 µs a character and ~30 µs a node, so lines and words
are counted before parsing, and nodes (as written and alias-expanded) and nesting while composing: any file
under the size limit is accepted or refused in well under a second (bench/loader.py), at the line, word or
node where its bound passed.
The one extra tag, `!ENV NAME` on a scalar, constructs nothing: it becomes the plain reference
`{"$env": "NAME"}` (deployc/schema/envref.py), and validation decides where one may stand.
"""
from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

from deployc.compiler.inputs import open_regular, special_kind
from deployc.errors import DeploycError, Problem, SpecError
from deployc.schema.envref import ENV_KEY, ENV_TAG, env_ref_name_problem

MAX_BYTES = 1024 * 1024
MAX_LINES = 10_000  # a real deploy.yaml has a few dozen; these bounds keep loading any file well under 1 s
MAX_WORDS = 50_000  # runs of characters between spaces, tabs and line breaks
MAX_NODES = 10_000  # keys, values and list items as written (an alias counts once)
MAX_EXPANDED_NODES = 50_000  # the same with every alias expanded
MAX_DEPTH = 64
_WORD = re.compile(r"[^ \t\r\n]+")
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
        what = special_kind(path.stat().st_mode)
        if what:  # a FIFO would block the read forever
            raise fail(f"is {what}, not a regular file")
        with open_regular(path) as f:
            raw = f.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise fail(f"file is over {MAX_BYTES} bytes; deploy.yaml files are limited to {MAX_BYTES} bytes")
    except SpecError:
        raise
    except DeploycError as exc:  # open_regular's refusal of a file swapped for a special one
        raise fail(str(exc).removeprefix(f"{path}: ")) from None
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
    shape = _shape_problem(text, display)
    if shape is not None:
        raise SpecError([shape])
    if not text.strip() or all(ln.strip().startswith("#") or not ln.strip() for ln in text.splitlines()):
        raise fail("file is empty: expected a mapping with apiVersion, name and model")
    tree = _parse(text, display, fail)
    if not isinstance(tree, dict):
        raise fail(f"the document must be a mapping (apiVersion, name, model, ...), not a {_kind(tree)}")
    return LoadedSpec(path=path, display=display, text=text, tree=tree, data=plain(tree))


def _shape_problem(text: str, display: str) -> Problem | None:
    """Too many lines or words for the YAML parser (pure Python, up to ~1 µs a character and ~20 µs a comment
    line) to finish in well under a second: refused before parsing, at the line or word past the limit."""
    breaks = text.count("\n") + text.count("\r") - text.count("\r\n") + sum(map(text.count, "\x85\u2028\u2029"))
    lines = breaks + (0 if text.endswith(("\n", "\r", "\x85", "\u2028", "\u2029")) else 1)
    if lines > MAX_LINES:
        return Problem(display, MAX_LINES + 1, 1, "", f"the file has more than {MAX_LINES} lines; deploy.yaml "
                       f"files are limited to {MAX_LINES} lines")
    if _WORD.subn("", text)[1] > MAX_WORDS:
        word = next(itertools.islice(_WORD.finditer(text), MAX_WORDS, None))
        line = text.count("\n", 0, word.start()) + 1
        col = word.start() - (text.rfind("\n", 0, word.start()) + 1) + 1
        return Problem(display, line, col, "", f"the file has more than {MAX_WORDS} words (runs of characters "
                       f"between spaces and line breaks); deploy.yaml files are limited to {MAX_WORDS} words")
    return None


def _parse(text: str, display: str, fail: Callable[..., SpecError]) -> Any:
    """Compose the document with its bounds checked as it grows, check its nodes, then construct it: one pass
    of ruamel's `load`, whose composer (below) refuses before the constructor sees anything."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError
    from ruamel.yaml.reader import ReaderError

    def check(roots: list[Any]) -> None:
        if len(roots) != 1:
            raise fail(f"expected one YAML document, found {len(roots)}")
        problems = _check_nodes(roots[0], display)
        if problems:
            raise SpecError(problems)

    yaml = YAML(typ="rt", pure=True)
    # ruamel annotates Composer as type[Composer] but only calls it, as Composer(loader=...)
    yaml.Composer = functools.partial(_bounded_composer(), check=check)  # type: ignore[assignment]
    try:
        return yaml.load(StringIO(text))
    except _Refused as exc:
        raise fail(exc.message, exc.mark.line + 1, exc.mark.column + 1) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        parts = (exc.problem,) if _composed(yaml) else (exc.context, exc.problem)  # constructing: the problem
        msg = " ".join(str(x) for x in parts if x)
        raise fail(f"invalid YAML: {msg}", mark.line + 1 if mark else 1, mark.column + 1 if mark else 1) from None
    except ReaderError as exc:  # a character YAML does not allow
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        raise fail(f"invalid YAML: character {char!r} is not allowed", line, col) from None
    except YAMLError as exc:
        raise fail(f"invalid YAML: {str(exc).splitlines()[0]}") from None
    except (ValueError, KeyError, TypeError, OverflowError) as exc:  # e.g. `!!int abc`
        root = _composed(yaml)
        if root is None:
            raise
        line, col = _mistagged(root)
        raise fail(f"invalid YAML: a value does not fit its explicit tag ({type(exc).__name__}: {exc})",
                   line, col) from None


def _composed(yaml: Any) -> Any:
    """The checked root node once composing is over (so an error comes from the constructor), else None."""
    return getattr(getattr(yaml, "_composer", None), "root", None)


class _Refused(Exception):
    """A bound passed while composing: what passed, and ruamel's mark of the node where it did."""

    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


@functools.cache
def _bounded_composer() -> type:
    """ruamel's Composer, counting while it composes: `nodes` counts what the file spells out (an alias once)
    against MAX_NODES, which bounds parsing time; `expanded` counts an alias as the nodes it stands for against
    MAX_EXPANDED_NODES, which bounds constructing and validating (a billion-laughs file fails at its first alias
    past the bound, nothing expanded); nesting is bounded by MAX_DEPTH, well before Python's recursion limit."""
    from ruamel.yaml.composer import Composer
    from ruamel.yaml.events import AliasEvent, StreamEndEvent

    class BoundedComposer(Composer):
        def __init__(self, loader: Any = None, *, check: Callable[[list[Any]], None]) -> None:
            super().__init__(loader)
            self.warn_double_anchors = False  # legal YAML (the later one counts); a warning would break the output
            self.check = check  # called with every document's root before the first is constructed
            self.root: Any = None  # the document's root, once composed and checked
            self.nodes = self.expanded = 0  # all documents together
            self.level = 0  # nesting of the node being composed (the root is 0)
            self.sizes: dict[Any, int] = {}  # anchor -> expanded size of the node it names, once composed

        def get_single_node(self) -> Any:
            """Every document (so that a second one is counted, not just noticed), checked, then the first."""
            self.parser.get_event()  # stream start
            roots = []
            while not self.parser.check_event(StreamEndEvent):
                self.sizes = {}
                roots.append(self.compose_document())
            self.parser.get_event()  # stream end
            self.check(roots)
            self.root = roots[0]
            return self.root

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.parser.peek_event()
            self.nodes += 1
            if self.nodes > MAX_NODES:
                raise _Refused(f"the document has more than {MAX_NODES} nodes (keys, values and list items); "
                               f"deploy.yaml files are limited to {MAX_NODES}", event.start_mark)
            if isinstance(event, AliasEvent):
                self.expand(self.sizes.get(event.anchor, 1), event)  # an anchor still open: a recursive alias
                return super().compose_node(parent, index)
            if self.level > MAX_DEPTH:
                raise _Refused(f"the document is nested more than {MAX_DEPTH} levels deep", event.start_mark)
            before, anchor = self.expanded, event.anchor
            self.expand(1, event)
            self.sizes.pop(anchor, None)
            self.level += 1
            node = super().compose_node(parent, index)
            self.level -= 1
            if anchor is not None:
                self.sizes[anchor] = self.expanded - before
            return node

        def expand(self, size: int, event: Any) -> None:
            self.expanded += size
            if self.expanded > MAX_EXPANDED_NODES:
                raise _Refused(f"the document expands to more than {MAX_EXPANDED_NODES} nodes (aliases nested "
                               "too deeply?)", event.start_mark)

    return BoundedComposer


def _check_nodes(root: Any, display: str) -> list[Problem]:
    """Refuse non-core tags and duplicate keys, and recursive or too deeply expanding aliases, before anything
    is constructed. The composer has bounded the expanded size already, so this walk is bounded too."""
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    problems: list[Problem] = []
    stack: set[int] = set()

    def at(node: Any) -> tuple[int, int]:
        return node.start_mark.line + 1, node.start_mark.column + 1

    def walk(node: Any, depth: int = 0, path: str = "") -> None:
        if depth > MAX_DEPTH:  # through aliases: the composer bounds the nesting it reads
            raise SpecError([Problem(display, *at(node), "", f"the document is nested more than {MAX_DEPTH} "
                                     "levels deep")])
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
                    refused = _key_problem(k, path, display)
                    if refused is not None:
                        problems.append(refused)
                        continue
                    key = getattr(k, "value", None)
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


def _key_problem(key: Any, path: str, display: str) -> Problem | None:
    """A key deploy.yaml cannot hold: a merge key, a key tagged !ENV, or the reserved `$env`."""
    line, col = key.start_mark.line + 1, key.start_mark.column + 1
    if key.tag == "tag:yaml.org,2002:merge":
        return Problem(display, line, col, "", "merge keys (<<) are not supported")
    if key.tag == ENV_TAG:
        return Problem(display, line, col, path, "!ENV cannot tag a key, only a value")
    if getattr(key, "value", None) == ENV_KEY:
        return Problem(display, line, col, path, f"the key {ENV_KEY!r} is reserved for !ENV references: write "
                       "`!ENV NAME` instead")
    return None


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
            lc: Any = node.lc  # ruamel's CommentedMap/CommentedSeq line-and-column record
            ln, cl = lc.value(elem) if isinstance(node, dict) else lc.item(elem)
            pos = (ln + 1, cl + 1)
            node = node[elem]
        except (AttributeError, KeyError, IndexError, TypeError):
            break
    return pos
