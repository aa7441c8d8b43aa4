"""Masked data capture: a sample of inference requests and responses, written as JSON lines (docs/serving.md).

The request path only draws the sample and hands the decoded arrays to a bounded queue (`offer`: a random number
and a non-blocking put); a background thread masks each record, encodes it and appends it to this process's
file. When the queue is full the record is dropped and counted, so capture never makes a request wait. Masking
runs in that thread before the record is encoded: no unmasked byte is ever written, to a file or anywhere else.

Files: `capture-<UTC time>-<pid>-<n>.jsonl` (one writer per process, so `--workers N` never interleaves),
0600 in a folder 0700. A writer holds an exclusive `flock` on the file it writes; before starting a file it
removes the oldest unlocked files until the folder, counting every locked file at its size limit, has room.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import queue
import random
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deployc.errors import InputError

log = logging.getLogger("deployc.serve")
CAPTURE_DIR_ENV = "DEPLOYC_CAPTURE_DIR"  # overrides serving.json's capture.files.folder
MIN_SALT_CHARS = 16  # a short salt can be guessed, and with it every hashed value
MAX_REDACT_CHARS = 4096  # a longer string is replaced whole: regular expressions run in bounded time
FILE_GLOB = "capture-*.jsonl"
LOCK_FILE = ".lock"
DROP_QUEUE_FULL, DROP_TOO_LARGE, DROP_WRITE_ERROR = "queue_full", "too_large", "write_error"
DROP_REASONS = (DROP_QUEUE_FULL, DROP_TOO_LARGE, DROP_WRITE_ERROR)
MASKS = ("keep", "drop", "hash", "round", "bucket", "redact")


# --- serving.json's `capture` ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    mask: str = "keep"
    salt_env: str | None = None
    decimals: int | None = None
    edges: tuple[float, ...] | None = None
    patterns: tuple[str, ...] = ()
    replacement: str = "[REDACTED]"


@dataclass(frozen=True)
class CaptureConfig:
    sampling_percent: float
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fields: dict[str, Rule] = field(default_factory=dict)
    request_id: Rule = Rule()
    parameters: Rule = Rule()
    folder: str = "deployc-capture"
    max_file_bytes: int = 16 << 20
    max_total_bytes: int = 256 << 20
    max_files: int = 64
    queue_size: int = 1024

    def salt_envs(self) -> list[str]:
        rules = [*self.fields.values(), self.request_id, self.parameters]
        return list(dict.fromkeys(r.salt_env for r in rules if r.salt_env))


def _rule(raw: Any, where: str, numeric: bool) -> Rule:
    if not isinstance(raw, dict) or raw.get("mask") not in MASKS:
        raise InputError(f"{where}: expected an object with mask one of {', '.join(MASKS)}")
    mask = raw["mask"]
    if mask == "hash" and not (isinstance(raw.get("salt_env"), str) and raw["salt_env"]):
        raise InputError(f"{where}: mask hash needs salt_env, the variable that holds the salt")
    if mask == "round" and not (isinstance(raw.get("decimals"), int) and not isinstance(raw["decimals"], bool)):
        raise InputError(f"{where}: mask round needs decimals (an integer)")
    edges = raw.get("edges")
    if mask == "bucket" and not (isinstance(edges, list) and edges and all(
            isinstance(e, (int, float)) and not isinstance(e, bool) for e in edges)
            and all(b > a for a, b in zip(edges, edges[1:], strict=False))):
        raise InputError(f"{where}: mask bucket needs edges, increasing numbers")
    patterns = raw.get("patterns") or []
    if mask == "redact":
        if not patterns or not all(isinstance(p, str) for p in patterns):
            raise InputError(f"{where}: mask redact needs patterns, a list of regular expressions")
        for p in patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise InputError(f"{where}: pattern {p!r}: {e}") from None
    if numeric and mask == "redact" or not numeric and mask in ("round", "bucket"):
        raise InputError(f"{where}: mask {mask} does not apply to {'tensors' if numeric else 'strings'}")
    return Rule(mask, raw.get("salt_env"), raw.get("decimals"), tuple(float(e) for e in edges) if edges else None,
                tuple(patterns), str(raw.get("replacement", "[REDACTED]")))


def parse_capture(raw: Any, inputs: list[str], outputs: list[str], where: str) -> CaptureConfig:
    """serving.json's `capture`, checked against the model's tensors; every problem an InputError naming it."""
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected an object")
    pct = raw.get("sampling_percent")
    if not isinstance(pct, (int, float)) or isinstance(pct, bool) or not 0 < pct <= 100:
        raise InputError(f"{where}.sampling_percent: expected a number in (0, 100], got {pct!r}")
    chosen: dict[str, tuple[str, ...]] = {}
    for which, names in (("inputs", inputs), ("outputs", outputs)):
        got = raw.get(which, names)
        if not isinstance(got, list) or not all(isinstance(n, str) and n in names for n in got):
            raise InputError(f"{where}.{which}: expected a list of the model's {which} ({', '.join(names)}), "
                             f"got {got!r}")
        chosen[which] = tuple(got)
    fields_raw = raw.get("fields", {})
    if not isinstance(fields_raw, dict):
        raise InputError(f"{where}.fields: expected an object")
    unknown = sorted(set(fields_raw) - set(inputs) - set(outputs))
    if unknown:
        raise InputError(f"{where}.fields: {unknown} are not inputs or outputs of the model")
    files = raw.get("files", {})
    if not isinstance(files, dict):
        raise InputError(f"{where}.files: expected an object")
    sizes = {}
    for key, default in (("max_file_bytes", 16 << 20), ("max_total_bytes", 256 << 20), ("max_files", 64),
                         ("queue_size", 1024)):
        v = files.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InputError(f"{where}.files.{key}: expected a positive integer, got {v!r}")
        sizes[key] = v
    if sizes["max_total_bytes"] < 2 * sizes["max_file_bytes"] or sizes["max_files"] < 2:
        raise InputError(f"{where}.files: max_total_bytes must hold two files of max_file_bytes, max_files >= 2")
    folder = files.get("folder", "deployc-capture")
    if not isinstance(folder, str) or not folder:
        raise InputError(f"{where}.files.folder: expected a path")
    return CaptureConfig(
        sampling_percent=float(pct), inputs=chosen["inputs"], outputs=chosen["outputs"],
        fields={n: _rule(r, f"{where}.fields.{n}", True) for n, r in fields_raw.items()},
        request_id=_rule(raw.get("request_id", {"mask": "keep"}), f"{where}.request_id", False),
        parameters=_rule(raw.get("parameters", {"mask": "keep"}), f"{where}.parameters", False),
        folder=folder, **sizes)


def read_salts(cap: CaptureConfig, where: Path) -> dict[str, bytes]:
    """Every salt a hash rule names, from the environment; refusing to start beats capturing in clear."""
    salts: dict[str, bytes] = {}
    for name in cap.salt_envs():
        value = os.environ.get(name, "")
        if not value:
            raise InputError(f"{where}: capture hashes with the salt in ${name}, which is not set (or empty): "
                             "refusing to start without it")
        if len(value) < MIN_SALT_CHARS:
            raise InputError(f"{where}: the capture salt in ${name} has {len(value)} characters; use at least "
                             f"{MIN_SALT_CHARS} random ones (a short salt can be guessed)")
        salts[name] = value.encode()
    return salts


def capture_folder(cap: CaptureConfig) -> Path:
    return Path(os.environ.get(CAPTURE_DIR_ENV) or cap.folder).absolute()


def prepare_folder(folder: Path) -> Path:
    """The capture folder, created 0700 (or made so): a real folder (no link) owned by this user."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode):
            raise InputError(f"capture folder {folder}: not a folder (a link or a file)")
        if st.st_uid != os.geteuid():
            raise InputError(f"capture folder {folder}: owned by uid {st.st_uid}, not this user ({os.geteuid()})")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(folder, 0o700, follow_symlinks=False)
    except OSError as e:
        raise InputError(f"capture folder {folder}: {e.strerror}") from None
    return folder


# --- masking ---------------------------------------------------------------------------------------------------

def hmac_hex(salt: bytes, value: Any) -> str:
    """HMAC-SHA256 of a value's canonical text: integers in decimal, floats as Python's repr of the float64
    value, booleans true/false, strings as UTF-8."""
    if isinstance(value, bool | np.bool_):
        text = b"true" if value else b"false"
    elif isinstance(value, str):
        text = value.encode()
    elif isinstance(value, bytes):
        text = value
    elif isinstance(value, int | np.integer):
        text = str(int(value)).encode()
    else:
        text = repr(float(value)).encode()
    return hmac.new(salt, text, hashlib.sha256).hexdigest()


class Masker:
    """The rules of one capture config, compiled: patterns, salts."""

    def __init__(self, cap: CaptureConfig, salts: dict[str, bytes]):
        self.cap = cap
        self.salts = salts
        self._patterns = {id(r): [re.compile(p) for p in r.patterns]
                          for r in (*cap.fields.values(), cap.request_id, cap.parameters)}
        masks = {n: r.mask for n, r in cap.fields.items() if r.mask != "keep"}
        masks |= {k: r.mask for k, r in (("id", cap.request_id), ("parameters", cap.parameters)) if r.mask != "keep"}
        self._masks = masks  # each record says which of its fields are masked, and how

    def tensor(self, name: str, arr: np.ndarray) -> Any:
        """A tensor's JSON form with its rule applied; None when dropped."""
        rule = self.cap.fields.get(name)
        mask = rule.mask if rule is not None else "keep"
        if mask == "drop":
            return None
        data: Any = arr
        if rule is not None and mask == "hash":
            salt = self.salts[rule.salt_env or ""]
            data = [hmac_hex(salt, v) for v in arr.ravel().tolist()]
        elif rule is not None and mask == "round":
            data = np.round(arr, rule.decimals or 0).ravel()
        elif rule is not None and mask == "bucket":
            data = np.searchsorted(np.asarray(rule.edges), arr.ravel(), side="right").astype(np.int64)
        else:
            data = np.ascontiguousarray(arr).ravel()
        return {"shape": list(arr.shape), "data": data}

    def text(self, rule: Rule, value: Any) -> Any:
        """A request id or parameter value (nested objects walked) with its rule applied."""
        if isinstance(value, dict):
            return {str(k): self.text(rule, v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.text(rule, v) for v in value]
        if rule.mask == "hash" and value is not None:
            return hmac_hex(self.salts[rule.salt_env or ""], value)
        if rule.mask == "redact" and isinstance(value, str):
            if len(value) > MAX_REDACT_CHARS:
                return rule.replacement
            for pattern in self._patterns[id(rule)]:
                value = pattern.sub(rule.replacement, value)
        return value

    def record(self, item: Item, model: str, version: str) -> dict[str, Any]:
        cap = self.cap
        rec: dict[str, Any] = {"time": _utc(item.time), "model": model, "version": version, "route": item.route}
        if item.request_id is not None and cap.request_id.mask != "drop":
            rec["id"] = self.text(cap.request_id, item.request_id)
        if item.parameters is not None and cap.parameters.mask != "drop":
            rec["parameters"] = self.text(cap.parameters, item.parameters)
        for which, names, arrays in (("inputs", cap.inputs, item.inputs), ("outputs", cap.outputs, item.outputs)):
            out = {}
            for name in names:
                arr = arrays.get(name)
                if arr is not None and (t := self.tensor(name, arr)) is not None:
                    out[name] = t
            rec[which] = out
        if self._masks:
            rec["masks"] = self._masks
        return rec


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


@dataclass
class Item:
    """What the request path hands over: references to the decoded arrays, nothing copied, nothing masked yet."""
    time: float
    route: str
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    request_id: Any
    parameters: Any


def dumps(record: dict[str, Any]) -> bytes:
    """One record as compact JSON (orjson writes numpy arrays itself; NaN and infinities become null)."""
    try:
        import orjson
    except ImportError:  # pragma: no cover - exercised only without orjson
        return json.dumps(_plain(record), separators=(",", ":"), allow_nan=False, default=str).encode()
    try:
        return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:  # a dtype orjson cannot write (float16, a view that is not contiguous): plain lists
        return orjson.dumps(_plain(record))


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


# --- files -----------------------------------------------------------------------------------------------------

def _locked(path: Path) -> bool:
    """Whether a writer holds this file (its exclusive flock); a file that vanished counts as not."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class FileSet:
    """This process's capture file in the shared folder, rotated within the folder's bounds."""

    def __init__(self, folder: Path, cap: CaptureConfig):
        self.folder, self.cap = folder, cap
        self.fd: int | None = None
        self.size = 0
        self.seq = 0

    def write(self, data: bytes) -> None:
        if self.fd is None or self.size + len(data) > self.cap.max_file_bytes:
            self._rotate()
        assert self.fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None

    def _rotate(self) -> None:
        self.close()
        lock = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process makes room and starts its file at a time
            self._make_room()
            t = time.time()
            name = f"capture-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(t))}{int(t % 1 * 1e6):06d}Z-" \
                   f"{os.getpid()}-{self.seq:06d}.jsonl"
            self.seq += 1
            fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.fd, self.size = fd, 0
        finally:
            os.close(lock)

    def _make_room(self) -> None:
        """Remove the oldest finished files until a new file fits: every file being written (locked) counts at
        the size limit, finished ones at their size; the new one at the limit too."""
        files = sorted(self.folder.glob(FILE_GLOB))
        active = [p for p in files if _locked(p)]
        done = [p for p in files if p not in active]
        sizes = {}
        for p in done:
            with contextlib.suppress(OSError):
                sizes[p] = p.stat().st_size
        done = [p for p in done if p in sizes]
        cap = self.cap
        while done and (sum(sizes[p] for p in done) + (len(active) + 1) * cap.max_file_bytes > cap.max_total_bytes
                        or len(done) + len(active) + 1 > cap.max_files):
            oldest = done.pop(0)
            with contextlib.suppress(FileNotFoundError):
                oldest.unlink()


# --- the recorder ----------------------------------------------------------------------------------------------

class Recorder:
    """Draws the sample in the request path and writes masked records from a background thread."""

    def __init__(self, cap: CaptureConfig, salts: dict[str, bytes], folder: Path, model: str, version: str,
                 output_names: tuple[str, ...], on_sampled: Callable[[], None], on_written: Callable[[int], None],
                 on_dropped: Callable[[str], None]):
        self.cap, self.model, self.version = cap, model, version
        self.masker = Masker(cap, salts)
        self.files = FileSet(folder, cap)
        self._queue: queue.Queue[Item] = queue.Queue(cap.queue_size)
        self._rate = cap.sampling_percent / 100.0
        self._random = random.Random()  # seeded from os.urandom: a client cannot predict which request is kept
        self._on_sampled, self._on_written, self._on_dropped = on_sampled, on_written, on_dropped
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ins = {n for n in cap.inputs if cap.fields.get(n, Rule()).mask != "drop"}
        self.outs = [(i, n) for i, n in enumerate(output_names)
                     if n in cap.outputs and cap.fields.get(n, Rule()).mask != "drop"]

    def offer(self, route: str, feed: dict[str, np.ndarray], outputs: list[np.ndarray], request_id: Any = None,
              parameters: Any = None) -> None:
        """Called for every answered inference request (`outputs` in the model's order): keep it with the
        sampling probability; never waits."""
        if self._random.random() >= self._rate:
            return
        self._on_sampled()
        item = Item(time.time(), route, {n: a for n, a in feed.items() if n in self.ins},
                    {n: outputs[i] for i, n in self.outs}, request_id, parameters)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._on_dropped(DROP_QUEUE_FULL)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="deployc-capture", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued (for up to `timeout` seconds), then close the file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        pending: list[bytes] = []
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                self._flush(pending)
                if self._stop.is_set():
                    break
                continue
            try:
                line = dumps(self.masker.record(item, self.model, self.version)) + b"\n"
            except Exception:  # a record that cannot be encoded is dropped, never written in part
                log.exception("capture: could not encode a record")
                self._on_dropped(DROP_WRITE_ERROR)
                continue
            if len(line) > self.cap.max_file_bytes:
                self._on_dropped(DROP_TOO_LARGE)
                continue
            pending.append(line)
            if self._queue.empty() or len(pending) >= 256:
                self._flush(pending)
        self.files.close()

    def _flush(self, pending: list[bytes]) -> None:
        """Append the encoded records, each whole in one file (a rotation falls between records)."""
        for line in pending:
            try:
                self.files.write(line)
            except OSError as e:
                log.warning("capture: cannot write to %s: %s (record dropped)", self.files.folder, e.strerror)
                self.files.close()
                self._on_dropped(DROP_WRITE_ERROR)
                continue
            self._on_written(len(line))
        pending.clear()
