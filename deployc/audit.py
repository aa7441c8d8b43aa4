"""The audit trail: one JSON line per `deployc deploy`, appended to a log that deployc never rewrites.

Each line says when (UTC), who (as far as the environment tells: the CI's variables, the login name, the AWS
caller identity), what (the build's name, version, manifest hash and signature), where (the endpoint, its
config and model), what changed (each applied call) and how it ended (`ok`, `refused` before any AWS call, or
`failed` with the error). The file is opened with O_APPEND, each line is one write(2) followed by fsync, and
nothing ever truncates, seeks in or rewrites it (docs/provenance.md, "Audit trail").
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deployc import __version__
from deployc import conventions as c
from deployc.errors import input_error

AUDIT_ENV = "DEPLOYC_AUDIT_LOG"
AUDIT_FORMAT_VERSION = 1

# CI variables that say who or what started a run (each one only when set); values are names and URLs, no secrets
CI_VARIABLES = ("GITHUB_ACTOR", "GITHUB_TRIGGERING_ACTOR", "GITHUB_REPOSITORY", "GITHUB_REF", "GITHUB_SHA",
                "GITHUB_WORKFLOW", "GITHUB_RUN_ID", "GITHUB_RUN_ATTEMPT", "GITHUB_SERVER_URL",
                "GITLAB_USER_LOGIN", "CI_PROJECT_PATH", "CI_COMMIT_SHA", "CI_PIPELINE_URL", "CI_JOB_URL",
                "BUILDKITE_BUILD_CREATOR", "BUILDKITE_BUILD_URL", "CIRCLE_USERNAME", "CIRCLE_BUILD_URL",
                "BUILD_REQUESTEDFOR", "BUILD_BUILDURI", "JENKINS_URL", "BUILD_URL", "CI")


def default_path(environ: Mapping[str, str] | None = None) -> Path:
    """$DEPLOYC_AUDIT_LOG, else $XDG_STATE_HOME/deployc/audit.jsonl (~/.local/state/deployc/audit.jsonl)."""
    env = os.environ if environ is None else environ
    if env.get(AUDIT_ENV):
        return Path(env[AUDIT_ENV])
    state = Path(env["XDG_STATE_HOME"]) if env.get("XDG_STATE_HOME") else Path.home() / ".local" / "state"
    return state / "deployc" / "audit.jsonl"


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def actor(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Who runs this, as far as the environment tells (the AWS caller identity is added by the deploy)."""
    env = os.environ if environ is None else environ
    found: dict[str, Any] = {"user": env.get("USER") or env.get("LOGNAME") or None, "host": socket.gethostname()}
    ci = {k: env[k] for k in CI_VARIABLES if env.get(k)}
    if ci:
        found["ci"] = ci
    return found


def build_identity(build_dir: Path) -> dict[str, Any]:
    """The build a line is about: its name and version (from manifest.json) and manifest.json's sha256, which
    pins every file of the build; unreadable parts are left out, never guessed."""
    found: dict[str, Any] = {"path": str(build_dir)}
    try:
        data = (Path(build_dir) / c.MANIFEST).read_bytes()
    except OSError:
        return found
    found["manifest_sha256"] = hashlib.sha256(data).hexdigest()
    try:
        doc = json.loads(data)
        found.update(name=doc.get("name"), version=doc.get("version"))
    except (ValueError, AttributeError):
        pass
    return found


class AuditLog:
    """An append-only JSON-lines file. Opened before a deploy starts, so an unwritable log stops the deploy
    before any AWS call (exit 1), rather than a deploy that leaves no trace."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise input_error(exc, f"{self.path}: cannot open the audit log (--audit-log, ${AUDIT_ENV})") from None

    def append(self, record: Mapping[str, Any]) -> None:
        line = (json.dumps({"format_version": AUDIT_FORMAT_VERSION, "deployc": __version__, **record},
                           sort_keys=True, default=str, ensure_ascii=False) + "\n").encode()
        try:
            os.write(self._fd, line)  # one write of the whole line: O_APPEND places it atomically at the end
            os.fsync(self._fd)
        except OSError as exc:
            raise input_error(exc, f"{self.path}: cannot append to the audit log") from None

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read(path: Path) -> list[dict[str, Any]]:
    """Every line of an audit log, oldest first."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
