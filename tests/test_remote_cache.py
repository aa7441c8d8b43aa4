"""The shared step cache on S3 (moto in server mode): runners with separate local caches share their steps, a
corrupt object is rebuilt and never trusted, read-only runners write nothing, and an unreachable store degrades
to a local build (or fails with exit 4 when the remote cache is required)."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_support import _free_port, moto_server, tiny_onnx_project
from conftest import deployc_env, run_deployc

from deployc.compiler.remote import RemoteCache, RemoteSettings

__all__ = ["moto_server"]

BUCKET = "deployc-step-cache"
SPEC = ("apiVersion: deployc/v1\nname: rt\nmodel: {path: model.onnx}\n"
        "data:\n  eval: {path: eval.npz, x: x, y: y}\n"
        "gates: {min_agreement: 0.5}\nmeasure: {min_seconds: 0.01}\ntargets:\n  local:\n")


def s3(url: str) -> Any:
    client = boto3.client("s3", endpoint_url=url)
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    return client


def listing(client: Any, prefix: str) -> dict[str, str]:
    """Every object under the prefix with its ETag."""
    out: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return out


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def build(project: Path, cache: Path, out: Path, endpoint: str, prefix: str, *extra: str,
          **env: str) -> subprocess.CompletedProcess[str]:
    return run_deployc("build", "deploy.yaml", "--out", str(out), "--remote-cache", f"s3://{BUCKET}/{prefix}",
                       "--remote-cache-endpoint", endpoint, *extra, cwd=project, cache_dir=cache, **env)


def steps_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("built "))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return tiny_onnx_project(tmp_path / "project", 16, SPEC)


def test_second_runner_builds_everything_from_the_remote_cache(project: Path, tmp_path: Path,
                                                               moto_server: str) -> None:
    client = s3(moto_server)
    first = build(project, tmp_path / "cache-a", tmp_path / "out-a", moto_server, "two-runners")
    assert first.returncode == 0, first.stderr
    assert "0/" in steps_line(first.stdout) and "remote" not in first.stdout + first.stderr
    plan = json.loads((tmp_path / "out-a" / "plan.json").read_text())
    n = len(plan["steps"])
    objects = listing(client, "two-runners")
    indexes = sorted(k for k in objects if k.startswith("two-runners/entries/"))
    assert len(indexes) == n + 1  # every step, and report.html's charts
    for step in plan["steps"]:
        assert f"two-runners/entries/{step['key'][:2]}/{step['key']}.json" in indexes
    for name in (k for k in objects if k.startswith("two-runners/cas/")):  # content-addressed, verified
        body = client.get_object(Bucket=BUCKET, Key=name)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == name.rsplit("/", 1)[1]

    shown = run_deployc("plan", "deploy.yaml", "--format", "json", "--remote-cache", "s3://" + BUCKET + "/two-runners",
                        "--remote-cache-endpoint", moto_server, cwd=project, cache_dir=tmp_path / "cache-b")
    assert shown.returncode == 0, shown.stderr
    assert all(s["remote"] and not s["cached"] for s in json.loads(shown.stdout)["steps"])

    second = build(project, tmp_path / "cache-b", tmp_path / "out-b", moto_server, "two-runners")
    assert second.returncode == 0, second.stderr
    assert f"{n}/{n} steps from cache, {n} from the remote cache" in steps_line(second.stdout)
    assert second.stderr.count(": from the remote cache (") == n
    assert tree(tmp_path / "out-b") == tree(tmp_path / "out-a")
    assert listing(client, "two-runners") == objects  # nothing uploaded again
    again = build(project, tmp_path / "cache-b", tmp_path / "out-b", moto_server, "two-runners")
    assert f"{n}/{n} steps from cache)" in steps_line(again.stdout)  # now held locally


def test_a_corrupt_remote_object_is_rebuilt_not_trusted(project: Path, tmp_path: Path, moto_server: str) -> None:
    client = s3(moto_server)
    first = build(project, tmp_path / "cache-a", tmp_path / "out-a", moto_server, "corrupt")
    assert first.returncode == 0, first.stderr
    plan = json.loads((tmp_path / "out-a" / "plan.json").read_text())
    key = next(s["key"] for s in plan["steps"] if s["id"] == "source")
    index = json.loads(client.get_object(Bucket=BUCKET, Key=f"corrupt/entries/{key[:2]}/{key}.json")["Body"].read())
    victim = f"corrupt/cas/{index['files']['model.onnx']}"
    client.put_object(Bucket=BUCKET, Key=victim, Body=b"tampered")

    second = build(project, tmp_path / "cache-b", tmp_path / "out-b", moto_server, "corrupt")
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("warning:") == 1 and f"entry {key[:12]} is corrupt" in second.stderr
    n = len(plan["steps"])
    assert f"{n - 1}/{n} steps from cache" in steps_line(second.stdout)
    assert tree(tmp_path / "out-b") == tree(tmp_path / "out-a")
    healed = client.get_object(Bucket=BUCKET, Key=victim)["Body"].read()  # the rebuilt entry was uploaded again
    assert hashlib.sha256(healed).hexdigest() == index["files"]["model.onnx"]

    third = build(project, tmp_path / "cache-c", tmp_path / "out-c", moto_server, "corrupt")
    assert f"{n}/{n} steps from cache, {n} from the remote cache" in steps_line(third.stdout), third.stderr
    assert "warning" not in third.stderr


def test_a_tampered_index_is_refused(tmp_path: Path, moto_server: str) -> None:
    """An index whose digest does not match, or that names a file outside its folder, is never used."""
    from deployc.compiler.cache import entry_digest

    client = s3(moto_server)
    warned: list[str] = []
    remote = RemoteCache(RemoteSettings(url=f"s3://{BUCKET}/tampered", endpoint=moto_server), warn=warned.append)
    body = b"payload"
    sha = hashlib.sha256(body).hexdigest()
    client.put_object(Bucket=BUCKET, Key=f"tampered/cas/{sha}", Body=body)
    for key, files, digest in (("a" * 64, {"../../escape": sha}, None), ("b" * 64, {"f": sha}, "0" * 64)):
        doc = {"files": files, "result": {}, "sha256": digest or entry_digest(files, {})}
        client.put_object(Bucket=BUCKET, Key=remote.index_name(key), Body=json.dumps(doc).encode())
        staged = tmp_path / key[:1] / "staged"
        staged.mkdir(parents=True)
        assert remote.fetch(key, staged) is None
        assert not list(staged.parent.rglob("*escape*")) and not list(staged.iterdir())
    assert len(warned) == 2 and "leaves the entry's folder" in warned[0] and "digest" in warned[1]
    good = {"files": {"f": sha}, "result": {"x": 1}, "sha256": entry_digest({"f": sha}, {"x": 1})}
    client.put_object(Bucket=BUCKET, Key=remote.index_name("c" * 64), Body=json.dumps(good).encode())
    (tmp_path / "good").mkdir()
    assert remote.fetch("c" * 64, tmp_path / "good") == {"x": 1}
    assert (tmp_path / "good" / "f").read_bytes() == body


def test_read_only_runner_reads_and_uploads_nothing(project: Path, tmp_path: Path, moto_server: str) -> None:
    client = s3(moto_server)
    first = build(project, tmp_path / "cache-a", tmp_path / "out-a", moto_server, "read-only")
    assert first.returncode == 0, first.stderr
    before = listing(client, "read-only")
    # a changed measurement setting: the evaluation steps miss, the model steps still come from the remote
    (project / "deploy.yaml").write_text(SPEC.replace("min_seconds: 0.01", "min_seconds: 0.02"))
    pr = build(project, tmp_path / "cache-b", tmp_path / "out-b", moto_server, "read-only", "--remote-cache-read-only")
    assert pr.returncode == 0, pr.stderr
    m = re.search(r"; (\d+)/(\d+) steps from cache, (\d+) from the remote cache\)", steps_line(pr.stdout))
    assert m is not None, pr.stdout
    hits, n, remote = map(int, m.groups())
    assert 0 < remote == hits < n
    env_pr = build(project, tmp_path / "cache-c", tmp_path / "out-c", moto_server, "read-only",
                   DEPLOYC_REMOTE_CACHE_READ_ONLY="1")
    assert env_pr.returncode == 0, env_pr.stderr
    assert listing(client, "read-only") == before
    writer = build(project, tmp_path / "cache-d", tmp_path / "out-d", moto_server, "read-only")
    assert writer.returncode == 0 and len(listing(client, "read-only")) > len(before)  # the test can fail


def test_concurrent_runners_writing_the_same_keys(project: Path, tmp_path: Path, moto_server: str) -> None:
    client = s3(moto_server)
    args = ["--remote-cache", f"s3://{BUCKET}/concurrent", "--remote-cache-endpoint", moto_server, "-q"]
    procs = [subprocess.Popen([sys.executable, "-m", "deployc", "build", "deploy.yaml", "--out",
                               str(tmp_path / f"out-{i}"), *args], cwd=project,
                              env=deployc_env(tmp_path / f"cache-{i}"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "warning" not in err
    for name in listing(client, "concurrent"):
        body = client.get_object(Bucket=BUCKET, Key=name)["Body"].read()
        if "/cas/" in name:
            assert hashlib.sha256(body).hexdigest() == name.rsplit("/", 1)[1]
    late = build(project, tmp_path / "cache-late", tmp_path / "out-late", moto_server, "concurrent")
    plan = json.loads((tmp_path / "out-late" / "plan.json").read_text())
    n = len(plan["steps"])
    assert f"{n}/{n} steps from cache, {n} from the remote cache" in steps_line(late.stdout), late.stderr


def test_unreachable_store_degrades_or_fails_when_required(project: Path, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{_free_port()}"
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    r = build(project, tmp_path / "cache", tmp_path / "out", closed, "down", **creds)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "building with the local cache only" in warnings[0], r.stderr
    assert (tmp_path / "out" / "report.json").is_file()
    required = build(project, tmp_path / "cache2", tmp_path / "out2", closed, "down", "--remote-cache-required",
                     **creds)
    assert required.returncode == 4, required.stderr
    assert "--remote-cache-required" in required.stderr and "Traceback" not in required.stderr
    assert not (tmp_path / "out2").exists()
    bad = run_deployc("build", "deploy.yaml", "--remote-cache", "http://nope", cwd=project, cache_dir=tmp_path / "c3")
    assert bad.returncode == 2 and "s3://BUCKET" in bad.stderr


def test_settings_come_from_flags_then_environment_then_config_file(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DEPLOYC_REMOTE_CACHE", "DEPLOYC_REMOTE_CACHE_ENDPOINT", "DEPLOYC_REMOTE_CACHE_READ_ONLY",
                "DEPLOYC_REMOTE_CACHE_REQUIRED", "DEPLOYC_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert not RemoteSettings.resolve().enabled
    (tmp_path / "deployc").mkdir()
    (tmp_path / "deployc" / "config.toml").write_text(
        '[remote_cache]\nurl = "s3://from-file/p"\nendpoint = "http://minio:9000"\nread_only = true\n')
    s = RemoteSettings.resolve()
    assert (s.url, s.endpoint, s.read_only, s.required) == ("s3://from-file/p", "http://minio:9000", True, False)
    assert s.location() == ("from-file", "p")
    monkeypatch.setenv("DEPLOYC_REMOTE_CACHE", "s3://from-env")
    monkeypatch.setenv("DEPLOYC_REMOTE_CACHE_REQUIRED", "1")
    s = RemoteSettings.resolve()
    assert (s.url, s.required, s.location()) == ("s3://from-env", True, ("from-env", ""))
    assert RemoteSettings.resolve(url="s3://from-flag/x/y/").location() == ("from-flag", "x/y")
    (tmp_path / "deployc" / "config.toml").write_text('[remote_cache]\nbucket = "x"\n')
    from deployc.errors import InputError

    with pytest.raises(InputError, match="no setting 'bucket'"):
        RemoteSettings.resolve()


def test_measuring_steps_are_keyed_by_the_cpu(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A figure measured on another CPU is never this machine's: only the steps that measure change key."""
    from deployc.api import validate
    from deployc.compiler import steps
    from deployc.compiler.plan import make_plan

    spec_path = project / "deploy.yaml"

    def keys() -> dict[str, str]:
        return dict(make_plan(validate(spec_path), spec_path, spec_path.read_text()).keys)

    here = keys()
    monkeypatch.setattr(steps, "cpu_fingerprint", lambda: "Other CPU, 96 CPUs, aarch64, asimd sve")
    there = keys()
    changed = {sid for sid in here if here[sid] != there[sid]}
    assert "evaluate:onnx-fp32" in changed and "source" not in changed and "reference" not in changed
