"""The deployc package has no import cycles between its modules, counting imports inside functions too.

The graph is read from the AST of every module, so an import hidden in a function body (which only postpones
the cycle to run time) counts like one at the top. Imports under `if TYPE_CHECKING:` are left out: they never
run. The edges are the modules an import statement actually executes:
- `import deployc.a.b` and `from deployc.a import b` (b a submodule) import `deployc.a.b`;
- `from deployc.a import name` (name defined in `deployc/a/__init__.py`) imports the package `deployc.a`;
- relative imports are resolved against the importing module's package.
A submodule's import does not count as an edge to its parent packages: Python runs a parent's `__init__` first,
but a parent that is still initialising is already in `sys.modules`, so that alone never forms a cycle. A
submodule that imports a name from its package's `__init__`, which imports that submodule back, is a cycle.
Imports by name (the plugin registries' `module:attr` strings, loaded with importlib) are not edges: they run
only when that plugin is used.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "deployc"

# Cycles still to be broken, each with a comment naming the shared piece to move. An entry is the exact set of
# modules of one strongly connected component, e.g. frozenset({"deployc.compiler.emit", "deployc.targets.local"}).
# The test fails when an entry no longer exists as listed (broken, or grown into another component), so this list
# only shrinks. Empty: the package has no import cycle.
KNOWN_CYCLES: list[frozenset[str]] = []


def module_names(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package is named by its `__init__.py`)."""
    names = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement below `node`, at any depth, except the bodies of `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                yield from _import_nodes_of(stmt)
            continue
        yield from _import_nodes_of(child)


def _import_nodes_of(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    yield from _import_nodes(node)


def _base_of(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute name `from <base> import ...` refers to, relative levels resolved."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    anchor = package[:len(package) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `module` imports (see the module docstring for what counts)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
            continue
        base = _base_of(node, module, is_package)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in modules:
                found.add(sub)
            elif base in modules:
                found.add(base)
    found.discard(module)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = module_names(root)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(frozenset(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def describe(component: frozenset[str], graph: dict[str, set[str]]) -> str:
    edges = [f"    {a} -> {b}" for a in sorted(component) for b in sorted(graph[a] & component)]
    return "  {" + ", ".join(sorted(component)) + "}\n" + "\n".join(edges)


def test_graph_reads_function_level_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("VERSION = '1'\n")
    (pkg / "a.py").write_text("def f():\n    from deployc import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from deployc import a\n"
                              "from deployc import VERSION\nfrom .sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("import deployc.a\nfrom .. import VERSION\n")
    graph = import_graph(tmp_path)
    assert graph == {"deployc": set(), "deployc.a": {"deployc.b"}, "deployc.b": {"deployc", "deployc.sub.c"},
                     "deployc.sub": {"deployc.sub.c"}, "deployc.sub.c": {"deployc", "deployc.a"}}
    assert cycles(graph) == [frozenset({"deployc.a", "deployc.b", "deployc.sub.c"})]


def cycle_problems(graph: dict[str, set[str]], known: list[frozenset[str]]) -> list[str]:
    """What fails the test: cycles not in `known`, and entries of `known` that are no longer a cycle."""
    found = set(cycles(graph))
    new = [describe(c, graph) for c in sorted(found - set(known), key=sorted)]
    gone = ["  {" + ", ".join(sorted(c)) + "}" for c in known if c not in found]
    problems = []
    if new:
        problems.append("import cycles (break them by moving the shared piece to the lower module):\n"
                        + "\n".join(new))
    if gone:
        problems.append("KNOWN_CYCLES entries that no longer exist as listed (remove or update them):\n"
                        + "\n".join(gone))
    return problems


def test_allow_list_only_shrinks() -> None:
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": set()}
    assert cycle_problems(graph, [frozenset({"a", "b"})]) == []
    (new,) = cycle_problems(graph, [])
    assert "{a, b}" in new and "a -> b" in new and "b -> a" in new
    (gone,) = cycle_problems(graph, [frozenset({"a", "b"}), frozenset({"c", "d"})])
    assert gone.startswith("KNOWN_CYCLES") and "{c, d}" in gone


def test_no_import_cycles() -> None:
    problems = cycle_problems(import_graph(), KNOWN_CYCLES)
    assert not problems, "\n".join(problems)
