"""Signed builds: signing, verification, refusals that name the file, model-signing's own verifier, serve.

Bundles are small (tests/serve_support.py's iris classifier) so each test signs in well under a second.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from serve_support import ROOT, Server, write_bundle

from deployc import conventions as c
from deployc import signing
from deployc.errors import InputError, UsageError
from deployc.manifest import make_manifest
from deployc.render import dump_json
from deployc.serve.cli import main as serve_main

MODEL_SIGNING_CLI = Path(sys.executable).with_name("model_signing")


def make_key(folder: Path, name: str = "key") -> tuple[Path, Path]:
    """A P-256 key pair as PEM files: (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return make_key(tmp_path)


def build_files(tmp_path: Path) -> dict[str, bytes]:
    """What a build of the iris bundle writes: local/ plus report.md, and manifest.json listing them."""
    src = write_bundle(tmp_path / "src")
    files = {f"local/{p.name}": p.read_bytes() for p in sorted((src / "local").iterdir())}
    files["report.md"] = b"# iris\n"
    files[c.MANIFEST] = dump_json(make_manifest(files, name="iris", version="1", spec_sha256="0" * 64, versions={}))
    return files


def write(out: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    return out


@pytest.fixture
def signed(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    files = build_files(tmp_path)
    return write(tmp_path / "build" / "iris", signing.signed_build(files, str(keys[0]), "iris"))


def test_a_build_gets_a_root_and_a_served_folder_signature_outside_its_manifest(signed: Path,
                                                                                keys: tuple[Path, Path]) -> None:
    assert (signed / "model.sig").is_file() and (signed / "local" / "model.sig").is_file()
    assert not any(signing.is_signature(rel) for rel in json.loads((signed / c.MANIFEST).read_text())["files"])
    root = signing.verify_path(signed, str(keys[1]))
    statement, _ = signing.read_signature((signed / "model.sig").read_bytes(), "model.sig")
    names = set(signing.signed_digests(statement))
    assert names == {"manifest.json", "report.md", "local/model.onnx", "local/serving.json", "local/labels.txt"}
    assert root.files == 5 and len(root.key_sha256) == 64
    local = signing.verify_path(signed / "local", keys[1].read_text())  # the key as PEM text, as in a container
    assert local.files == 3 and local.key_sha256 == root.key_sha256


TAMPERS = {
    "one byte of the model": ("local/model.onnx", "changed local/model.onnx"),
    "one line of serving.json": ("local/serving.json", "changed local/serving.json"),
    "an added file": ("local/extra.onnx", "added local/extra.onnx"),
    "a removed file": ("local/labels.txt", "removed local/labels.txt"),
    "an added .gitignore (which model-signing skips)": ("local/.gitignore", "added local/.gitignore"),
}


def tamper(folder: Path, rel: str) -> None:
    p = folder / rel
    if rel.endswith("serving.json"):
        doc = json.loads(p.read_text())
        doc["server"]["max_body_bytes"] = 1 << 30
        p.write_text(json.dumps(doc, indent=2))
    elif rel.endswith("model.onnx"):
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 1
        p.write_bytes(bytes(data))
    elif p.exists():
        p.unlink()
    else:
        p.write_bytes(b"planted\n")


@pytest.mark.parametrize("what", list(TAMPERS))
@pytest.mark.parametrize("where", ["build", "local"])
def test_a_changed_added_or_removed_file_is_refused_and_named(signed: Path, keys: tuple[Path, Path], what: str,
                                                              where: str) -> None:
    rel, message = TAMPERS[what]
    tamper(signed, rel)
    if where == "local":
        rel_local = rel.removeprefix("local/")
        with pytest.raises(signing.SignatureError, match=message.replace("local/", "")) as info:
            signing.verify_path(signed / "local", str(keys[1]))
        assert rel_local in str(info.value)
    else:
        with pytest.raises(signing.SignatureError, match=message):
            signing.verify_path(signed, str(keys[1]))


def test_a_tampered_build_with_a_rewritten_manifest_is_still_refused(signed: Path, keys: tuple[Path, Path]) -> None:
    tamper(signed, "local/model.onnx")
    files = {p.relative_to(signed).as_posix(): p.read_bytes() for p in signed.rglob("*")
             if p.is_file() and not signing.is_signature(p.name) and p.name != c.MANIFEST}
    (signed / c.MANIFEST).write_bytes(dump_json(make_manifest(files, name="iris", version="1",
                                                              spec_sha256="0" * 64, versions={})))
    signing.check_manifest(signed)  # consistent again: only the signature can tell
    with pytest.raises(signing.SignatureError, match=r"changed local/model\.onnx, manifest\.json"):
        signing.verify_path(signed, str(keys[1]))


def test_another_key_an_altered_signature_and_no_signature_are_refused(tmp_path: Path, signed: Path) -> None:
    _, other = make_key(tmp_path, "other")
    with pytest.raises(signing.SignatureError, match="signed with another key"):
        signing.verify_path(signed, str(other))
    _, pub = make_key(tmp_path, "unused")
    unsigned = write(tmp_path / "unsigned", build_files(tmp_path))
    with pytest.raises(signing.SignatureError, match=r"not signed \(no model.sig\)"):
        signing.verify_path(unsigned, str(pub))
    with pytest.raises(UsageError, match="no public key"):
        signing.verify_path(signed, None)


def test_a_swapped_signature_payload_does_not_verify(tmp_path: Path, signed: Path, keys: tuple[Path, Path]) -> None:
    """Editing the signed statement (to list a tampered model's digest) breaks the ECDSA signature."""
    import base64

    sig = signed / "local" / "model.sig"
    bundle = json.loads(sig.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "0" * 64
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    sig.write_text(json.dumps(bundle))
    with pytest.raises(signing.SignatureError):
        signing.verify_path(signed / "local", str(keys[1]))


def test_model_signing_own_cli_and_api_verify_the_signatures(signed: Path, keys: tuple[Path, Path]) -> None:
    from model_signing import verifying

    env = {**os.environ, "OTEL_SDK_DISABLED": "true"}
    for folder in (signed, signed / "local"):
        verifying.Config().use_elliptic_key_verifier(public_key=keys[1]).verify(folder, folder / "model.sig")
        ok = subprocess.run([str(MODEL_SIGNING_CLI), "verify", "key", str(folder), "--signature",
                             str(folder / "model.sig"), "--public_key", str(keys[1])],
                            capture_output=True, text=True, env=env, timeout=120)
        assert ok.returncode == 0, ok.stdout + ok.stderr
    tamper(signed, "local/serving.json")
    bad = subprocess.run([str(MODEL_SIGNING_CLI), "verify", "key", str(signed / "local"), "--signature",
                          str(signed / "local" / "model.sig"), "--public_key", str(keys[1])],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode != 0 and "serving.json" in bad.stdout + bad.stderr
    with pytest.raises(ValueError, match="serving.json"):
        verifying.Config().use_elliptic_key_verifier(public_key=keys[1]).verify(signed, signed / "model.sig")


def test_the_payload_is_deterministic_and_the_signature_randomized(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    files = build_files(tmp_path)
    first, second = (signing.sign_files(files, str(keys[0]), "iris") for _ in range(2))
    for rel in ("model.sig", "local/model.sig"):
        assert signing.read_signature(first[rel], rel)[0] == signing.read_signature(second[rel], rel)[0]
        assert first[rel] != second[rel]  # ECDSA: a fresh nonce per signature


def test_check_verifies_signatures_instead_of_comparing_them(tmp_path: Path, signed: Path,
                                                             keys: tuple[Path, Path]) -> None:
    class Spec:
        signing = None

    have = {p.relative_to(signed).as_posix(): p.read_bytes() for p in signed.rglob("*") if p.is_file()}
    would = build_files(tmp_path)  # what a rebuild writes: the same files, unsigned
    kept, added, removed, changed = signing.check_build(would, have, signed, Spec(), sign=str(keys[0]), environ={})
    assert (added, removed, changed) == ([], [], []) and set(kept) == set(would)
    stale = {**would, "report.md": b"# iris, retrained\n"}
    _, added, removed, changed = signing.check_build(stale, have, signed, Spec(), environ={})
    assert changed == ["model.sig"]  # its payload no longer lists what the build writes (no key needed)
    _, other = make_key(tmp_path, "other")
    _, _, _, changed = signing.check_build(would, have, signed, Spec(), environ={"DEPLOYC_VERIFY_KEY": str(other)})
    assert changed == ["local/model.sig", "model.sig"]  # with a key, the signer must be that key's owner

    class Required:
        class signing:  # noqa: N801
            key_env, required = "NO_SUCH_VARIABLE", True

    _, added, _, _ = signing.check_build(would, {k: v for k, v in have.items() if not signing.is_signature(k)},
                                         signed, Required(), environ={})
    assert added == ["local/model.sig", "model.sig"]


def test_a_required_signature_without_a_key_fails_before_the_build(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    class Required:
        class signing:  # noqa: N801
            key_env, required = "CI_SIGNING_KEY", True

    with pytest.raises(InputError, match=r"pass --sign KEY or set \$CI_SIGNING_KEY"):
        signing.signing_key(None, Required(), environ={})
    assert signing.signing_key(None, Required(), environ={"CI_SIGNING_KEY": str(keys[0])}) == str(keys[0])
    pem = keys[0].read_text()
    assert signing.signing_key(None, object(), environ={"DEPLOYC_SIGNING_KEY": pem}) == pem
    assert signing.signing_key(None, object(), environ={}) is None
    with pytest.raises(InputError, match="no-such.pem: no such key file"):
        signing.signing_key(str(tmp_path / "no-such.pem"), object(), environ={})
    with pytest.raises(InputError, match="not a usable PEM private key"):
        signing.signing_key(str(keys[1]), object(), environ={})
    with pytest.raises(InputError, match="not a usable EC private key"):
        signing.sign_files(build_files(tmp_path), str(keys[1]), "iris")  # a public key is not a signing key


def test_serve_with_require_signature_refuses_a_tampered_bundle_and_serves_an_intact_one(
        signed: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    with Server(signed, "--require-signature", "--key", str(keys[1])) as srv:
        assert srv.json("GET", "/v2/health/ready")[0] == 200
        assert "signature verified (key sha256" in srv.text() and "bundle sha256" in srv.text()
    with Server(signed / "local", env={"DEPLOYC_VERIFY_KEY": keys[1].read_text()}) as srv:
        assert "signature verified" in srv.text()
    tamper(signed, "local/serving.json")
    for bundle in (signed, signed / "local"):
        assert serve_main([str(bundle), "--require-signature", "--key", str(keys[1]), "--port", "0"]) == 1
        err = capsys.readouterr().err
        assert "changed local/serving.json" in err or "changed serving.json" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DEPLOYC_REQUIRE_SIGNATURE": "1"}
    env.pop("DEPLOYC_VERIFY_KEY", None)
    run = subprocess.run([sys.executable, "-m", "deployc.serve", str(signed), "--port", "0"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 1 and "a verified signature is required" in run.stderr


def test_serving_json_can_require_a_signature(tmp_path: Path, keys: tuple[Path, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bundle = write_bundle(tmp_path / "b", signature={"required": True, "file": "model.sig"})
    os.environ.pop("DEPLOYC_VERIFY_KEY", None)
    assert serve_main([str(bundle / "local"), "--port", "0"]) == 1
    assert "a verified signature is required" in capsys.readouterr().err
    assert serve_main([str(bundle / "local"), "--port", "0", "--key", str(keys[1])]) == 1
    assert "not signed (no model.sig)" in capsys.readouterr().err


TINY_SPEC = ("apiVersion: deployc/v1\nname: rt\nmodel: {path: model.onnx}\n"
             "data:\n  eval: {path: eval.npz, x: x, y: y}\n"
             "gates: {min_agreement: 0.5}\nmeasure: {min_seconds: 0.01}\ntargets:\n  local:\n")


def test_build_sign_verify_check_and_rebuild_through_the_cli(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    from aws_support import tiny_onnx_project
    from conftest import run_deployc

    project = tiny_onnx_project(tmp_path / "p", 16, TINY_SPEC)
    cache, out = tmp_path / "cache", project / "build" / "rt"
    plain = run_deployc("build", "deploy.yaml", "-q", cwd=project, cache_dir=cache, DEPLOYC_SIGNING_KEY="")
    assert plain.returncode == 0, plain.stderr
    unsigned_files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    built = run_deployc("build", "deploy.yaml", "-q", "--sign", str(keys[0]), cwd=project, cache_dir=cache)
    assert built.returncode == 0, built.stderr
    signed_files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert signing.unsigned(signed_files) == unsigned_files  # signing only adds the signature files
    assert sorted(set(signed_files) - set(unsigned_files)) == ["local/model.sig", "model.sig"]
    ok = run_deployc("verify", str(out), "--key", str(keys[1]), cwd=project)
    assert ok.returncode == 0 and "signature verified" in ok.stdout, ok.stderr
    check = run_deployc("build", "deploy.yaml", "--check", cwd=project, cache_dir=cache, DEPLOYC_SIGNING_KEY="")
    assert check.returncode == 0, check.stderr
    check = run_deployc("build", "deploy.yaml", "--check", "--sign", str(keys[0]), cwd=project, cache_dir=cache)
    assert check.returncode == 0, check.stderr
    tamper(out, "local/serving.json")
    bad = run_deployc("verify", str(out), cwd=project, DEPLOYC_VERIFY_KEY=str(keys[1]))
    assert bad.returncode == 1 and bad.stderr.strip() == f"{out}: does not match its signature: changed " \
                                                          "local/serving.json"
    check = run_deployc("build", "deploy.yaml", "--check", cwd=project, cache_dir=cache, DEPLOYC_SIGNING_KEY="")
    assert check.returncode == 1 and "changed  local/serving.json" in check.stderr
    assert "changed  local/model.sig" not in check.stderr  # the signature still signs what the build writes
    again = run_deployc("build", "deploy.yaml", "-q", cwd=project, cache_dir=cache, DEPLOYC_SIGNING_KEY=str(keys[0]))
    assert again.returncode == 0, again.stderr  # a signed build is replaced like any build
    assert run_deployc("verify", str(out), "--key", str(keys[1]), cwd=project).returncode == 0


def test_signed_builds_serving_images_install_the_sign_extra() -> None:
    from deployc.targets import azureml
    from deployc.targets.common import serving_requirement

    class Signed:
        explain = None
        signing = object()

    assert serving_requirement(Signed()).startswith("deployc[serve,sign]==")
    assert serving_requirement(object()).startswith("deployc[serve]==")
    text = azureml.dockerfile("iris", "1", header="h", requirement=serving_requirement(Signed()), signed=True)
    assert 'ARG DEPLOYC_REQUIREMENT="deployc[serve,sign]==' in text and "DEPLOYC_VERIFY_KEY" in text
    assert "DEPLOYC_VERIFY_KEY" not in azureml.dockerfile("iris", "1", header="h")
    from deployc.targets import sagemaker

    signed_image = sagemaker.dockerfile("iris", "1", header="h", requirement=serving_requirement(Signed()))
    assert "model.tar.gz carries no signature" in signed_image and "deployc deploy --key" in signed_image
    assert "signature" not in sagemaker.dockerfile("iris", "1", header="h", requirement=serving_requirement(object()))


def test_kserve_predictor_of_a_build_verified_on_serve_reads_the_key_from_a_configmap(tmp_path: Path) -> None:
    from test_kserve import BASE, context, load_yaml, spec_of

    from deployc.schema.signing import Signing
    from deployc.targets import get_target

    spec = spec_of({**BASE, "targets": {"kserve": {"storage_uri": "s3://b/m", "image": "ghcr.io/a/b:1"}}})
    plain = load_yaml(get_target("kserve").emit(context(spec, tmp_path))["kserve/inferenceservice.yaml"])
    assert "DEPLOYC_VERIFY_KEY" not in json.dumps(plain)
    signed_spec = spec.model_copy(update={"signing": Signing(verify_on_serve=True)})
    files = get_target("kserve").emit(context(signed_spec, tmp_path))  # validated against the Kubernetes schemas
    (container,) = load_yaml(files["kserve/inferenceservice.yaml"])["spec"]["predictor"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["DEPLOYC_VERIFY_KEY"]["valueFrom"] == {"configMapKeyRef": {"name": f"{spec.name}-signing-key",
                                                                           "key": "public.pem"}}
    assert env["DEPLOYC_REQUIRE_SIGNATURE"]["value"] == "1"
    assert Signing().model_dump() == {"key_env": "DEPLOYC_SIGNING_KEY", "required": True, "verify_on_serve": False}
    with pytest.raises(ValueError, match="key_env"):
        Signing.model_validate({"key_env": "not a variable"})
