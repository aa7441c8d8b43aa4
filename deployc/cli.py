"""The `deployc` command: a thin layer over `deployc.api`. Exit codes: 0 ok, 1 invalid spec or input,
2 usage, 3 a verification gate failed, 4 an external service failed."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from deployc import __version__
from deployc.errors import EXIT_OK, EXIT_USAGE, DeploycError

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

    b = sub.add_parser("build", help="run the plan and write the build folder")
    b.add_argument("spec", type=Path)
    b.add_argument("--out", type=Path, help="output folder (default: build/<name>)")
    b.add_argument("--cache-dir", type=Path, help="step cache (default: $DEPLOYC_CACHE_DIR or ~/.cache/deployc)")
    b.add_argument("--format", choices=("text", "json"), default="text")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    sub.add_parser("schema", help="print the JSON Schema of deploy.yaml")
    sub.add_parser("serve", help="serve a build folder (Open Inference Protocol, SageMaker, /metrics)",
                   add_help=False)
    sub.add_parser("deploy", help="deploy a build folder (sagemaker)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("serve", "deploy"):  # these own their arguments
        return _delegate(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    try:
        return _run(args)
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
    try:
        if command == "serve":
            from deployc.serve.cli import main as serve_main

            return serve_main(rest)
        from deployc.deploy.cli import main as deploy_main

        return deploy_main(rest)
    except ModuleNotFoundError as exc:
        print(f"deployc {command} is not available in this installation ({exc.name})", file=sys.stderr)
        return EXIT_USAGE


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
        result = api.plan(args.spec, args.cache_dir)
        if args.format == "json":
            print(json.dumps(result.to_json(), indent=2, sort_keys=True))
        else:
            _print_plan(result)
        return EXIT_OK
    log = _progress() if not (args.quiet or args.format == "json") else (lambda m: None)
    built = api.build(args.spec, args.out, args.cache_dir, log=log)
    if args.format == "json":
        print(json.dumps({"ok": True, "out": str(built.out_dir), "cached": built.cached,
                          "gates": built.report["gates"], "artifacts": built.report["artifacts"],
                          "files": sorted(built.files)}, indent=2, sort_keys=True))
    else:
        hits = sum(built.cached.values())
        print(f"built {built.out_dir} ({len(built.files)} files; {hits}/{len(built.cached)} steps from cache)")
    return EXIT_OK


def _print_plan(result: object) -> None:
    data = result.to_json()  # type: ignore[attr-defined]
    print(f"plan for {data['name']} {data['version']} (spec sha256 {data['spec_sha256'][:12]})")
    width = max(len(s["id"]) for s in data["steps"])
    for s in data["steps"]:
        state = "cached" if s["cached"] else "to run"
        print(f"  {s['id']:<{width}}  {s['key'][:12]}  {state:<6}  {s['description']}")
    if data["targets"]:
        print(f"targets: {', '.join(data['targets'])}")


def _progress():  # type: ignore[no-untyped-def]
    """Plain lines in CI logs; rich styling on a terminal."""
    if sys.stderr.isatty() and not os.environ.get("CI"):
        from rich.console import Console

        console = Console(stderr=True, highlight=False)
        return lambda m: console.print(f"[dim]deployc[/dim] {m}")
    return lambda m: print(f"deployc: {m}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
