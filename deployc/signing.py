"""Signed builds in the OpenSSF model-signing format (PyPI `model-signing`), and their verification.

A signed build holds one `model.sig` at its root, over every other file of the build folder (manifest.json and
the served folders' own signatures included), and one in each served folder (every folder holding a
serving.json: `local/`, `kserve/model/`, `azureml/model/`, `vertex/model/`), over that folder alone, so that a
container that only receives the served folder can check it. Each is a Sigstore bundle whose DSSE payload is an
in-toto statement listing every file with its sha256 (model-signing's "files" serialization, the signature file
itself ignored), signed with an EC private key.

The payload is deterministic (files hashed from their bytes, in sorted order, under stable names); ECDSA
signatures are randomized, so the signature bytes differ between two signings of the same build. Signature
files are therefore not listed in manifest.json, and `deployc build --check` verifies them instead of comparing
them byte for byte.

Signing and verification go through model-signing's public API (`signing.Config`, `verifying.Config`), so what
model-signing's own CLI verifies is what deployc verifies. model_signing is imported inside the functions: a
ModuleNotFoundError names the `sign` extra (deployc.extras).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from deployc import conventions as c
from deployc.errors import InputError, input_error
from deployc.manifest import sha256_bytes
from deployc.manifest import verify_build as verify_build_files

SIGNATURE = "model.sig"
KEY_ENV = "DEPLOYC_SIGNING_KEY"  # the private key that `deployc build` signs with (a PEM file's path, or PEM text)
VERIFY_KEY_ENV = "DEPLOYC_VERIFY_KEY"  # the public key `deployc serve`, `verify` and `deploy` verify with
REQUIRE_ENV = "DEPLOYC_REQUIRE_SIGNATURE"  # "1": serve and deploy refuse a bundle whose signature does not verify
PEM_START = "-----BEGIN "


class SignatureError(InputError):
    """A signature is missing, was made with another key, or no longer matches the files (which it names)."""


@dataclass(frozen=True)
class Verified:
    """A folder whose signature verified: who signed it (the key's fingerprint) and what (the signed digest)."""

    folder: Path
    key_sha256: str  # sha256 of the signer's public key (PEM SubjectPublicKeyInfo), as model-signing records it
    digest: str  # the in-toto subject's sha256: over every signed file's digest, in name order
    files: int

    def to_json(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "key_sha256": self.key_sha256, "digest": self.digest,
                "files": self.files}


# --- where signatures sit --------------------------------------------------------------------------------------
def is_signature(rel: str) -> bool:
    return PurePosixPath(rel).name == SIGNATURE


def signed_folders(files: Iterable[str]) -> list[str]:
    """The folders a build signs, relative to the build root: each served folder (it holds serving.json), then
    the root ("") last, since the root signature covers the served folders' signatures."""
    served = sorted({str(PurePosixPath(rel).parent) for rel in files if PurePosixPath(rel).name == "serving.json"})
    return [f for f in served if f != "."] + [""]


def signature_path(folder: str) -> str:
    return f"{folder}/{SIGNATURE}" if folder else SIGNATURE


def unsigned(files: Mapping[str, bytes]) -> dict[str, bytes]:
    return {rel: data for rel, data in files.items() if not is_signature(rel)}


# --- keys ------------------------------------------------------------------------------------------------------
def signing_key(flag: str | None, spec: Any, environ: Mapping[str, str] | None = None) -> str | None:
    """The private key a build signs with: `--sign KEY`, else the spec's `signing.key_env` variable (default
    DEPLOYC_SIGNING_KEY); None for an unsigned build. InputError when the key is unreadable, or when the spec
    requires a signature and no key is given: before any step runs."""
    env = os.environ if environ is None else environ
    cfg = getattr(spec, "signing", None)
    var = cfg.key_env if cfg is not None else KEY_ENV
    key = flag or env.get(var) or None
    if key is not None:
        public_key_pem(key)  # an unreadable key fails now, not after every step has run
        return key
    if cfg is not None and cfg.required:
        raise InputError(f"signing: the spec requires a signed build and no key was given: pass --sign KEY or set "
                         f"${var} (the path of a PEM EC private key, or the PEM text)")
    return None


def verify_key(flag: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The public key to verify with: `--key PUB`, else $DEPLOYC_VERIFY_KEY (a PEM file's path, or PEM text)."""
    env = os.environ if environ is None else environ
    return flag or env.get(VERIFY_KEY_ENV) or None


def _label(value: str) -> str:
    """How a message names a key: its path, never its PEM text."""
    return "the PEM key given as text" if value.lstrip().startswith(PEM_START) else value


@contextmanager
def _key_file(value: str, scratch: Path | None = None) -> Iterator[Path]:
    """A key given as a path or as PEM text (an environment variable), as a file model-signing can read."""
    if not value.lstrip().startswith(PEM_START):
        path = Path(value)
        if not path.is_file():
            raise InputError(f"{value}: no such key file")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="deployc-key-", dir=scratch) as tmp:
        path = Path(tmp) / "key.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value.strip() + "\n")
        yield path


def public_key_pem(private_key: str) -> str:
    """The public half of a PEM EC private key (so `build --check --sign KEY` can verify what it would sign)."""
    from cryptography.hazmat.primitives import serialization

    with _key_file(private_key) as path:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), None)
        except (ValueError, TypeError) as exc:
            raise InputError(f"{_label(private_key)}: not a usable PEM private key ({exc})") from None
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


# --- signing ---------------------------------------------------------------------------------------------------
def _hashing(ignore: list[str]) -> Any:
    from model_signing import hashing

    return (hashing.Config().use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
            .set_ignored_paths(paths=ignore, ignore_git_paths=False))


def sign_files(files: Mapping[str, bytes], key: str, name: str) -> dict[str, bytes]:
    """The signature files of a build ({path: bytes}), to be written with it: one per served folder, then the
    root's. The files are staged in a scratch folder named `name` (the payload's subject name), so the payload
    does not depend on where the build is written."""
    from model_signing import signing

    with tempfile.TemporaryDirectory(prefix="deployc-sign-") as tmp:
        root = Path(tmp) / name
        for rel, data in sorted(unsigned(files).items()):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        out: dict[str, bytes] = {}
        with _key_file(key, Path(tmp)) as key_path:
            try:
                config = signing.Config().use_elliptic_key_signer(private_key=key_path)
            except (ValueError, TypeError) as exc:
                raise InputError(f"{_label(key)}: not a usable EC private key (P-256, P-384 or P-521 PEM): "
                                 f"{exc}") from None
            folders = signed_folders(files)
            for folder in folders:
                where = root / folder if folder else root
                # the root skips the served folders' signatures too: theirs are randomized, its payload is not
                ignore = [signature_path(f) for f in folders] if not folder else [SIGNATURE]
                config.set_hashing_config(_hashing(ignore)).sign(where, where / SIGNATURE)
                out[signature_path(folder)] = (where / SIGNATURE).read_bytes()
    return out


# --- reading a signature -----------------------------------------------------------------------------------------
def read_signature(data: bytes, where: str) -> tuple[dict[str, Any], str]:
    """(the in-toto statement, the signer's key fingerprint) of a signature file, unverified."""
    try:
        bundle = json.loads(data)
        envelope = bundle["dsseEnvelope"]
        statement = json.loads(base64.b64decode(envelope["payload"]))
        hint = str(((bundle.get("verificationMaterial") or {}).get("publicKey") or {}).get("hint") or "")
        if not isinstance(statement["predicate"]["resources"], list):
            raise TypeError("resources is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{where}: not a model-signing signature ({exc})") from None
    return statement, hint


def signed_digests(statement: dict[str, Any]) -> dict[str, str]:
    return {str(r["name"]): str(r["digest"]) for r in statement["predicate"]["resources"]}


def ignored(statement: dict[str, Any]) -> list[str]:
    """The paths a signature leaves out (signature files only, in deployc's signatures)."""
    return [str(p) for p in statement["predicate"]["serialization"].get("ignore_paths") or [SIGNATURE]]


def folder_digests(folder: Path, ignore: Iterable[str] = (SIGNATURE,)) -> dict[str, str]:
    """sha256 of every file below `folder` but the signatures its signature ignores (what it must list)."""
    out = {}
    skip = set(ignore)
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if rel not in skip and (p.is_file() or p.is_symlink()):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "symlink"
    return out


def describe_difference(where: Path | str, signed: Mapping[str, str], actual: Mapping[str, str]) -> str | None:
    """One line naming what changed, was added or was removed since the signing; None when nothing did."""
    changed = sorted(k for k in set(signed) & set(actual) if signed[k] != actual[k])
    added, removed = sorted(set(actual) - set(signed)), sorted(set(signed) - set(actual))
    parts = [f"{what} {', '.join(names)}" for what, names in (("changed", changed), ("added", added),
                                                              ("removed", removed)) if names]
    return f"{where}: does not match its signature: {'; '.join(parts)}" if parts else None


# --- verifying ---------------------------------------------------------------------------------------------------
def verify_folder(folder: Path, public_key: str) -> Verified:
    """Verify `folder/model.sig` with model-signing's verifier (and that no file was added beside the signed
    ones, which that verifier would skip: `.git*` names); SignatureError naming the files otherwise."""
    from cryptography.exceptions import InvalidSignature
    from model_signing import verifying

    folder = Path(folder)
    sig = folder / SIGNATURE
    if not sig.is_file():
        raise SignatureError(f"{folder}: not signed (no {SIGNATURE})")
    try:
        statement, hint = read_signature(sig.read_bytes(), str(sig))
    except OSError as exc:
        raise input_error(exc, f"{sig}: unreadable") from None
    with _key_file(public_key) as key_path:
        try:
            config = verifying.Config().use_elliptic_key_verifier(public_key=key_path)
        except (ValueError, TypeError) as exc:
            raise InputError(f"{_label(public_key)}: not a PEM EC public key ({exc})") from None
        try:
            config.verify(folder, sig)
        except InvalidSignature:
            raise SignatureError(f"{sig}: the signature does not verify with {_label(public_key)} (the signature "
                                 "file was altered)") from None
        except ValueError as exc:
            text = str(exc)
            if text.startswith("Signature mismatch"):
                actual = folder_digests(folder, ignored(statement))
                raise SignatureError(describe_difference(folder, signed_digests(statement), actual)
                                     or f"{folder}: does not match its signature") from None
            if text.startswith("Key mismatch"):
                raise SignatureError(f"{sig}: signed with another key (sha256 {hint[:16]}...), not "
                                     f"{_label(public_key)}") from None
            raise SignatureError(f"{sig}: {text.splitlines()[0] if text else type(exc).__name__}") from None
        except OSError as exc:
            raise input_error(exc, f"{folder}: cannot verify") from None
    signed = signed_digests(statement)
    problem = describe_difference(folder, signed, folder_digests(folder, ignored(statement)))
    if problem:
        raise SignatureError(problem)
    digest = str(statement["subject"][0]["digest"]["sha256"])
    return Verified(folder=folder, key_sha256=hint, digest=digest, files=len(signed))


def check_manifest(build_dir: Path) -> dict[str, Any]:
    """manifest.json's check (deployc.manifest.verify_build) with the signature files of a signed build allowed:
    they are not listed, since they sign manifest.json. Returns the manifest."""
    return verify_build_files(build_dir, lambda listed: {signature_path(f) for f in signed_folders(listed)})


def verify_build(build_dir: Path, public_key: str) -> Verified:
    """A whole build: its root signature (every file but the signatures, manifest.json included; first, since it
    names what changed even when manifest.json was rewritten to match), its manifest, then each served folder's
    signature (a changed or removed one is refused too)."""
    verified = verify_folder(build_dir, public_key)
    doc = check_manifest(build_dir)
    for folder in signed_folders(doc["files"])[:-1]:
        verify_folder(build_dir / folder, public_key)
    return verified


def served_folder_to_verify(bundle: Path) -> Path:
    """What `deployc serve BUNDLE` verifies: the whole build when BUNDLE is a build folder (its root signature
    covers the served folder), else the served folder itself (its own model.sig)."""
    bundle = Path(bundle)
    return bundle.parent if bundle.is_file() else bundle


def verify_bundle(bundle: Path, public_key: str) -> Verified:
    folder = served_folder_to_verify(bundle)
    if (folder / c.MANIFEST).is_file():
        return verify_build(folder, public_key)
    return verify_folder(folder, public_key)


def signature_status(folder: Path) -> dict[str, Any]:
    """What a folder's signature says, unverified (for logs and the audit trail): signed or not, the signer's key
    fingerprint and the signed digest."""
    sig = Path(folder) / SIGNATURE
    if not sig.is_file():
        return {"signed": False}
    try:
        statement, hint = read_signature(sig.read_bytes(), str(sig))
        return {"signed": True, "key_sha256": hint, "digest": str(statement["subject"][0]["digest"]["sha256"])}
    except (SignatureError, OSError, KeyError, IndexError, TypeError):
        return {"signed": True, "unreadable": True}


# --- build --check ---------------------------------------------------------------------------------------------
def check_signatures(would: Mapping[str, bytes], have: Mapping[str, bytes], out: Path, *, expected: bool,
                     public_key: str | None = None) -> tuple[list[str], list[str], list[str]]:
    """(added, removed, changed) signature files for `deployc build --check`: signature bytes are never
    compared (ECDSA is randomized); a present signature must list exactly what the build would write in its
    folder (and, with `public_key`, verify); a missing one counts as added only when the spec requires signing."""
    at = {signature_path(f): f for f in signed_folders(unsigned(would))}
    present = {rel for rel in have if is_signature(rel)}
    content = {**unsigned(would), **{rel: have[rel] for rel in present}}
    changed = []
    for rel in sorted(present & set(at)):
        folder = at[rel]
        prefix = f"{folder}/" if folder else ""
        try:
            statement, _ = read_signature(have[rel], rel)
        except SignatureError:
            changed.append(rel)
            continue
        skip = {prefix + p for p in ignored(statement)}
        want = {k[len(prefix):]: sha256_bytes(v) for k, v in content.items() if k.startswith(prefix) and k not in skip}
        if signed_digests(statement) != want:
            changed.append(rel)
        elif public_key is not None:
            try:
                verify_folder(out / folder if folder else out, public_key)
            except InputError:
                changed.append(rel)
    added = sorted(set(at) - present) if expected else []
    return added, sorted(present - set(at)), changed


# --- before serving or deploying ---------------------------------------------------------------------------------
def required_by_env(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes")


def check_provenance(bundle: Path, key: str | None, required: bool) -> dict[str, Any]:
    """What `deployc serve` and `deployc deploy` check before they load or upload anything: with a key, the
    signature must verify (a whole build with its manifest, or a served folder); without one, a required
    signature is an error. Returns the signature status (for the logs and the audit trail)."""
    folder = served_folder_to_verify(bundle)
    status: dict[str, Any] = {**signature_status(folder), "verified": False}
    if key is None:
        if required:
            raise InputError(f"{bundle}: a verified signature is required and no public key was given: pass "
                             f"--key PUB or set ${VERIFY_KEY_ENV} (the path of a PEM public key, or the PEM text)")
        return status
    verified = verify_bundle(folder, key)
    return {**status, "verified": True, "key_sha256": verified.key_sha256, "digest": verified.digest,
            "files": verified.files}


def serving_fields(spec: Any) -> dict[str, Any]:
    """serving.json's `signature` section ({} unless the spec's `signing.verify_on_serve` asks servers to verify):
    `deployc serve` then refuses to start without a signature that verifies with --key or $DEPLOYC_VERIFY_KEY."""
    cfg = getattr(spec, "signing", None)
    if cfg is None or not cfg.verify_on_serve:
        return {}
    return {"signature": {"required": True, "file": SIGNATURE, "key_env": VERIFY_KEY_ENV}}


def verifies_on_serve(spec: Any) -> bool:
    cfg = getattr(spec, "signing", None)
    return cfg is not None and bool(cfg.verify_on_serve)


# --- what deployc.api and the `verify` command call ---------------------------------------------------------------
def signed_build(files: Mapping[str, bytes], key: str | None, name: str) -> dict[str, bytes]:
    """`files` with the build's signature files added (unchanged without a key)."""
    return {**files, **sign_files(files, key, name)} if key else dict(files)


def check_build(files: Mapping[str, bytes], have: Mapping[str, bytes], out: Path, spec: Any,
                sign: str | None = None, environ: Mapping[str, str] | None = None
                ) -> tuple[dict[str, bytes], list[str], list[str], list[str]]:
    """For `deployc build --check`: (the folder's files without its signatures, then the added, removed and
    changed signature files). Never fails for want of a key (a pull request has none): a signature must sign what
    the build would write; with a key (`--sign KEY`, the spec's key variable, or $DEPLOYC_VERIFY_KEY) it must
    also verify."""
    env = os.environ if environ is None else environ
    cfg = getattr(spec, "signing", None)
    private = sign or env.get(cfg.key_env if cfg is not None else KEY_ENV) or None
    public = public_key_pem(private) if private else verify_key(None, env)
    expected = cfg is not None and bool(cfg.required)
    added, removed, changed = check_signatures(files, have, out, expected=expected, public_key=public)
    return unsigned(have), added, removed, changed


def verify_path(path: Path, key: str | None = None) -> Verified:
    """`deployc verify PATH`: a build folder (manifest, root and served-folder signatures) or a served folder."""
    from deployc.errors import UsageError

    found = verify_key(key)
    if found is None:
        raise UsageError(f"deployc verify: no public key: pass --key PUB or set ${VERIFY_KEY_ENV}")
    if not Path(path).exists():
        raise InputError(f"{path}: no such build folder")
    return verify_bundle(Path(path), found)
