"""The Python API behind the CLI: `validate`, `plan`, `build`, `check` and `build_many`, each returning a result."""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployc import __version__
from deployc import conventions as c
from deployc.compiler import gates
from deployc.compiler.cache import Cache, default_cache_dir
from deployc.compiler.gates import GateCheck
from deployc.compiler.load import LoadedSpec, load_spec, value_position
from deployc.compiler.plan import Plan, make_plan
from deployc.compiler.remote import RemoteSettings
from deployc.compiler.validate import dotted
from deployc.compiler.validate import validate as _validate
from deployc.errors import (
    EXIT_INVALID,
    EXIT_OK,
    DeploycError,
    GateError,
    InputError,
    Problem,
    SpecError,
    SpecFieldError,
    UsageError,
)
from deployc.progress import as_progress
from deployc.schema.spec import DeploySpec

VERSIONED_LIBS = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert", "numpy")


def _quiet(_: str) -> None:
    return None


def validate(spec_path: Path) -> DeploySpec:
    return _validate(load_spec(spec_path))


@dataclass(frozen=True)
class PlanResult:
    plan: Plan
    cached: dict[str, bool]
    remote: dict[str, bool] | None = None  # with a remote cache: step id -> whether the remote holds it

    def to_json(self) -> dict[str, Any]:
        doc = self.plan.to_json(self.cached)
        if self.remote is not None:
            for row in doc["steps"]:
                row["remote"] = self.remote[row["id"]]
        return doc


def open_cache(cache_dir: Path | None, remote: RemoteSettings | None = None) -> Cache:
    """The step cache of a build: `cache_dir` (default $DEPLOYC_CACHE_DIR or ~/.cache/deployc), backed by the
    remote cache `remote` names (None: the one $DEPLOYC_REMOTE_CACHE or deployc's config file names, if any)."""
    from deployc.compiler.remote import RemoteCache  # boto3 itself only once the store is first asked

    settings = remote if remote is not None else RemoteSettings.resolve()
    return Cache(cache_dir or default_cache_dir(), RemoteCache(settings) if settings.enabled else None)


def plan(spec_path: Path, cache_dir: Path | None = None, remote: RemoteSettings | None = None) -> PlanResult:
    """The plan, with which steps the local cache holds (and, with a remote cache, which the remote holds: one
    HEAD per step the local cache lacks)."""
    loaded = load_spec(spec_path)
    p = make_plan(_validate(loaded), spec_path, loaded.text)
    cache = open_cache(cache_dir, remote)
    cached = {s.id: cache.has(p.keys[s.id]) for s in p.steps}
    if cache.remote is None:
        return PlanResult(p, cached)
    return PlanResult(p, cached, {s.id: not cached[s.id] and cache.has_remote(p.keys[s.id]) for s in p.steps})


@dataclass(frozen=True)
class BuildResult:
    out_dir: Path
    files: dict[str, bytes]
    cached: dict[str, bool]
    report: dict[str, Any]
    gates: list[GateCheck] = field(default_factory=list)
    remote_hits: tuple[str, ...] = ()  # the cached steps that came from the remote cache


@dataclass(frozen=True)
class CompiledBuild:
    """Everything one build produces, before anything is written to its build folder."""

    plan: Plan
    files: dict[str, bytes]  # relative path -> content: the whole build folder
    cached: dict[str, bool]  # step id -> whether its result came from the cache
    report: dict[str, Any]  # what report.json holds
    gates: list[GateCheck]
    remote_hits: tuple[str, ...] = ()  # the cached steps that came from the remote cache


def default_out_dir(spec: DeploySpec) -> Path:
    return Path("build") / spec.name


def spec_label(spec_path: Path) -> str:
    """How generated files name the spec: relative to the working folder when inside it (stable in CI)."""
    rel = os.path.relpath(spec_path)
    return Path(rel).as_posix() if not rel.startswith("..") else spec_path.name


def compile_build(spec_path: Path, cache_dir: Path | None = None, log: Callable[[str], None] = _quiet,
                  out_dir: Path | None = None, validated: tuple[LoadedSpec, DeploySpec] | None = None,
                  remote: RemoteSettings | None = None) -> CompiledBuild:
    """Everything a build writes, as {path: bytes}, without writing it (steps still fill the cache).

    `validated`: the spec as `_load_validated` returned it, so a caller that already validated (which reads
    every data set) does not do it twice. `remote`: see `open_cache`."""
    return _compile_located(validated or _load_validated(spec_path), spec_path, open_cache(cache_dir, remote), log,
                            out_dir)


def _compile_located(validated: tuple[LoadedSpec, DeploySpec], spec_path: Path, cache: Cache,
                     log: Callable[[str], None], out_dir: Path | None) -> CompiledBuild:
    loaded, spec = validated
    try:
        return _compile(loaded, spec, spec_path, cache, log, out_dir)
    except SpecFieldError as exc:  # found by a step, reported at its field like any spec error
        line, col = value_position(loaded.tree, exc.loc)
        raise SpecError([Problem(loaded.display, line, col, dotted(exc.loc), exc.message)]) from None


def _load_validated(spec_path: Path) -> tuple[LoadedSpec, DeploySpec]:
    loaded = load_spec(spec_path)
    return loaded, _validate(loaded)


def _compile(loaded: LoadedSpec, spec: DeploySpec, spec_path: Path, cache: Cache,
             log: Callable[[str], None], out_dir: Path | None) -> CompiledBuild:
    from deployc.compiler import emit, report, results
    from deployc.compiler.execute import execute
    from deployc.compiler.steps import lib_version
    from deployc.manifest import make_manifest
    from deployc.render import dump_json

    p = make_plan(spec, spec_path, loaded.text)
    out = out_dir or default_out_dir(spec)
    outputs, cached = execute(p, cache, log)

    checks: list[GateCheck] = []
    ref = results.reference(outputs)
    for _, r in results.evaluations(p, outputs):
        if r.shipped:
            checks += gates.check(p.resolved.gates, dict(ref.evaluation) if ref else {}, dict(r.evaluation),
                                  r.artifact)
    rep = report.make_report(p, outputs, checks)
    failed = [ch for ch in checks if not ch.passed]
    if failed:
        raise GateError(f"{len(failed)} verification gate(s) failed; {out} was left unchanged",
                        gates.table(checks))
    label = spec_label(spec_path)
    files = emit.emit_all(p, outputs, spec_file=label)
    files[c.REPORT_JSON] = dump_json(rep)
    visual = _visual_report(rep, label, cache, log)
    files.update(visual)
    from deployc.compiler.report_html import chart_links

    files[c.REPORT_MD] = report.render_markdown(rep, label, chart_links(visual)).encode()
    files[c.PLAN_JSON] = dump_json(p.to_json())
    versions = {"deployc": __version__, **{d: lib_version(d) for d in VERSIONED_LIBS}, **_plugin_versions(p)}
    manifest = make_manifest(files, name=p.resolved.name, version=p.resolved.version, spec_sha256=p.spec_sha256,
                             versions=versions)
    files[c.MANIFEST] = dump_json(manifest)
    remote_hits = tuple(s.id for s in p.steps if p.keys[s.id] in cache.from_remote)
    return CompiledBuild(plan=p, files=files, cached=cached, report=rep, gates=checks, remote_hits=remote_hits)


def _visual_report(rep: dict[str, Any], label: str, cache: Cache, log: Callable[[str], None]) -> dict[str, bytes]:
    """report.html and its SVG charts: a pure function of report.json, kept in the step cache under a hash of it
    (and of deployc's code and matplotlib's version), so a build from cache does not draw them again."""
    import hashlib
    import json

    from deployc.compiler.report_html import visual_report
    from deployc.compiler.steps import code_fingerprint, lib_version

    key = hashlib.sha256(json.dumps({"visual_report": rep, "spec_file": label, "code": code_fingerprint(),
                                     "matplotlib": lib_version("matplotlib")}, sort_keys=True).encode()).hexdigest()
    hit = cache.get(key)
    if hit is not None:
        return {rel: (hit[0] / rel).read_bytes() for rel in hit[1]["files"]}
    with as_progress(log).task("drawing report.html"):
        files = visual_report(rep, label)
    try:
        staged = cache.staging()
    except InputError:  # a read-only cache only loses this shortcut
        return files
    for rel, data in files.items():
        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        (staged / rel).write_bytes(data)
    cache.put(key, staged, {"files": sorted(files)})
    return files


def build(spec_path: Path, out_dir: Path | None = None, cache_dir: Path | None = None,
          log: Callable[[str], None] = _quiet, sign: str | None = None, remote: RemoteSettings | None = None
          ) -> BuildResult:
    """Run the plan (cached steps are reused), check the gates, emit every target, write atomically.

    `sign`: a PEM EC private key (path or text) that signs the build (deployc.signing); default the spec's
    `signing.key_env` variable or $DEPLOYC_SIGNING_KEY. The signatures are written with the build, atomically.

    `log` gets each progress line; a `deployc.progress.Progress` (a `RichProgress` on a terminal) also gets the
    long steps' tasks (training epochs, calibration, conversions) as they advance.

    `remote`: the shared step cache (deployc.compiler.remote); None: the one the environment or deployc's config
    file names, if any."""
    from deployc.compiler import emit
    from deployc.compiler.write import build_lock, check_replaceable, check_writable, recover, write_output
    from deployc.signing import signed_build, signing_key

    validated = _load_validated(spec_path)
    out = out_dir or default_out_dir(validated[1])
    key = signing_key(sign, validated[1])  # a required signature without a key fails before any step runs
    check_writable(out)
    with build_lock(out, log):
        recover(out)
        check_replaceable(out)
        cache = open_cache(cache_dir, remote)
        compiled = _compile_located(validated, spec_path, cache, log, out)
        files = signed_build(compiled.files, key, validated[1].name)
        write_output(out, files, check=emit.post_write_check(compiled.plan, cache))
    return BuildResult(out_dir=out, files=files, cached=compiled.cached, report=compiled.report,
                       gates=compiled.gates, remote_hits=compiled.remote_hits)


@dataclass(frozen=True)
class CheckResult:
    out_dir: Path
    added: list[str]  # would be written, not in the folder
    removed: list[str]  # in the folder, would not be written
    changed: list[str]

    @property
    def clean(self) -> bool:
        return not (self.added or self.removed or self.changed)


def check(spec_path: Path, out_dir: Path | None = None, cache_dir: Path | None = None,
          log: Callable[[str], None] = _quiet, sign: str | None = None, remote: RemoteSettings | None = None
          ) -> CheckResult:
    """Compare what a build would write with the committed build folder; write nothing there. Signature files
    are verified, not compared (deployc.signing.check_build): ECDSA signatures differ on every signing."""
    from deployc.compiler.write import read_tree
    from deployc.signing import check_build

    validated = _load_validated(spec_path)
    out = out_dir or default_out_dir(validated[1])
    files = compile_build(spec_path, cache_dir, log, out, validated, remote).files
    have, sig_added, sig_removed, sig_changed = check_build(files, read_tree(out) if out.is_dir() else {}, out,
                                                            validated[1], sign)
    return CheckResult(out_dir=out, added=sorted(set(files) - set(have)) + sig_added,
                       removed=sorted(set(have) - set(files)) + sig_removed,
                       changed=sorted(k for k in set(files) & set(have) if files[k] != have[k]) + sig_changed)


@dataclass(frozen=True)
class SpecBuild:
    """One spec of `build_many`: what its build (or check) returned, or the error that stopped it."""

    spec: Path
    name: str
    out_dir: Path
    result: BuildResult | CheckResult | None  # None when it failed
    error: str | None = None  # the class name of the DeploycError that stopped it
    messages: list[str] = field(default_factory=list)  # that error's lines, as the CLI prints them
    exit_code: int = EXIT_OK  # the error's exit code; 1 for a check that found differences
    seconds: float | None = None  # the spec's wall time

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK


def build_many(specs: Sequence[Path], out_root: Path | None = None, *, check: bool = False, jobs: int = 0,
               cache_dir: Path | None = None, log: Callable[[str], None] = _quiet,
               on_done: Callable[[SpecBuild], None] | None = None, sign: str | None = None,
               remote: RemoteSettings | None = None, fail_fast: bool = False) -> list[SpecBuild]:
    """Build (or, with `check`, compare) several specs in parallel worker processes, each into
    `<out_root>/<name>` (default root: build/).

    With `fail_fast`, at most `jobs` specs run at once and none starts after the first failure; those never
    started come back with `error=deployc.summary.SKIPPED`, exit code 0.

    Every spec is validated, and the names checked unique (UsageError), before any build starts. A failing spec
    does not stop the others: its `SpecBuild` carries the error. `log` runs in the worker processes, with each
    line prefixed by its spec, so it must be picklable (a module-level function); the steps' tasks reach it as
    a few plain lines each (`deployc.progress.LineProgress`); `on_done` runs in this process
    as each spec finishes. `remote`: as for `build` (resolved here, once, for every worker). Returns the results
    in the order of `specs` (a file named twice is built once).
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    from deployc.summary import SKIPPED

    unique = list(dict.fromkeys(specs))
    if not unique:
        return []
    names = {s: validate(s).name for s in unique}
    dupes = [n for n, k in Counter(names.values()).items() if k > 1]
    if dupes:
        raise UsageError(f"several specs are named {dupes[0]!r}; names must be unique to build them together")
    root = out_root or Path("build")
    settings = remote if remote is not None else RemoteSettings.resolve()
    if settings.enabled:
        settings.location()  # a malformed URL fails here, once, not in every worker
    workers = jobs or min(len(unique), os.cpu_count() or 1)
    done: dict[Path, SpecBuild] = {}
    waiting = list(unique)
    failed: SpecBuild | None = None  # with fail_fast: the first spec that failed
    ctx = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        running: set[Future[SpecBuild]] = set()
        while waiting or running:
            # without fail_fast every spec is queued at once; with it, the next one only as a worker frees up
            while waiting and failed is None and (not fail_fast or len(running) < workers):
                s = waiting.pop(0)
                running.add(pool.submit(build_spec, s, names[s], root / names[s], check, cache_dir, log, sign,
                                        settings))
            if not running:
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                outcome = fut.result()
                done[outcome.spec] = outcome
                if on_done is not None:
                    on_done(outcome)
                if fail_fast and not outcome.ok and failed is None:
                    failed = outcome
    for s in waiting:  # never started: fail_fast stopped after `failed`
        skipped = SpecBuild(s, names[s], root / names[s], None, error=SKIPPED, messages=[
            f"{s}: not built: --fail-fast stopped after {failed.spec if failed else 'a failure'} failed"])
        done[s] = skipped
        if on_done is not None:
            on_done(skipped)
    return [done[s] for s in unique]


def build_spec(spec: Path, name: str, out: Path, check_only: bool, cache_dir: Path | None,
               log: Callable[[str], None], sign: str | None = None, remote: RemoteSettings | None = None
               ) -> SpecBuild:
    """One spec of `build_many` (the body of each worker process), as a SpecBuild that carries any error: its
    tasks are reported as plain lines through `log`."""
    import time

    t0 = time.perf_counter()
    prefixed = as_progress(log).prefixed(f"{spec}: ")
    try:
        if check_only:
            checked = check(spec, out, cache_dir, log=prefixed, sign=sign, remote=remote)
            return SpecBuild(spec, name, out, checked, exit_code=EXIT_OK if checked.clean else EXIT_INVALID,
                             seconds=time.perf_counter() - t0)
        built = build(spec, out, cache_dir, log=prefixed, sign=sign, remote=remote)
        return SpecBuild(spec, name, out, built, seconds=time.perf_counter() - t0)
    except DeploycError as exc:
        return SpecBuild(spec, name, out, None, error=type(exc).__name__, messages=exc.lines(),
                         exit_code=exc.exit_code, seconds=time.perf_counter() - t0)


def _plugin_versions(p: Plan) -> dict[str, str]:
    """{distribution: version} of every plugin target and pass the build used (built-ins are deployc's)."""
    used = [u.entry for u in p.resolved.passes] + [t.entry for t in p.resolved.targets]
    return {e.distribution: e.version for e in used if not e.builtin}
