"""`--changed-since REF`: which specs of a monorepo have an input that changed since a git ref.

Changed means: in `git diff REF...HEAD` (what this branch changed since it left REF), or changed in the work
tree and not committed yet, or untracked and not ignored. Both sides of a rename count, and so does a deleted
file. A spec's inputs are the spec file, its labels, and every file or folder a step of its plan reads (the
model, the data sets, a file a pass names such as distill's student, whatever a plugin's steps declare), as
`deployc plan` lists them. deployc's own version and the libraries' are no files: they are left out.

Every path a spec names stays inside the spec's folder, symbolic links resolved (deployc.compiler.validate), so a
spec whose folder holds no changed path is unchanged without reading it. A spec in a folder with changes is
planned (no TensorFlow; the files are hashed as `deployc plan` does); one that no longer validates is counted
as changed, so that its build reports why. A spec outside the repository is always counted as changed.
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from deployc.errors import DeploycError, InputError


@dataclass(frozen=True)
class Changes:
    """The paths changed since `ref`, relative to the repository's top folder (POSIX separators)."""

    ref: str
    base: str  # the merge base of `ref` and HEAD: what `REF...HEAD` compares with
    root: Path  # the repository's top folder, symbolic links resolved
    paths: frozenset[str]

    def under(self, folder: Path) -> list[str]:
        """The changed paths inside `folder` (which need not exist any more)."""
        rel = _relative(self.root, folder)
        if rel is None:
            return []
        return sorted(p for p in self.paths if _within(p, rel))


def changed_specs(specs: Sequence[Path], ref: str, cwd: Path | None = None) -> dict[Path, list[str]]:
    """The specs among `specs` with an input changed since `ref`, in their order, each with why: the changed
    inputs (paths relative to the repository), or a sentence when it cannot tell.

    The repository is the one holding `cwd` (default: the working folder). Raises InputError (exit 1) when
    that is no git repository, git is missing, or `ref` names no commit."""
    changes = changed_paths(ref, cwd)
    out: dict[Path, list[str]] = {}
    for spec in dict.fromkeys(specs):
        why = spec_changes(spec, changes)
        if why:
            out[spec] = why
    return out


def changed_paths(ref: str, cwd: Path | None = None) -> Changes:
    """Every path changed since `ref`: committed on this branch, changed in the work tree, or untracked."""
    where = (cwd or Path.cwd()).resolve()
    top = _git(["rev-parse", "--show-toplevel"], where, not_repo=f"{where} is not inside a git repository "
               "(--changed-since compares with a git ref)")
    root = Path(top.strip()).resolve()
    if ref.startswith("-") or not ref:
        raise InputError(f"--changed-since: {ref!r} is not a git ref")
    commit = _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], root,
                  failed=f"--changed-since: unknown git ref {ref!r} (no commit of that name; in CI, fetch it "
                  "first, e.g. actions/checkout with fetch-depth: 0)").strip()
    base = _git(["merge-base", commit, "HEAD"], root,
                failed=f"--changed-since: {ref!r} and HEAD have no common commit (a shallow clone? fetch the "
                "history, e.g. actions/checkout with fetch-depth: 0)").strip()
    paths: set[str] = set()
    # --no-renames: a rename is its deleted old path and its added new one, so both sides count
    for args in (["diff", "--name-only", "--no-renames", "-z", base, "HEAD"],  # = REF...HEAD
                 ["diff", "--name-only", "--no-renames", "-z", "HEAD"],  # staged and unstaged changes
                 ["ls-files", "--others", "--exclude-standard", "-z"]):  # untracked, not ignored
        paths.update(p for p in _git(args, root).split("\0") if p)
    return Changes(ref=ref, base=base, root=root, paths=frozenset(paths))


def spec_changes(spec: Path, changes: Changes) -> list[str]:
    """Why `spec` counts as changed (empty: it does not)."""
    folder = spec.parent
    if _relative(changes.root, folder) is None:
        return [f"{spec} is outside the git repository {changes.root}: always built"]
    nearby = changes.under(folder)
    if not nearby:
        return []
    try:
        inputs = spec_inputs(spec)
    except DeploycError as exc:  # it no longer validates (a data file deleted, ...): its build says why
        return [*nearby, f"the spec does not validate: {exc.lines()[0]}"]
    wanted: set[str] = set()
    for path in inputs:
        wanted.update(_repo_paths(path, changes.root))
    return _matching(nearby, wanted)


def spec_inputs(spec: Path) -> list[Path]:
    """The files and folders a build of `spec` reads: the spec, its labels, and every step's input files."""
    from deployc.compiler.load import load_spec
    from deployc.compiler.plan import make_plan
    from deployc.compiler.validate import validate

    loaded = load_spec(spec)
    validated = validate(loaded)
    plan = make_plan(validated, spec, loaded.text)
    found = [spec]
    if plan.resolved.labels is not None:
        found.append(plan.resolved.labels)
    for step in plan.steps:
        found += step.input_files
    return list(dict.fromkeys(found))


def _repo_paths(path: Path, root: Path) -> set[str]:
    """`path` as git names it (a symbolic link is a file of its own in git), and what each link on the way
    resolves to, inside a folder too."""
    out = {r for r in (_relative(root, path), _relative(root, path.resolve())) if r is not None}
    here = Path(os.path.abspath(path))
    for parent in (here, *here.parents):  # a linked folder on the way: the link itself is what git tracks
        if parent.is_symlink() and (r := _relative(root, parent)) is not None:
            out.add(r)
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in (*dirnames, *filenames):
                p = Path(dirpath) / name
                if p.is_symlink() and (r := _relative(root, p.resolve())) is not None:
                    out.add(r)
    return out


def _matching(changed: list[str], wanted: set[str]) -> list[str]:
    """The changed paths that are a wanted path, lie inside a wanted folder, or stand on the way to one (a link
    or a file where a folder was)."""
    return [c for c in changed if any(_within(c, w) or _within(w, c) for w in wanted)]


def _within(path: str, folder: str) -> bool:
    """`path` is `folder` or inside it (both relative to the repository's top folder)."""
    return folder == "." or PurePosixPath(path).is_relative_to(folder)


def _relative(root: Path, path: Path) -> str | None:
    """`path` relative to the repository's top folder, or None outside it. Tried as written (made absolute) and
    with its folder's links resolved, since the top folder git reports is resolved."""
    absolute = Path(os.path.abspath(path))
    for candidate in (absolute, absolute.parent.resolve() / absolute.name):
        try:
            return candidate.relative_to(root).as_posix()
        except ValueError:
            continue
    return None


def _git(args: list[str], cwd: Path, not_repo: str | None = None, failed: str | None = None) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=120,
                              encoding="utf-8", errors="surrogateescape",
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"})
    except FileNotFoundError:
        raise InputError("--changed-since needs git, which is not installed") from None
    except subprocess.TimeoutExpired:
        raise InputError(f"git {args[0]} did not finish in 120 s") from None
    if proc.returncode != 0:
        if not_repo is not None and "not a git repository" in proc.stderr:
            raise InputError(not_repo)
        if failed is not None:
            raise InputError(failed)
        detail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        raise InputError(f"git {args[0]} failed: {detail}")
    return proc.stdout
