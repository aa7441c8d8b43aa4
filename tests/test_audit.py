"""The audit trail of `deployc deploy` (moto in server mode), and signature checks before any AWS call."""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_support import ALARMS, BUCKET, emit_context, moto_server, reset_moto, spec_for, tiny_onnx, write_bundle
from test_signing import make_key

from deployc import audit, signing
from deployc.deploy.aws import client_factory
from deployc.deploy.cli import main as deploy_main
from deployc.deploy.sagemaker import deploy
from deployc.errors import DeployError, InputError
from deployc.targets.sagemaker import SageMakerTarget

__all__ = ["moto_server"]
M5 = {"instance_type": "ml.m5.large"}


@pytest.fixture
def aws(moto_server: str) -> Iterator[str]:
    reset_moto(moto_server)
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield moto_server


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return make_key(tmp_path)


def signed_bundle(tmp_path: Path, key: Path | None, label: str = "a") -> Path:
    """A SageMaker build (model.tar.gz, deploy plan, manifest.json), signed with `key` unless None."""
    files = SageMakerTarget().emit(emit_context(spec_for(M5), tiny_onnx(tmp_path / f"m-{label}.onnx"),
                                                alarms=ALARMS))
    out = write_bundle(tmp_path / f"build-{label}", files)
    if key is not None:
        everything = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        for rel, data in signing.sign_files(everything, str(key), "digits").items():
            (out / rel).write_bytes(data)
    return out


class Calls:
    """A client factory to moto that records every operation sent."""

    def __init__(self, url: str):
        self.factory, self.ops = client_factory("us-east-1", url), []

    def __call__(self, service: str) -> Any:
        client = self.factory(service)
        client.meta.events.register("before-call.*.*", lambda model, **_: self.ops.append(model.name))
        return client


def test_deploys_append_one_line_each_and_never_rewrite(aws: str, tmp_path: Path, keys: tuple[Path, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_ACTOR", "octocat")
    monkeypatch.setenv("GITHUB_RUN_ID", "42")
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)  # the deploy's own clients, STS included, go to moto
    log = tmp_path / "audit" / "deploys.jsonl"
    build = signed_bundle(tmp_path, keys[0])
    first = deploy(build, log=lambda _: None, poll_s=0.01, verify_key=str(keys[1]), require_signature=True,
                   audit_log=log)
    after_one = log.read_bytes()
    again = deploy(build, log=lambda _: None, poll_s=0.01, verify_key=str(keys[1]), audit_log=log)
    assert first["changed"] and not again["changed"]
    assert log.read_bytes().startswith(after_one)  # appended, the first line untouched
    lines = audit.read(log)
    assert len(lines) == 2
    one, two = lines
    assert one["result"] == two["result"] == "ok" and one["action"] == "deploy" and one["target"] == "sagemaker"
    assert one["time"].endswith("Z") and one["finished"] >= one["time"]
    assert one["actor"]["ci"]["GITHUB_ACTOR"] == "octocat" and one["actor"]["ci"]["GITHUB_RUN_ID"] == "42"
    assert one["actor"]["aws"]["account"] == "123456789012" and one["actor"]["aws"]["arn"].startswith("arn:aws:")
    assert one["build"]["manifest_sha256"] == hashlib.sha256((build / "manifest.json").read_bytes()).hexdigest()
    sig = one["build"]["signature"]
    assert sig["signed"] and sig["verified"] and len(sig["key_sha256"]) == 64 and len(sig["digest"]) == 64
    assert one["endpoint"]["name"] == "digits" and one["endpoint"]["config"] == first["endpoint_config_name"]
    assert [c["call"] for c in one["changes"]][:3] == ["s3.put_object", "sagemaker.create_model",
                                                        "sagemaker.create_endpoint_config"]
    assert two["changed"] is False and two["changes"] == []
    assert oct(log.stat().st_mode & 0o777) == "0o640"


def test_a_tampered_bundle_is_refused_before_any_aws_call(aws: str, tmp_path: Path, keys: tuple[Path, Path]) -> None:
    log = tmp_path / "audit.jsonl"
    build = signed_bundle(tmp_path, keys[0])
    plan = build / "sagemaker" / "deploy-plan.json"
    doc = json.loads(plan.read_text())
    doc["calls"][0]["parameters"]["Bucket"] = "attacker-bucket"
    plan.write_text(json.dumps(doc, indent=2))
    # the manifest rewritten to match: only the signature can tell
    manifest = json.loads((build / "manifest.json").read_text())
    manifest["files"]["sagemaker/deploy-plan.json"] = {"sha256": hashlib.sha256(plan.read_bytes()).hexdigest(),
                                                      "size": plan.stat().st_size}
    (build / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n")
    calls = Calls(aws)
    with pytest.raises(signing.SignatureError, match=r"changed manifest\.json, sagemaker/deploy-plan\.json"):
        deploy(build, clients=calls, log=lambda _: None, poll_s=0.01, verify_key=str(keys[1]), audit_log=log)
    assert calls.ops == []
    (line,) = audit.read(log)
    assert line["result"] == "refused" and "sagemaker/deploy-plan.json" in line["error"]
    assert line["build"]["manifest_sha256"] == hashlib.sha256((build / "manifest.json").read_bytes()).hexdigest()
    assert "endpoint" not in line


def test_an_unsigned_bundle_is_refused_when_a_signature_is_required(aws: str, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    keys: tuple[Path, Path]) -> None:
    log = tmp_path / "audit.jsonl"
    build = signed_bundle(tmp_path, None)
    code = deploy_main([str(build), "--target", "sagemaker", "--endpoint-url", aws, "--require-signature",
                        "--audit-log", str(log)])
    err = capsys.readouterr().err
    assert code == 1 and "a verified signature is required" in err and "Traceback" not in err
    env = {**os.environ, "DEPLOYC_VERIFY_KEY": keys[1].read_text()}
    with pytest.raises(signing.SignatureError, match="not signed"):
        deploy(build, clients=Calls(aws), log=lambda _: None, environ=env, audit_log=log)
    assert [line["result"] for line in audit.read(log)] == ["refused", "refused"]


def test_a_failed_deploy_is_recorded_with_its_error(moto_server: str, tmp_path: Path) -> None:
    reset_moto(moto_server)  # no bucket: the upload fails
    log = tmp_path / "audit.jsonl"
    with pytest.raises(DeployError, match="NoSuchBucket"):
        deploy(signed_bundle(tmp_path, None), clients=Calls(moto_server), log=lambda _: None, poll_s=0.01,
               audit_log=log)
    (line,) = audit.read(log)
    assert line["result"] == "failed" and "NoSuchBucket" in line["error"] and line["actor"]["aws"] == {
        "looked_up": False}
    assert line["build"]["signature"] == {"signed": False, "verified": False}


def test_an_unwritable_audit_log_stops_the_deploy_before_aws(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cannot open the audit log"):
        deploy(tmp_path, audit_log=blocker / "audit.jsonl", clients=lambda s: pytest.fail(f"called {s}"))


def test_the_default_path_follows_the_environment(tmp_path: Path) -> None:
    assert audit.default_path({"DEPLOYC_AUDIT_LOG": "/x/a.jsonl"}) == Path("/x/a.jsonl")
    assert audit.default_path({"XDG_STATE_HOME": "/s"}) == Path("/s/deployc/audit.jsonl")
