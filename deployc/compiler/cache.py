"""The step cache: one folder per step key, written atomically and verified by hash on every read.

Layout: `<root>/steps/<key[:2]>/<key>/` holds the step's files and `_entry.json` ({result, files: {rel: sha256}}).
A half-written entry never exists (entries are built in a temporary folder and renamed into place); an entry
whose files do not match their recorded hashes is removed and rebuilt, never trusted.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from deployc.compiler.steps import file_digest

ENTRY = "_entry.json"


def default_cache_dir() -> Path:
    env = os.environ.get("DEPLOYC_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "deployc"


class Cache:
    def __init__(self, root: Path):
        self.root = root

    def _dir(self, key: str) -> Path:
        return self.root / "steps" / key[:2] / key

    def has(self, key: str) -> bool:
        """Cheap check (no hashing) for `deployc plan`."""
        return (self._dir(key) / ENTRY).is_file()

    def get(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        d = self._dir(key)
        try:
            entry = json.loads((d / ENTRY).read_text())
            files = entry["files"]
            for rel, digest in files.items():
                if file_digest(d / rel) != digest:
                    raise ValueError(f"{rel} does not match its hash")
            return d, entry["result"]
        except FileNotFoundError:
            if d.exists():
                shutil.rmtree(d, ignore_errors=True)
            return None
        except (OSError, ValueError, KeyError, TypeError):
            shutil.rmtree(d, ignore_errors=True)  # corrupt: rebuild, never trust
            return None

    def staging(self) -> Path:
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="step-", dir=self.root / "tmp"))

    def put(self, key: str, staged: Path, result: dict[str, Any]) -> Path:
        files = {p.relative_to(staged).as_posix(): file_digest(p) for p in sorted(staged.rglob("*")) if p.is_file()}
        (staged / ENTRY).write_text(json.dumps({"files": files, "result": result}, sort_keys=True, indent=1))
        for p in staged.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        from deployc.compiler.write import crash_point

        crash_point("cache-staged")
        final = self._dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staged, final)
        except OSError:  # another build stored the same key first: identical content, keep theirs
            shutil.rmtree(staged, ignore_errors=True)
        return final
