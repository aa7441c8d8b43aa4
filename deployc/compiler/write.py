"""Stage 6: write the build folder atomically. Nothing is ever half-written.

Files go to a temporary sibling folder, are checked (optional callback), then swapped into place with renames.
A crash between the two renames leaves the previous build in `.<name>.old-*`, which the next build restores.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from deployc import conventions as c
from deployc.compiler.inputs import special_kind
from deployc.errors import InputError, input_error
from deployc.manifest import read_manifest
from deployc.signing import signature_path, signed_folders


def crash_point(name: str) -> None:
    """Crash-safety tests set DEPLOYC_CRASH_AT=<name> to SIGKILL the build exactly here."""
    if os.environ.get("DEPLOYC_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def recover(out: Path) -> None:
    """Restore the previous build if a crash happened mid-swap; drop leftovers of interrupted builds."""
    parent = out.parent
    if not parent.is_dir():
        return
    olds = sorted(parent.glob(f".{out.name}.old-*"))
    if olds and not out.exists():
        os.rename(olds[-1], out)
        olds = olds[:-1]
    for leftover in olds + sorted(parent.glob(f".{out.name}.tmp-*")):
        shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def build_lock(out: Path, log: Callable[[str], None]) -> Iterator[None]:
    """One build of a given output folder at a time: a second one waits for the first, then runs."""
    import fcntl

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another build is writing {out}; waiting for it to finish")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def check_replaceable(out: Path) -> None:
    """Refuse, touching nothing, an output folder that a build may not replace: anything but a deployc build
    whose manifest lists every file in it (a folder that merely holds a `manifest.json` is someone's data)."""
    if out.is_symlink():
        raise InputError(f"{out}: is a symbolic link; give the real folder as --out")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    refuse = f"{out}: refusing to replace a folder that is not a deployc build"
    try:
        listed = set(read_manifest(out)["files"])
    except (InputError, KeyError, TypeError):
        raise InputError(f"{refuse} (no deployc {c.MANIFEST})") from None
    listed |= {signature_path(f) for f in signed_folders(listed)}  # a signed build's model.sig files
    for p in sorted(out.rglob("*")):
        mode = p.lstat().st_mode
        rel = p.relative_to(out).as_posix()
        if stat.S_ISDIR(mode):
            continue
        if stat.S_ISLNK(mode) or special_kind(mode):
            raise InputError(f"{refuse} ({rel} is not a regular file)")
        if rel != c.MANIFEST and rel not in listed:
            raise InputError(f"{refuse} ({rel} is not listed in its {c.MANIFEST})")


def check_writable(out: Path) -> None:
    """Before any step runs: the output's parent folder can be made and written, and is no system folder."""
    where = out.absolute()
    real = where.parent.resolve() / where.name
    if any(real.is_relative_to(r) for r in ("/proc", "/sys", "/dev")):
        raise InputError(f"{out}: refusing to write a build under /{real.parts[1]}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # not `.<name>.tmp-*`: a build holding the lock removes those as leftovers while this one waits
        probe = tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=out.parent)
        os.rmdir(probe)
    except OSError as exc:
        raise input_error(exc, f"{out}: cannot write the build folder") from None


def write_output(out: Path, files: dict[str, bytes], check: Callable[[Path], None] | None = None) -> None:
    check_replaceable(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise input_error(exc, f"{out}: cannot write the build folder") from None
    try:
        for rel, data in sorted(files.items()):
            p = tmp / rel
            if not p.resolve().is_relative_to(tmp.resolve()):
                raise InputError(f"refusing to write {rel!r} outside the build folder")
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        crash_point("write-staged")
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rmdir(old)
            os.rename(out, old)
        crash_point("write-swapping")
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise input_error(exc, f"{out}: cannot write the build (the previous build is unchanged)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_tree(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
