"""The golden-file helper itself: what a mismatch reports, what the update flag rewrites, what normalization keeps."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from golden_support import UPDATE_ENV, GoldenUpdated, assert_golden, assert_golden_file, normalize_build


@pytest.fixture(autouse=True)
def not_updating(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UPDATE_ENV, raising=False)


def golden(tmp_path: Path, files: dict[str, bytes]) -> Path:
    d = tmp_path / "expected"
    for rel, data in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    return d


def test_equal_files_pass_and_a_folder_is_read_like_a_dict(tmp_path: Path) -> None:
    files = {"a.txt": b"one\n", "sub/b.bin": b"\0\1"}
    d = golden(tmp_path, files)
    assert_golden(files, d)
    assert_golden(d, d)


def test_a_mismatch_names_every_file_with_a_unified_diff(tmp_path: Path) -> None:
    d = golden(tmp_path, {"same.txt": b"x\n", "changed.txt": b"a\nb\nc\n", "gone.txt": b"g\n", "m.bin": b"\0a"})
    with pytest.raises(AssertionError) as err:
        assert_golden({"same.txt": b"x\n", "changed.txt": b"a\nB\nc\n", "new.txt": b"n\n", "m.bin": b"\0b"}, d)
    text = str(err.value)
    assert "missing: gone.txt" in text and "extra: new.txt" in text and UPDATE_ENV in text
    assert "--- golden/changed.txt\n+++ emitted/changed.txt\n" in text and "\n-b\n+B\n" in text
    assert "differs: m.bin (binary; golden 2 bytes" in text and "same.txt" not in text


def test_no_golden_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="no golden files"):
        assert_golden({"a.txt": b"a"}, tmp_path / "nothing")


def test_the_update_flag_rewrites_only_what_changed_and_says_so(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    d = golden(tmp_path, {"keep.txt": b"k\n", "edit.txt": b"old\n", "stale/old.txt": b"s\n"})
    monkeypatch.setenv(UPDATE_ENV, "1")
    with pytest.warns(GoldenUpdated) as record:
        assert_golden({"keep.txt": b"k\n", "edit.txt": b"new\n", "add/new.txt": b"n\n"}, d)
    (message,) = [str(w.message) for w in record]
    assert "wrote add/new.txt, edit.txt" in message and "removed stale/old.txt" in message
    assert "keep.txt" not in message
    assert sorted(p.relative_to(d).as_posix() for p in d.rglob("*")) == ["add", "add/new.txt", "edit.txt",
                                                                         "keep.txt"]
    monkeypatch.delenv(UPDATE_ENV)
    assert_golden({"keep.txt": b"k\n", "edit.txt": b"new\n", "add/new.txt": b"n\n"}, d)


def test_one_pinned_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pinned = tmp_path / "case.err"
    with pytest.raises(AssertionError, match="no golden file"):
        assert_golden_file("x\n", pinned)
    monkeypatch.setenv(UPDATE_ENV, "1")
    with pytest.warns(GoldenUpdated, match="case.err: wrote it"):
        assert_golden_file("x\n", pinned)
    monkeypatch.delenv(UPDATE_ENV)
    assert_golden_file(b"x\n", pinned)
    with pytest.raises(AssertionError, match=r"(?s)-x\n\+y"):
        assert_golden_file("y\n", pinned)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tarball(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def _build(model: bytes, p50: float) -> dict[str, bytes]:
    """A small stand-in for a build: a model, a config naming its hash, a tarball, a report, a plan, a manifest."""
    key = "ab" * 32
    serving = json.dumps({"model": {"sha256": _sha(model)}, "port": 8080}).encode()
    tar = _tarball({"model.onnx": model, "serving.json": serving})
    files = {
        "local/model.onnx": model,
        "local/serving.json": serving,
        "local/labels.txt": b"a\nb\n",
        "sagemaker/model.tar.gz": tar,
        "sagemaker/plan.json": json.dumps({"key": f"m/{_sha(tar)}/model.tar.gz", "name": f"d-{_sha(tar)[:12]}",
                                           "labels": _sha(b"a\nb\n")}).encode(),
        "report.json": json.dumps({"evaluation": {"latency_p50_ms": p50, "accuracy": 0.75, "rows": 8}}).encode(),
        "report.md": f"| artifact | accuracy | p50 ms |\n|---|---|---|\n| m | 0.7500 | {p50:.3f} |\n"
                     f"key `{key[:12]}`\n".encode(),
        "plan.json": json.dumps({"steps": [{"id": "convert", "key": key}]}).encode(),
    }
    manifest = {"files": {rel: {"sha256": _sha(d), "size": len(d)} for rel, d in files.items()},
                "versions": {"deployc": "0.1.0", "onnx": "1.17.0"}}
    return {**files, "manifest.json": json.dumps(manifest).encode()}


@pytest.mark.parametrize("reproducible", [True, False])
def test_normalization_replaces_what_varies_and_keeps_the_rest(reproducible: bool) -> None:
    a = normalize_build(_build(b"model-a", 0.123), reproducible=reproducible)
    b = normalize_build(_build(b"model-b" if not reproducible else b"model-a", 0.456), reproducible=reproducible)
    assert a == b  # another machine: other timings (and, not reproducible, other converted bytes)
    assert a["local/labels.txt"] == b"a\nb\n"
    manifest = json.loads(a["manifest.json"])
    assert manifest["versions"] == {"deployc": "0.1.0", "onnx": "<version>"}
    assert manifest["files"]["local/labels.txt"] == {"sha256": _sha(b"a\nb\n"), "size": 4}  # compared exactly
    assert manifest["files"]["report.json"] == {"sha256": "<hash>", "size": "<size>"}
    assert json.loads(a["report.json"])["evaluation"]["latency_p50_ms"] == "<timing>"
    assert "| m | " + ("0.7500" if reproducible else "<measured>") + " | <timing> |" in a["report.md"].decode()
    assert "`<key:convert>`" in a["report.md"].decode() and "<key:convert>" in a["plan.json"].decode()
    plan = json.loads(a["sagemaker/plan.json"])
    assert plan["labels"] == _sha(b"a\nb\n")  # the hash of an exactly compared file stays
    listing = a["sagemaker/model.tar.gz"].decode()
    assert "== model.onnx" in listing and "== serving.json" in listing
    if reproducible:
        assert a["local/model.onnx"] == b"model-a" and _sha(b"model-a") in a["local/serving.json"].decode()
        assert manifest["files"]["local/model.onnx"]["sha256"] == _sha(b"model-a")
        assert plan["name"] == f"d-{_sha(_build(b'model-a', 0)['sagemaker/model.tar.gz'])[:12]}"
    else:
        assert b"not byte-identical" in a["local/model.onnx"] and b"model-a" not in a["local/serving.json"]
        assert plan == {"key": "m/<hash>/model.tar.gz", "name": "d-<hash>", "labels": _sha(b"a\nb\n")}


def test_a_step_key_of_digits_only_is_replaced_but_other_numbers_stay() -> None:
    key = "777081329687" + "0" * 52  # no hex letter among its first 12 characters
    files = {"plan.json": json.dumps({"steps": [{"id": "evaluate:x", "key": key}]}).encode(),
             "report.md": f"| `evaluate:x` | `{key[:12]}` | 123456789012345 |\n".encode()}
    text = normalize_build(files, reproducible=True)["report.md"].decode()
    assert text == "| `evaluate:x` | `<key:evaluate:x>` | 123456789012345 |\n"


def test_no_golden_file_is_ignored_by_git() -> None:
    """A golden file that .gitignore hides (a folder named build/, a *.onnx rule) would never be committed."""
    import shutil
    import subprocess

    from golden_support import ROOT

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = [p.relative_to(ROOT).as_posix() for p in (ROOT / "tests" / "golden").rglob("*") if p.is_file()]
    r = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, input="\n".join(paths),
                       capture_output=True, text=True)
    assert r.returncode in (0, 1), r.stderr
    assert r.stdout == "", f"ignored by git: {r.stdout}"
