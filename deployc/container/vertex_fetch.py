"""The Vertex AI container's first step: copy the model folder from `$AIP_STORAGE_URI`, then run the server.

Vertex AI does not mount a custom container's model: it copies `artifactUri` to a bucket of its own, sets
`AIP_STORAGE_URI` to it and leaves the download to the container. This module does that with the standard
library only (the metadata server's token and the Cloud Storage JSON API), then replaces itself with the command
after `--`:

    python -m deployc.container.vertex_fetch DEST -- python -m deployc serve DEST --host 0.0.0.0 --port 8080

`GCE_METADATA_HOST` and `STORAGE_EMULATOR_HOST` point it elsewhere, as they do Google's client libraries.
"""
from __future__ import annotations

import json
import os
import sys
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

STORAGE_URI_ENV = "AIP_STORAGE_URI"
TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
MAX_FILES = 1000


class FetchError(Exception):
    """The model folder could not be copied; the container exits 1 with this message."""


def _get(url: str, headers: dict[str, str]) -> bytes:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - http(s) URLs built here
            return bytes(resp.read())
    except OSError as exc:  # URLError and HTTPError are OSErrors
        raise FetchError(f"GET {url.split('?')[0]}: {exc}") from None


def access_token() -> str:
    host = os.environ.get("GCE_METADATA_HOST", "metadata.google.internal")
    data = json.loads(_get(f"http://{host}{TOKEN_PATH}", {"Metadata-Flavor": "Google"}))
    return str(data["access_token"])


def split_gs_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://") or len(uri) <= 5:
        raise FetchError(f"{STORAGE_URI_ENV} is {uri!r}, not a gs:// URI")
    bucket, _, prefix = uri[5:].partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def fetch(uri: str, dest: Path) -> list[str]:
    """Copy every object under `uri` into `dest` (keeping sub-folders); returns the relative paths written."""
    bucket, prefix = split_gs_uri(uri)
    api = os.environ.get("STORAGE_EMULATOR_HOST", "https://storage.googleapis.com").rstrip("/")
    headers = {"Authorization": f"Bearer {access_token()}"}
    names: list[str] = []
    page: str | None = None
    while True:
        query = {"prefix": prefix, "fields": "items(name),nextPageToken", **({"pageToken": page} if page else {})}
        listing: dict[str, Any] = json.loads(_get(
            f"{api}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?{urllib.parse.urlencode(query)}", headers))
        names += [item["name"] for item in listing.get("items", []) if not item["name"].endswith("/")]
        page = listing.get("nextPageToken")
        if not page:
            break
        if len(names) > MAX_FILES:
            raise FetchError(f"{uri} holds more than {MAX_FILES} objects; is it the model folder?")
    written = []
    for name in sorted(names):
        rel = PurePosixPath(name[len(prefix):])
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise FetchError(f"object {name!r} would be written outside {dest}")
        data = _get(f"{api}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o/"
                    f"{urllib.parse.quote(name, safe='')}?alt=media", headers)
        target = dest.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(str(rel))
    if not written:
        raise FetchError(f"{uri} holds no objects")
    return written


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m deployc.container.vertex_fetch DEST -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    dest, command = Path(argv[0]), argv[2:]
    uri = os.environ.get(STORAGE_URI_ENV, "")
    try:
        files = fetch(uri, dest)
    except (FetchError, ValueError, KeyError) as exc:
        print(f"deployc vertex: error: {exc}", file=sys.stderr)
        return 1
    print(f"deployc vertex: copied {len(files)} files from {uri} to {dest}", file=sys.stderr, flush=True)
    os.execvp(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
