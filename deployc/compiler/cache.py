"""The step cache: one folder per step key, written atomically and verified by hash on every read.

Layout: `<root>/steps/<key[:2]>/<key>/` holds the step's files and `_entry.json` ({result, files: {rel: sha256},
sha256}), the last a digest over the file list and the result. A half-written entry never exists (entries are
built in a locked staging folder under `<root>/tmp/` and renamed into place); an entry whose files, file list or
result do not match its digest is removed and rebuilt, never trusted.

With a remote cache (deployc.compiler.remote), a local miss is looked up there: a remote entry is downloaded
into a staging folder, verified, and stored locally like a built one; a step built here is uploaded after it is
stored (unless the remote is read-only).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployc.compiler.steps import file_digest
from deployc.compiler.write import crash_point
from deployc.errors import InputError, describe_os_error

if TYPE_CHECKING:
    from deployc.compiler.remote import RemoteCache

ENTRY = "_entry.json"
LOCK_SUFFIX = ".lock"


def default_cache_dir() -> Path:
    env = os.environ.get("DEPLOYC_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "deployc"


class Cache:
    def __init__(self, root: Path, remote: RemoteCache | None = None):
        self.root = root
        self.remote = remote
        self.from_remote: set[str] = set()  # the keys this build downloaded from the remote cache
        self._locks: dict[Path, int] = {}  # staging folder -> the descriptor holding its lock
        self._swept = False

    def _dir(self, key: str) -> Path:
        return self.root / "steps" / key[:2] / key

    def has(self, key: str) -> bool:
        """Cheap check (no hashing) for `deployc plan`."""
        return (self._dir(key) / ENTRY).is_file()

    def has_remote(self, key: str) -> bool:
        """Whether the remote cache claims the entry (one HEAD; unverified until a build downloads it)."""
        return self.remote is not None and self.remote.has(key)

    def get(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        """The entry's folder and result, from the local cache or else the remote one (downloaded, verified and
        stored locally); None for a miss."""
        hit = self.get_local(key)
        if hit is not None or self.remote is None or self.remote.down:
            return hit
        try:
            staged = self.staging()
        except InputError:  # a read-only local cache: no room to verify a download in
            return None
        try:
            result = self.remote.fetch(key, staged)
        except BaseException:
            self.discard(staged)
            raise
        if result is None:
            self.discard(staged)
            return None
        stored = self._store(key, staged, result)
        self.from_remote.add(key)
        return stored

    def get_local(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        """The entry's folder and result, only when all of it (every file, the result, the file list) matches the
        digest recorded with it; anything else is removed and rebuilt, never trusted."""
        d = self._dir(key)
        try:
            entry = json.loads((d / ENTRY).read_text())
            files, result = entry["files"], entry["result"]
            if entry.get("sha256") != entry_digest(files, result):
                raise ValueError("the entry does not match its digest")
            if _present_files(d) != set(files):
                raise ValueError("the entry's files are not the ones it lists")
            for rel, digest in files.items():
                if file_digest(d / rel) != digest:
                    raise ValueError(f"{rel} does not match its hash")
            return d, result
        except FileNotFoundError:
            if d.exists():
                shutil.rmtree(d, ignore_errors=True)
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            shutil.rmtree(d, ignore_errors=True)  # corrupt or edited: rebuild, never trust
            return None

    def staging(self) -> Path:
        """A fresh folder for one step's output, locked while this process lives (so a sweep by another build
        never removes it, and one left by a killed build is removed by the next)."""
        import fcntl

        tmp = self.root / "tmp"
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            if not self._swept:
                self._swept = True
                sweep_staging(tmp)
            fd, lock = tempfile.mkstemp(prefix="step-", suffix=LOCK_SUFFIX, dir=tmp)
            fcntl.flock(fd, fcntl.LOCK_EX)
            staged = Path(lock[: -len(LOCK_SUFFIX)])
            staged.mkdir()
        except OSError as exc:
            raise InputError(f"{self.root}: the step cache is not writable ({describe_os_error(exc)})") from None
        self._locks[staged] = fd
        return staged

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)
        self._release(staged)

    def _release(self, staged: Path) -> None:
        fd = self._locks.pop(staged, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(str(staged) + LOCK_SUFFIX)
            os.close(fd)

    def put(self, key: str, staged: Path, result: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
        """Store the staged folder under `key`; the stored entry's folder and result. When another build stored
        the key first, theirs is kept and returned (a measured figure may differ between two runs of one step, and
        every build must report what the cache holds, so the next build from cache gives the same output).
        A writable remote cache then gets the stored entry."""
        final, stored = self._store(key, staged, result)
        if self.remote is not None:
            self.remote.upload(key, final, ENTRY)
        return final, stored

    def _store(self, key: str, staged: Path, result: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
        try:
            return self._put(key, staged, result)
        except OSError as exc:
            self.discard(staged)
            raise InputError(f"{self.root}: cannot store a step result ({describe_os_error(exc)})") from None

    def _put(self, key: str, staged: Path, result: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
        files = {p.relative_to(staged).as_posix(): file_digest(p) for p in sorted(staged.rglob("*")) if p.is_file()}
        doc = {"files": files, "result": result, "sha256": entry_digest(files, result)}
        (staged / ENTRY).write_text(json.dumps(doc, sort_keys=True, indent=1, allow_nan=False))
        for p in staged.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        crash_point("cache-staged")
        final = self._dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                os.rename(staged, final)
                break
            except OSError:  # another build stored the same key first: keep theirs, if it is sound
                stored = self.get_local(key)  # (a corrupt entry is removed here, and the rename is tried again)
                if stored is not None:
                    shutil.rmtree(staged, ignore_errors=True)
                    self._release(staged)
                    return stored
        else:
            raise OSError(f"{final} could not be replaced")
        self._release(staged)
        return final, result


def entry_digest(files: dict[str, str], result: Any) -> str:
    """sha256 over an entry's file list (with each file's sha256) and its result, as stored."""
    text = json.dumps({"files": files, "result": result}, sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _present_files(d: Path) -> set[str]:
    """The entry's files; a link or a special file in an entry is corruption."""
    out: set[str] = set()
    for p in d.rglob("*"):
        mode = p.lstat().st_mode
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            raise ValueError(f"{p.name} is not a regular file")
        rel = p.relative_to(d).as_posix()
        if rel != ENTRY:
            out.add(rel)
    return out


def sweep_staging(tmp: Path, legacy_age_s: float = 3600) -> list[Path]:
    """Remove staging folders whose build is gone: their lock is free (the process that held it died). Folders
    without a lock file (left by older versions) go once they are an hour old. Returns what was removed."""
    import fcntl
    import time

    removed: list[Path] = []
    for lock in sorted(tmp.glob(f"step-*{LOCK_SUFFIX}")):
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live build holds it
        try:
            if time.time() - os.fstat(fd).st_mtime < 60:
                continue  # just made, about to be locked by its owner
            staged = Path(str(lock)[: -len(LOCK_SUFFIX)])
            shutil.rmtree(staged, ignore_errors=True)
            os.unlink(lock)
            removed.append(staged)
        finally:
            os.close(fd)
    now = time.time()
    for d in sorted(tmp.glob("step-*")):
        if d.is_dir() and not Path(str(d) + LOCK_SUFFIX).exists() and now - d.stat().st_mtime > legacy_age_s:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed
