"""manifest.json: every file of a build with its sha256 and size, and what made it."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deployc import conventions as c
from deployc.errors import InputError


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_manifest(files: dict[str, bytes], *, name: str, version: str, spec_sha256: str,
                  versions: dict[str, str]) -> dict[str, Any]:
    return {
        "schema_version": c.MANIFEST_SCHEMA_VERSION,
        "name": name,
        "version": version,
        "spec_sha256": spec_sha256,
        "versions": dict(sorted(versions.items())),
        "files": {p: {"sha256": sha256_bytes(b), "size": len(b)} for p, b in sorted(files.items())},
    }


def read_manifest(build_dir: Path) -> dict[str, Any]:
    path = build_dir / c.MANIFEST
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{build_dir}: no {c.MANIFEST}; is this a deployc build folder?") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema_version") != c.MANIFEST_SCHEMA_VERSION:
        raise InputError(f"{path}: not a deployc manifest of schema_version {c.MANIFEST_SCHEMA_VERSION}")
    return doc


def verify_build(build_dir: Path, unlisted: Callable[[dict[str, Any]], set[str]] = lambda listed: set()
                 ) -> dict[str, Any]:
    """Check every file against the manifest (and that no file or link was added); return the manifest.
    `unlisted(files)`: the paths that may exist without being listed (a signed build's signature files)."""
    doc = read_manifest(build_dir)
    problems = []
    listed = doc["files"]
    allowed = unlisted(listed)
    for rel, meta in sorted(listed.items()):
        p = build_dir / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif p.stat().st_size != meta["size"] or sha256_bytes(p.read_bytes()) != meta["sha256"]:
            problems.append(f"{rel}: modified since the build")
    for p in sorted(build_dir.rglob("*")):
        rel = p.relative_to(build_dir).as_posix()
        if (p.is_file() or p.is_symlink()) and rel != c.MANIFEST and rel not in listed and rel not in allowed:
            problems.append(f"{rel}: not part of the build")
    if problems:
        raise InputError(f"{build_dir}: the build does not match its manifest:\n  " + "\n  ".join(problems))
    return doc
