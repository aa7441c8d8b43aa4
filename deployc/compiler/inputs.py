"""Reading the user's files. Every file that validation checks, a step key hashes, or a step reads or copies
resolves inside the spec's folder and is a regular file or folder.

Symbolic links are followed only while they stay inside that folder; special files (FIFOs, sockets, devices)
and anything under /proc, /sys or /dev are refused, wherever they sit in a walked folder. A file is opened
without blocking and checked again on the open descriptor, so a file swapped for a FIFO after validation
fails with a message instead of hanging the build.
"""
from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

from deployc.errors import InputError

_SYSTEM_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


@dataclass(frozen=True)
class Entry:
    rel: str  # posix path relative to the walked root, as the user sees it (through links)
    real: Path  # resolved location
    is_dir: bool


def special_kind(mode: int) -> str | None:
    """What a non-regular, non-folder file is, in words; None for regular files and folders."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _inside(path: Path, base: Path) -> bool:
    return path.is_relative_to(base) and not any(path.is_relative_to(r) for r in _SYSTEM_ROOTS
                                                 if not base.is_relative_to(r))


def _shown(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def resolve(base: Path, rel: str) -> Path:
    """`rel` (a spec path) resolved inside `base`, or an InputError that says why not."""
    p = Path(rel)
    if p.is_absolute() or rel.startswith("~"):
        raise InputError(f"{rel!r} is absolute; paths are relative to the folder of deploy.yaml")
    target = (base / p).resolve()
    if not _inside(target, base):
        how = "with '..'" if ".." in p.parts else "through a symbolic link"
        raise InputError(f"{rel!r} leaves the folder of deploy.yaml ({how})")
    return target


def check_tree(base: Path, rel: str, kind: str) -> str | None:
    """The problem with a spec path (`kind` "file", "folder" or "any"), None when every file it stands for is
    a regular file inside `base`. A folder is walked whole."""
    try:
        target = resolve(base, rel)
        try:
            st = os.stat(target)
        except FileNotFoundError:
            return f"{rel!r} does not exist"
        what = special_kind(st.st_mode)
        if what:
            return f"{rel!r} is {what}, not a regular file"
        if kind == "file" and stat.S_ISDIR(st.st_mode):
            return f"{rel!r} is not a file"
        if kind == "folder" and not stat.S_ISDIR(st.st_mode):
            return f"{rel!r} is not a folder"
        if stat.S_ISDIR(st.st_mode):
            for _ in walk(base, target, label=rel):
                pass
    except InputError as exc:
        return str(exc)
    except OSError as exc:
        return f"{rel!r}: cannot read ({exc.strerror or exc})"
    return None


def walk(base: Path, root: Path, label: str = "") -> Iterator[Entry]:
    """Every folder and regular file below `root` (sorted; links followed while they stay inside `base`)."""
    base = base.resolve()
    label = label or _shown(root, base)
    seen: set[Path] = set()

    def inner(real: Path, rel: str) -> Iterator[Entry]:
        if real in seen:
            raise InputError(f"{label}/{rel}: a symbolic link loops back to a folder above it")
        seen.add(real)
        with os.scandir(real) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            sub = f"{rel}/{e.name}" if rel else e.name
            path = Path(e.path)
            if e.is_symlink():
                path = path.resolve()
                if not _inside(path, base):
                    raise InputError(f"{label}/{sub}: a symbolic link to {path}, outside the folder of deploy.yaml")
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise InputError(f"{label}/{sub}: a broken symbolic link") from None
            what = special_kind(st.st_mode)
            if what:
                raise InputError(f"{label}/{sub}: is {what}, not a regular file")
            if stat.S_ISDIR(st.st_mode):
                yield Entry(sub, path, True)
                yield from inner(path, sub)
            else:
                yield Entry(sub, path, False)
        seen.discard(real)

    yield from inner(root.resolve(), "")


def open_regular(path: Path) -> BinaryIO:
    """Open a file for reading only if it is a regular file (never blocks on a FIFO)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        what = special_kind(os.fstat(fd).st_mode)
        if what or stat.S_ISDIR(os.fstat(fd).st_mode):
            raise InputError(f"{path}: is {what or 'a folder'}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: Path) -> bytes:
    with open_regular(path) as f:
        return f.read()


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(base: Path, path: Path) -> str:
    """sha256 of an input file, or of a folder's relative paths, folders and file contents (the step key's view)."""
    real = path.resolve()
    if not _inside(real, base.resolve()):
        raise InputError(f"{path}: outside the folder of deploy.yaml")
    if not real.is_dir():
        return _digest(real)
    h = hashlib.sha256()
    for e in walk(base, real):
        h.update(e.rel.encode() + (b"/\0" if e.is_dir else b"\0"))
        if not e.is_dir:
            h.update(_digest(e.real).encode())
    return h.hexdigest()


def copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open_regular(src) as fin, open(dst, "wb") as fout:
        for chunk in iter(lambda: fin.read(1 << 20), b""):
            fout.write(chunk)


def copy_tree(base: Path, src: Path, dst: Path) -> None:
    """Copy a model folder as plain files and folders (links inside resolved to their content)."""
    dst.mkdir(parents=True)
    for e in walk(base, src):
        if e.is_dir:
            (dst / e.rel).mkdir()
        else:
            copy_file(e.real, dst / e.rel)


KERAS_CONFIG_MAX_BYTES = 16 << 20  # a .keras archive's config.json larger than this is not read without Keras


def keras_archive_config(path: Path) -> Any:
    """A `.keras` archive's config.json, parsed, read once per file version (validate and plan ask several
    questions of it); {} when it cannot be read here (loading the model reports why)."""
    st = path.stat()
    return _keras_archive_config(path.resolve(), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=16)
def _keras_archive_config(path: Path, mtime_ns: int, size: int) -> Any:
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("config.json")
            if info.file_size > KERAS_CONFIG_MAX_BYTES:
                return {}
            return json.loads(z.read(info))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return {}
