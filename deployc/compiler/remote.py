"""The shared step cache: step entries on S3 or an S3-compatible store (MinIO, Ceph, R2...), read after the local
cache misses and written after a step succeeds.

Layout under `s3://<bucket>/<prefix>/`: `cas/<sha256>` holds each file once, named by its content's sha256 (a
file that several entries share is stored once); `entries/<key[:2]>/<key>.json` is an entry's index, the same
document as the local `_entry.json` ({files: {rel: sha256}, result, sha256}). An entry is uploaded files first,
index last, so a half-uploaded entry is never seen. Both are written with `If-None-Match: *` after a HEAD: the
first writer of a key wins, and a concurrent writer of the same key never overwrites it.

A downloaded entry is verified (its digest, then every file's sha256) in a staging folder before the local cache
takes it; one that fails is warned about and rebuilt, and the rebuilt entry replaces the bad objects. A store
that cannot be reached (or refuses the credentials) turns the remote cache off for the rest of the build with
one warning, or fails the build (DeployError, exit 4) when it is `required`. boto3 (the `aws` extra) is imported
only here, and only when a remote cache is configured.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from deployc.errors import DeployError, InputError, UsageError

ENV_URL = "DEPLOYC_REMOTE_CACHE"
ENV_ENDPOINT = "DEPLOYC_REMOTE_CACHE_ENDPOINT"
ENV_READ_ONLY = "DEPLOYC_REMOTE_CACHE_READ_ONLY"
ENV_REQUIRED = "DEPLOYC_REMOTE_CACHE_REQUIRED"
ENV_CONFIG = "DEPLOYC_CONFIG"
CONFIG_TABLE = "remote_cache"
CONFIG_KEYS = ("url", "endpoint", "read_only", "required")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_ABSENT = ("404", "NoSuchKey", "NotFound")
_TAKEN = ("412", "PreconditionFailed", "409", "ConditionalRequestConflict")
_CHUNK = 1 << 20


def config_path() -> Path:
    """deployc's own settings file: $DEPLOYC_CONFIG, else $XDG_CONFIG_HOME/deployc/config.toml (~/.config)."""
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "deployc" / "config.toml"


def _flag(value: str | None) -> bool | None:
    if value is None or value == "":
        return None
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{value!r} is not a boolean (use 1/true/yes or 0/false/no)")


@dataclass(frozen=True)
class RemoteSettings:
    """Where the shared step cache is and how a build uses it; `url` None: no remote cache."""

    url: str | None = None
    endpoint: str | None = None  # an S3-compatible store's URL; None: boto3's own (AWS_ENDPOINT_URL, AWS)
    read_only: bool = False  # read, never write (pull-request runners)
    required: bool = False  # an unreachable store fails the build (exit 4) instead of a local build

    @classmethod
    def resolve(cls, url: str | None = None, endpoint: str | None = None, read_only: bool | None = None,
                required: bool | None = None) -> RemoteSettings:
        """The settings from, in this order: the arguments (command-line flags), the DEPLOYC_REMOTE_CACHE*
        variables, the [remote_cache] table of the config file (`config_path`)."""
        file = _read_config(config_path())
        env_flags = {ENV_READ_ONLY: _flag(os.environ.get(ENV_READ_ONLY)),
                     ENV_REQUIRED: _flag(os.environ.get(ENV_REQUIRED))}

        def pick(arg: Any, env: Any, key: str, default: Any) -> Any:
            return next((v for v in (arg, env, file.get(key)) if v is not None and v != ""), default)

        return cls(url=pick(url, os.environ.get(ENV_URL), "url", None),
                   endpoint=pick(endpoint, os.environ.get(ENV_ENDPOINT), "endpoint", None),
                   read_only=bool(pick(read_only or None, env_flags[ENV_READ_ONLY], "read_only", False)),
                   required=bool(pick(required or None, env_flags[ENV_REQUIRED], "required", False)))

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def location(self) -> tuple[str, str]:
        """(bucket, prefix) of `url`; a malformed URL is a usage error (exit 2)."""
        url = self.url or ""
        m = re.match(r"^s3://([^/]+)/?(.*)$", url)
        if m is None or not _BUCKET.match(m.group(1)):
            raise UsageError(f"remote cache {url!r}: expected s3://BUCKET or s3://BUCKET/PREFIX")
        return m.group(1), m.group(2).strip("/")


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: not a readable TOML file ({exc})") from None
    table = doc.get(CONFIG_TABLE, {})
    if not isinstance(table, dict):
        raise InputError(f"{path}: [{CONFIG_TABLE}] must be a table")
    unknown = sorted(set(table) - set(CONFIG_KEYS))
    if unknown:
        raise InputError(f"{path}: [{CONFIG_TABLE}] has no setting {unknown[0]!r} (it has: {', '.join(CONFIG_KEYS)})")
    for key in ("url", "endpoint"):
        if key in table and not isinstance(table[key], str):
            raise InputError(f"{path}: {CONFIG_TABLE}.{key} must be a string")
    for key in ("read_only", "required"):
        if key in table and not isinstance(table[key], bool):
            raise InputError(f"{path}: {CONFIG_TABLE}.{key} must be true or false")
    return table


def stderr_warning(message: str) -> None:
    print(f"deployc: warning: {message}", file=sys.stderr, flush=True)


class RemoteCache:
    """One build's view of the shared store. Every call is safe to make after the store went away: it is then a
    miss (or a no-op upload)."""

    def __init__(self, settings: RemoteSettings, warn: Callable[[str], None] = stderr_warning):
        from importlib.util import find_spec

        from deployc.extras import MissingExtra

        self.settings = settings
        self.bucket, self.prefix = settings.location()
        if find_spec("boto3") is None:
            raise MissingExtra(f"the remote step cache ({settings.url})", "boto3", "aws")
        self.warn = warn
        self.down = False  # the store failed once: not asked again in this build
        self._client: Any = None
        self._bad_objects: set[str] = set()  # object names that failed verification: overwritten on upload
        self.downloads = 0  # entries fetched
        self.uploads = 0  # entries uploaded (their index written by this build)

    @property
    def writable(self) -> bool:
        return not self.settings.read_only and not self.down

    def _name(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def index_name(self, key: str) -> str:
        return self._name("entries", key[:2], f"{key}.json")

    def object_name(self, sha256: str) -> str:
        return self._name("cas", sha256)

    def _s3(self) -> Any:
        if self._client is None:
            self._client = _client(self.settings.endpoint or None)
        return self._client

    # --- errors -----------------------------------------------------------------------------------------------

    def _failed(self, exc: Exception, doing: str) -> None:
        """The store cannot be used: off for the rest of the build (one warning), or the build fails."""
        where = f"{self.settings.url}" + (f" at {self.settings.endpoint}" if self.settings.endpoint else "")
        message = f"remote cache {where}: cannot {doing} ({_describe(exc)})"
        if self.settings.required:
            raise DeployError(f"{message}; --remote-cache-required is set") from exc
        if not self.down:
            self.down = True
            self.warn(f"{message}; building with the local cache only")

    def _code(self, exc: Exception) -> str | None:
        """The S3 error code of a ClientError; None for any other error (network, credentials)."""
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            return str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
        return None

    # --- reading ----------------------------------------------------------------------------------------------

    def has(self, key: str) -> bool:
        """A HEAD on the entry's index (for `deployc plan`): the store claims the entry, unverified."""
        return not self.down and self._head(self.index_name(key), "look up a step entry")

    def _head(self, name: str, doing: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._s3().head_object(Bucket=self.bucket, Key=name)
            return True
        except (BotoCoreError, ClientError) as exc:
            if self._code(exc) in _ABSENT:
                return False
            self._failed(exc, doing)
            return False

    def _download(self, name: str, dest: Path | None) -> bytes | str | None:
        """The object's bytes (dest None), or its sha256 once written to `dest`; None when absent or down."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self._s3().get_object(Bucket=self.bucket, Key=name)["Body"]
            if dest is None:
                data: bytes = body.read()
                return data
            h = hashlib.sha256()
            with open(dest, "wb") as f:
                for chunk in body.iter_chunks(_CHUNK):
                    h.update(chunk)
                    f.write(chunk)
            return h.hexdigest()
        except (BotoCoreError, ClientError) as exc:
            if self._code(exc) in _ABSENT:
                return None
            self._failed(exc, "download a step entry")
            return None

    def fetch(self, key: str, staged: Path) -> dict[str, Any] | None:
        """Download entry `key` into the empty folder `staged`; its result once the digest and every file's
        sha256 are verified, else None (a miss). A corrupt or tampered entry is warned about, never used."""
        if self.down:
            return None
        index = self.index_name(key)
        raw = self._download(index, None)
        if not isinstance(raw, bytes):
            return None
        from deployc.compiler.cache import entry_digest

        try:
            doc = json.loads(raw)
            files, result = doc["files"], doc["result"]
            if not isinstance(files, dict) or not isinstance(result, dict):
                raise ValueError("not an entry")
            if doc.get("sha256") != entry_digest(files, result):
                raise ValueError("the index does not match its digest")
            for rel, digest in files.items():
                _check_rel(rel)
                if not isinstance(digest, str) or not _SHA256.match(digest):
                    raise ValueError(f"{rel}: not a sha256")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._corrupt(key, index, str(exc))
            return None
        for rel in files:
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        order = sorted(files.items())
        if len(order) > 1:  # the entry's files at once: each GET is a round trip
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(8, len(order))) as pool:
                got_all = list(pool.map(lambda item: self._download(self.object_name(item[1]), staged / item[0]),
                                        order))
        else:
            got_all = [self._download(self.object_name(d), staged / r) for r, d in order]
        if self.down:
            return None
        for (rel, digest), got in zip(order, got_all, strict=True):
            if got is None:
                self._corrupt(key, self.object_name(digest), f"{rel}: its object is missing")
                return None
            if got != digest:
                self._corrupt(key, self.object_name(digest), f"{rel} does not match its sha256")
                return None
        self.downloads += 1
        value: dict[str, Any] = result
        return value

    def _corrupt(self, key: str, name: str, why: str) -> None:
        """Warned once per bad object (a file several entries share fails each of them)."""
        if name in self._bad_objects:
            return
        self._bad_objects.add(name)
        self.warn(f"remote cache: entry {key[:12]} is corrupt ({why}); the step is rebuilt, the entry not used")

    # --- writing ----------------------------------------------------------------------------------------------

    def upload(self, key: str, entry_dir: Path, entry_file: str) -> None:
        """Upload a stored local entry: every file not already in the store, then the index (first writer wins;
        an object that failed verification in this build is overwritten)."""
        if not self.writable:
            return
        try:
            doc = json.loads((entry_dir / entry_file).read_bytes())
        except (OSError, ValueError):
            return
        for rel, digest in sorted(doc["files"].items()):
            name = self.object_name(digest)
            if name not in self._bad_objects and self._head(name, "upload a step entry"):
                continue
            if self.down or not self._put(name, entry_dir / rel):
                return
        if not self.down and self._put(self.index_name(key), entry_dir / entry_file):
            self.uploads += 1

    def _put(self, name: str, path: Path) -> bool:
        """Write one object, unless it exists (If-None-Match: *); an object known bad is replaced. False when
        the store failed."""
        from botocore.exceptions import BotoCoreError, ClientError

        extra = {} if name in self._bad_objects else {"IfNoneMatch": "*"}
        try:
            with open(path, "rb") as f:
                self._s3().put_object(Bucket=self.bucket, Key=name, Body=f, **extra)
            self._bad_objects.discard(name)
            return True
        except (BotoCoreError, ClientError) as exc:
            if self._code(exc) in _TAKEN:
                return True  # another runner wrote it first: the same content, or its own sound entry
            if self._code(exc) in ("501", "NotImplemented") and extra:
                self._bad_objects.add(name)  # a store without conditional writes: a plain put
                return self._put(name, path)
            self._failed(exc, "upload a step entry")
            return False
        except OSError:
            return False


_CLIENTS: dict[str | None, Any] = {}  # one S3 client per endpoint and process: creating one costs ~0.1 s


def _client(endpoint: str | None) -> Any:
    """The process's S3 client for `endpoint` (boto3 clients are thread-safe; a worker process building many
    specs makes it once)."""
    if endpoint not in _CLIENTS:
        import boto3
        from botocore.config import Config

        config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"},
                        max_pool_connections=16)
        _CLIENTS[endpoint] = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
    return _CLIENTS[endpoint]


def _check_rel(rel: Any) -> None:
    """An entry's file name stays inside its folder: relative, no `..`, not the index itself."""
    from deployc.compiler.cache import ENTRY

    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        raise ValueError(f"{rel!r} is not a file name")
    p = PurePosixPath(rel)
    if p.is_absolute() or any(part in ("", ".", "..") for part in rel.split("/")) or rel == ENTRY:
        raise ValueError(f"{rel!r} leaves the entry's folder")


def _describe(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."
