"""The `deployc` command: a thin layer over `deployc.api`. Exit codes: 0 ok, 1 invalid spec or input,
2 usage, 3 a verification gate failed, 4 an external service failed."""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployc import __version__
from deployc.errors import EXIT_OK, DeploycError, input_error

if TYPE_CHECKING:
    from rich.console import Console

    from deployc.api import BuildResult, CheckResult, PlanResult, SpecBuild

EPILOG = "exit codes: 0 success, 1 invalid spec or input, 2 usage error, 3 a verification gate failed, " \
         "4 an external service failed"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deployc", description="Compile deploy.yaml into verified model artifacts, "
                                "serving configs and SLO monitoring.", epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"deployc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    v = sub.add_parser("validate", help="check a deploy.yaml and report every problem")
    v.add_argument("spec", type=Path)
    v.add_argument("--format", choices=("text", "json"), default="text")

    pl = sub.add_parser("plan", help="print the build steps, their content hashes and whether they are cached")
    pl.add_argument("spec", type=Path)
    pl.add_argument("--cache-dir", type=Path)
    pl.add_argument("--format", choices=("text", "json"), default="text")
    _remote_cache_flags(pl, writes=False)

    b = sub.add_parser("build", help="run the plan and write the build folder")
    b.add_argument("spec", type=Path, nargs="+", help="deploy.yaml files, or folders searched for deploy.yaml")
    b.add_argument("--out", type=Path, help="output folder (default: build/<name>; with several specs, "
                   "the folder that holds one <name> folder per spec)")
    b.add_argument("--check", action="store_true", help="write nothing; exit 1 when the build folder differs "
                   "from what the spec and model produce")
    b.add_argument("-j", "--jobs", type=int, default=0, help="parallel builds with several specs (default: cores)")
    b.add_argument("--cache-dir", type=Path, help="step cache (default: $DEPLOYC_CACHE_DIR or ~/.cache/deployc)")
    b.add_argument("--format", choices=("text", "json"), default="text")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    b.add_argument("--sign", metavar="KEY", help="sign the build with this PEM EC private key (path or PEM text; "
                   "default: the spec's signing.key_env, or $DEPLOYC_SIGNING_KEY); with --check, verify with it")
    b.add_argument("--changed-since", metavar="REF", help="only the specs with an input changed since the git ref "
                   "REF (committed since the branch left REF, uncommitted, or untracked)")
    b.add_argument("--list", action="store_true", help="print the specs that would be built (one a line; "
                   "--format json: one JSON list) and build nothing")
    b.add_argument("--fail-fast", action="store_true", help="with several specs: start no build after the first "
                   "failure; the specs not started are reported as skipped")
    b.add_argument("--summary", metavar="FILE", type=Path, help="append the summary table as Markdown to FILE "
                   "(e.g. $GITHUB_STEP_SUMMARY)")
    _remote_cache_flags(b, writes=True)

    ve = sub.add_parser("verify", help="verify a build's signature (model.sig); exit 1 naming a changed, added "
                        "or removed file")
    ve.add_argument("build", type=Path, help="a build folder, or a served folder such as build/<name>/local")
    ve.add_argument("--key", metavar="PUB", help="the PEM public key (path or PEM text; default $DEPLOYC_VERIFY_KEY)")
    ve.add_argument("--format", choices=("text", "json"), default="text")

    d = sub.add_parser("diff", help="what changed between two build folders (Markdown for pull requests)")
    d.add_argument("old", type=Path)
    d.add_argument("new", type=Path)
    d.add_argument("--format", choices=("markdown", "json"), default="markdown")

    sub.add_parser("schema", help="print the JSON Schema of deploy.yaml")
    sub.add_parser("serve", help="serve a build folder (Open Inference Protocol, SageMaker, /metrics)",
                   add_help=False)
    sub.add_parser("deploy", help="deploy a build folder (sagemaker)", add_help=False)
    sub.add_parser("init", help="write a starting deploy.yaml for a model file", add_help=False)
    return p


def _remote_cache_flags(p: argparse.ArgumentParser, writes: bool) -> None:
    """The shared step cache (docs/ci.md, "Remote cache"); each flag also from the environment or deployc's
    config file ($XDG_CONFIG_HOME/deployc/config.toml, [remote_cache])."""
    g = p.add_argument_group("remote cache")
    g.add_argument("--remote-cache", metavar="S3_URL", help="a shared step cache, s3://BUCKET/PREFIX, looked up "
                   "after the local one (default: $DEPLOYC_REMOTE_CACHE)")
    g.add_argument("--remote-cache-endpoint", metavar="URL", help="an S3-compatible store's URL, e.g. MinIO's "
                   "(default: $DEPLOYC_REMOTE_CACHE_ENDPOINT, else $AWS_ENDPOINT_URL, else AWS)")
    if writes:
        g.add_argument("--remote-cache-read-only", action="store_true", help="read the remote cache, never write "
                       "it (for untrusted pull-request runners; $DEPLOYC_REMOTE_CACHE_READ_ONLY=1)")
    g.add_argument("--remote-cache-required", action="store_true", help="fail (exit 4) when the remote cache "
                   "cannot be reached, instead of building locally ($DEPLOYC_REMOTE_CACHE_REQUIRED=1)")


def _remote(args: argparse.Namespace) -> Any:
    """The remote cache settings of this command: its flags, then the environment, then the config file."""
    from deployc.compiler.remote import RemoteSettings

    return RemoteSettings.resolve(args.remote_cache, args.remote_cache_endpoint,
                                  getattr(args, "remote_cache_read_only", False), args.remote_cache_required)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("serve", "deploy", "init"):  # these own their arguments
        return _delegate(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    try:
        try:
            return _run(args)
        except OSError as exc:  # an OS error no stage turned into a message of its own: still no traceback
            raise input_error(exc) from exc
        except ModuleNotFoundError as exc:  # a library of an extra this installation lacks: name the extra
            from deployc.extras import missing_extra

            if (err := missing_extra(exc, f"deployc {args.command}")) is None:
                raise
            raise err from exc
    except DeploycError as exc:
        if getattr(args, "format", "text") == "json":
            print(json.dumps({"ok": False, "error": type(exc).__name__, "messages": exc.lines()}, indent=2))
        for line in exc.lines():
            print(line, file=sys.stderr)
        if os.environ.get("DEPLOYC_DEBUG") and exc.__cause__ is not None:
            import traceback

            traceback.print_exception(exc.__cause__)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _delegate(command: str, rest: list[str]) -> int:
    """`serve`, `deploy` and `init` parse their own arguments. A library missing from this installation is one
    line naming the extra to install (exit 1), never a traceback."""
    from deployc.extras import MissingExtra, missing_extra, require

    try:
        if command == "init":
            from deployc.init import main as init_main

            return init_main(rest)
        if not (set(rest) & {"-h", "--help"}):
            require(command)
        if command == "serve":
            from deployc.serve.cli import main as serve_main

            return serve_main(rest)
        from deployc.deploy.cli import main as deploy_main

        return deploy_main(rest)
    except ModuleNotFoundError as exc:
        if (err := missing_extra(exc, f"deployc {command}")) is None:
            raise
        print(err, file=sys.stderr)
        return err.exit_code
    except MissingExtra as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code


def _run(args: argparse.Namespace) -> int:
    from deployc import api

    if args.command == "schema":
        from deployc.schema.jsonschema import schema_text

        sys.stdout.write(schema_text())
        return EXIT_OK
    if args.command == "validate":
        spec = api.validate(args.spec)
        if args.format == "json":
            print(json.dumps({"ok": True, "name": spec.name, "version": spec.version}, indent=2))
        else:
            print(f"{args.spec}: valid ({spec.name} {spec.version})")
        return EXIT_OK
    if args.command == "plan":
        result = api.plan(args.spec, args.cache_dir, remote=_remote(args))
        if args.format == "json":
            print(json.dumps(result.to_json(), indent=2, sort_keys=True))
        else:
            _print_plan(result)
        return EXIT_OK
    if args.command == "diff":
        from deployc.diff import diff_builds, render_markdown

        d = diff_builds(args.old, args.new)
        print(json.dumps(d, indent=2, sort_keys=True) if args.format == "json" else render_markdown(d))
        return EXIT_OK
    if args.command == "verify":
        from deployc.signing import verify_path

        verified = verify_path(args.build, args.key)
        if args.format == "json":
            print(json.dumps({"ok": True, **verified.to_json()}, indent=2, sort_keys=True))
        else:
            print(f"{args.build}: signature verified (key sha256 {verified.key_sha256}, {verified.files} files)")
        return EXIT_OK
    from deployc.extras import require

    specs = _expand_specs(args.spec)
    if args.changed_since:
        from deployc.changed import changed_specs

        specs = list(changed_specs(specs, args.changed_since))
    if args.list:
        if args.format == "json":
            print(json.dumps([str(s) for s in specs]))
        else:
            for s in specs:
                print(s)
        return EXIT_OK
    if not specs:
        print(f"no spec has an input changed since {args.changed_since}", file=sys.stderr)
        return EXIT_OK
    require("build")
    if len(specs) > 1:
        return _build_many(specs, args)
    return _build_one(specs[0], args)


def _expand_specs(paths: list[Path]) -> list[Path]:
    from deployc.errors import UsageError

    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(q for q in p.rglob("deploy.yaml") if not any(part.startswith(".") or part == "build"
                                                                        for part in q.relative_to(p).parts[:-1]))
            if not found:
                raise UsageError(f"{p}: no deploy.yaml below this folder")
            out += found
        else:
            out.append(p)
    return out


def _build_one(spec: Path, args: argparse.Namespace) -> int:
    """One `deployc build` (or `--check`); returns the exit code."""
    from deployc import api

    log = _reporter(args)
    remote = _remote(args)
    if args.summary is not None:  # one spec of a CI matrix: its row of the summary, as Markdown
        from deployc.summary import append_markdown, summarize

        name = api.validate(spec).name
        plain = _no_progress if args.quiet or args.format == "json" else _progress
        outcome = api.build_spec(spec, name, args.out or Path("build") / name, args.check, args.cache_dir, plain,
                                 args.sign, remote)
        _print_spec(outcome, args.format)
        append_markdown(summarize([outcome]), args.summary)
        return outcome.exit_code
    if args.check:
        return _print_check(spec, api.check(spec, args.out, args.cache_dir, log=log, sign=args.sign, remote=remote),
                            args.format)
    _print_built(api.build(spec, args.out, args.cache_dir, log=log, sign=args.sign, remote=remote), args.format)
    return EXIT_OK


def _build_many(specs: list[Path], args: argparse.Namespace) -> int:
    """Several specs, built in parallel (each into <out>/<name>); the exit code is the worst of them."""
    import time

    from deployc import api
    from deployc.summary import append_markdown, summarize

    log = _no_progress if args.quiet or args.format == "json" else _progress
    t0 = time.perf_counter()
    results = api.build_many(specs, args.out, check=args.check, jobs=args.jobs, cache_dir=args.cache_dir,
                             log=log, sign=args.sign, remote=_remote(args), fail_fast=args.fail_fast,
                             on_done=lambda r: _print_spec(r, args.format))
    summary = summarize(results, time.perf_counter() - t0)
    if args.format != "json":
        print(summary.text(), end="", file=sys.stderr)
    if args.summary is not None:
        append_markdown(summary, args.summary)
    failed = sum(1 for r in results if not r.ok)
    print(f"{len(results) - failed} of {len(results)} builds succeeded", file=sys.stderr)
    return summary.exit_code


def _print_spec(result: SpecBuild, fmt: str) -> None:
    """One spec of a parallel build, as it finishes: its result on stdout, or its error on stderr."""
    from deployc.api import CheckResult

    prefix = f"{result.spec}: "
    if isinstance(result.result, CheckResult):
        _print_check(result.spec, result.result, fmt, prefix)
    elif result.result is not None:
        _print_built(result.result, fmt, prefix)
    for line in result.messages:
        print(line, file=sys.stderr)


def _print_check(spec: Path, res: CheckResult, fmt: str, prefix: str = "") -> int:
    doc: dict[str, Any] = {"ok": res.clean, "out": str(res.out_dir), "added": res.added,
                           "removed": res.removed, "changed": res.changed}
    if fmt == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
    elif res.clean:
        print(f"{prefix}{res.out_dir}: up to date")
    else:
        print(f"{prefix}{res.out_dir}: out of date with {spec} (run `deployc build {spec}`):", file=sys.stderr)
        for kind in ("added", "removed", "changed"):
            for f in doc[kind]:
                print(f"  {kind:<8} {f}", file=sys.stderr)
    return EXIT_OK if res.clean else 1


def _print_built(built: BuildResult, fmt: str, prefix: str = "") -> None:
    if fmt == "json":
        doc: dict[str, Any] = {"ok": True, "out": str(built.out_dir), "cached": built.cached,
                               "gates": built.report["gates"], "artifacts": built.report["artifacts"],
                               "files": sorted(built.files)}
        if built.remote_hits:
            doc["remote_cached"] = list(built.remote_hits)
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        hits = sum(built.cached.values())
        remote = f", {len(built.remote_hits)} from the remote cache" if built.remote_hits else ""
        print(f"{prefix}built {built.out_dir} ({len(built.files)} files; {hits}/{len(built.cached)} steps from "
              f"cache{remote})")


def _print_plan(result: PlanResult) -> None:
    data = result.to_json()
    print(f"plan for {data['name']} {data['version']} (spec sha256 {data['spec_sha256'][:12]})")
    width = max(len(s["id"]) for s in data["steps"])
    for s in data["steps"]:
        state = "cached" if s["cached"] else "remote" if s.get("remote") else "to run"
        print(f"  {s['id']:<{width}}  {s['key'][:12]}  {state:<6}  {s['description']}")
    if data["targets"]:
        print(f"targets: {', '.join(data['targets'])}")


def _reporter(args: argparse.Namespace) -> Callable[[str], None]:
    """What one build reports to: nothing (`-q`, `--format json`); live bars on a terminal; else plain lines
    (`deployc.progress.LineProgress` over `_progress`: a few lines for each long step)."""
    from deployc.progress import Progress, RichProgress

    if args.quiet or args.format == "json":
        return Progress()
    if _terminal():
        return RichProgress(_console())
    return _progress


def _terminal() -> bool:
    """Progress bars only for a person at a terminal: not in CI logs, pipes or dumb terminals."""
    return sys.stderr.isatty() and not os.environ.get("CI") and os.environ.get("TERM") != "dumb"


def _no_progress(_: str) -> None:
    return None


def _progress(message: str) -> None:
    """Plain lines in CI logs; rich styling on a terminal. A module-level function: parallel builds call it in
    their worker processes."""
    if _terminal():
        from rich.markup import escape

        _console().print(f"[dim]deployc[/dim] {escape(message)}")
    else:
        print(f"deployc: {message}", file=sys.stderr, flush=True)


@cache
def _console() -> Console:
    """A console on its own copy of the terminal's file descriptor: while a step silences fd 2 around a native
    library's chatter (deployc.ml.quiet), the bar keeps drawing, and its redraws stay where it drew them."""
    from rich.console import Console

    try:
        stream: Any = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding=sys.stderr.encoding,
                                errors="replace")
    except (OSError, ValueError, AttributeError):  # no real fd behind sys.stderr
        stream = sys.stderr
    return Console(file=stream, highlight=False)


if __name__ == "__main__":
    sys.exit(main())
