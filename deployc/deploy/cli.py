"""`deployc deploy BUILD_DIR --target sagemaker`: the command line over `deployc.deploy.sagemaker.deploy`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deployc.errors import EXIT_OK, EXIT_USAGE, DeploycError

TARGETS = ("sagemaker",)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deployc deploy",
        description="Deploy a built bundle (deployc build's output folder). The bundle is verified against its "
                    "manifest first; the spec is not read again.",
    )
    p.add_argument("build_dir", metavar="BUILD_DIR", type=Path, help="the build folder (build/<name>)")
    p.add_argument("--target", required=True, choices=TARGETS, help="where to deploy")
    p.add_argument("--dry-run", action="store_true", help="print the AWS calls the deploy would make; call nothing")
    p.add_argument("--endpoint-url", metavar="URL",
                   help="send every AWS call to this URL (a stand-in such as moto); AWS_ENDPOINT_URL also works")
    p.add_argument("--wait-timeout", metavar="S", type=float, default=1800.0,
                   help="seconds to wait for the endpoint to be InService (default 1800)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="json: progress off, one result document on stdout")
    p.add_argument("--key", metavar="PUB", help="verify the build's signature (model.sig) with this PEM public key "
                   "before any AWS call (default: $DEPLOYC_VERIFY_KEY, a path or the PEM text)")
    p.add_argument("--require-signature", action="store_true", help="refuse a build whose signature does not "
                   "verify, or that has none (also: DEPLOYC_REQUIRE_SIGNATURE=1)")
    p.add_argument("--audit-log", metavar="PATH", type=Path, help="append this deploy's audit line here (default: "
                   "$DEPLOYC_AUDIT_LOG, else $XDG_STATE_HOME/deployc/audit.jsonl)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 ok, 1 bad, tampered or unsigned bundle or an unset !ENV variable, 2 usage, 4 AWS failed
    (docs/sagemaker.md, docs/provenance.md)."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0) if exc.code in (0, None) else EXIT_USAGE
    if args.wait_timeout <= 0:
        print("deployc deploy: --wait-timeout must be positive", file=sys.stderr)
        return EXIT_USAGE
    from deployc.deploy.sagemaker import deploy

    as_json = args.format == "json"
    try:
        result = deploy(args.build_dir, dry_run=args.dry_run, endpoint_url=args.endpoint_url,
                        wait_timeout_s=args.wait_timeout, log=(lambda m: None) if as_json else print,
                        verify_key=args.key, require_signature=args.require_signature, audit_log=args.audit_log)
    except DeploycError as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": type(exc).__name__, "messages": exc.lines()}, indent=2))
        for line in exc.lines():
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    if as_json:
        print(json.dumps({"ok": True, **result}, indent=2, sort_keys=True, default=str))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
