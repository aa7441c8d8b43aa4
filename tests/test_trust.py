"""The build's guarantees against hostile inputs: files outside the spec folder, special files, output folders
that are not builds, cache entries edited after the fact, OS errors, non-finite data, leftovers of killed builds.

Each test drives the real CLI (exit codes, stderr as a user sees them) or the API on a tiny ONNX classifier,
so no TensorFlow is loaded.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from aws_support import tiny_onnx as shared_tiny_onnx
from conftest import run_deployc

from deployc import api
from deployc.compiler.cache import LOCK_SUFFIX
from deployc.errors import InputError, SpecError

SPEC = """\
apiVersion: deployc/v1
name: trust
model: {path: MODEL, labels: LABELS}
data:
  eval: {path: data/eval.npz, x: x, y: y}
gates: {min_agreement: 0.9}
targets:
  local: {}
"""


def tiny_onnx(path: Path, external: str | None = None, scale: float = 1.0) -> None:
    """The shared 4-in, 3-class classifier; with `external`, its weights live in that file beside it."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    shared_tiny_onnx(path, scale=scale)
    if external:
        onnx.save(onnx.load(str(path)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=external, size_threshold=0)


def project(folder: Path, model: str = "model.onnx", labels: str | None = None, x: np.ndarray | None = None,
            external: str | None = None) -> Path:
    """A spec folder with the tiny model, eval data and (optionally) labels; returns deploy.yaml's path."""
    folder.mkdir(parents=True, exist_ok=True)
    if model.endswith(".onnx") and not (folder / model).exists():
        tiny_onnx(folder / model, external)
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(64, 4)).astype(np.float32) if x is None else x
    (folder / "data").mkdir(exist_ok=True)
    np.savez(folder / "data" / "eval.npz", x=xs, y=np.zeros(len(xs), dtype=np.int64))
    text = SPEC.replace("MODEL", model)
    text = text.replace(", labels: LABELS", f", labels: {labels}" if labels else "")
    (folder / "deploy.yaml").write_text(text)
    return folder / "deploy.yaml"


def refused(r: subprocess.CompletedProcess[str], *needles: str, code: int = 1) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def cli(folder: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_deployc(*args, cwd=folder, cache_dir=folder.parent / "cache", timeout=timeout)


# --- 1. Nothing read from outside the spec folder; no special files --------------------------------------------

def fake_savedmodel(folder: Path) -> Path:
    sm = folder / "sm"
    (sm / "variables").mkdir(parents=True)
    (sm / "saved_model.pb").write_bytes(b"\x08\x01")
    (sm / "variables" / "variables.index").write_bytes(b"idx")
    return sm


@pytest.mark.parametrize("link", ["file", "folder", "proc"])
def test_a_link_out_of_a_model_folder_is_refused_at_validate(tmp_path: Path, link: str) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text("s3cr3t")
    folder = tmp_path / "p"
    sm = fake_savedmodel(folder)
    (sm / "assets").mkdir()
    target = {"file": secret / "key.txt", "folder": secret, "proc": Path("/proc/self/environ")}[link]
    (sm / "assets" / "x").symlink_to(target)
    project(folder, model="sm")
    for command in ("validate", "plan", "build"):
        r = cli(folder, command, "deploy.yaml")
        refused(r, "deploy.yaml:3:15: model.path: sm/assets/x: a symbolic link to", "outside the folder of deploy.yaml")
    assert not (folder / "build").exists()
    assert "s3cr3t" not in "".join(p.read_text(errors="replace") for p in (tmp_path / "cache").rglob("*")
                                   if p.is_file()) if (tmp_path / "cache").exists() else True


def test_a_link_that_stays_inside_is_followed_and_copied_as_a_file(tmp_path: Path) -> None:
    from deployc.compiler.inputs import copy_tree, tree_digest

    folder = tmp_path / "p"
    sm = fake_savedmodel(folder)
    (folder / "vocab.txt").write_text("a\nb\n")
    (sm / "assets").mkdir()
    (sm / "assets" / "vocab.txt").symlink_to(folder / "vocab.txt")
    copy_tree(folder, sm, tmp_path / "copy")
    copied = tmp_path / "copy" / "assets" / "vocab.txt"
    assert copied.read_text() == "a\nb\n" and not copied.is_symlink()
    before = tree_digest(folder, sm)
    (folder / "vocab.txt").write_text("a\nc\n")  # the link's target is part of the folder's content
    assert tree_digest(folder, sm) != before


@pytest.mark.parametrize("where", ["model", "inside-folder", "data"])
def test_fifos_are_refused_without_hanging(tmp_path: Path, where: str) -> None:
    folder = tmp_path / "p"
    if where == "model":
        project(folder)
        (folder / "model.onnx").unlink()
        os.mkfifo(folder / "model.onnx")
        pos, what = "3:15: model.path", "'model.onnx' is a FIFO (named pipe)"
    elif where == "inside-folder":
        sm = fake_savedmodel(folder)
        os.mkfifo(sm / "variables" / "pipe")
        project(folder, model="sm")
        pos, what = "3:15: model.path", "sm/variables/pipe: is a FIFO (named pipe)"
    else:
        project(folder)
        (folder / "data" / "eval.npz").unlink()
        os.mkfifo(folder / "data" / "eval.npz")
        pos, what = "5:16: data.eval.path", "'data/eval.npz' is a FIFO (named pipe)"
    for command in ("validate", "plan", "build"):
        refused(cli(folder, command, "deploy.yaml", timeout=60), pos, what)


def test_a_fifo_as_the_spec_is_refused_without_hanging(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "deploy.yaml")
    for command in ("validate", "plan", "build"):
        refused(cli(tmp_path, command, "deploy.yaml", timeout=60), "deploy.yaml:1:1: is a FIFO (named pipe)")


def test_a_file_swapped_for_a_fifo_after_validation_fails_instead_of_hanging(tmp_path: Path) -> None:
    from deployc.compiler.inputs import read_bytes

    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InputError, match="is a FIFO"):
        read_bytes(tmp_path / "pipe")


# --- 2. --out replaces only a deployc build ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["foreign-manifest", "extra-file"])
def test_out_refuses_a_folder_that_is_not_a_build(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "p"
    project(folder)
    out = tmp_path / "out"
    if kind == "foreign-manifest":
        out.mkdir()
        (out / "manifest.json").write_text('{"name": "my web app", "icons": []}')
        (out / "index.html").write_text("<p>mine</p>")
    else:
        assert cli(folder, "build", "deploy.yaml", "-q", "--out", str(out)).returncode == 0
        (out / "notes.txt").write_text("my notes")
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = cli(folder, "build", "deploy.yaml", "-q", "--out", str(out))
    why = "no deployc manifest.json" if kind == "foreign-manifest" else "notes.txt is not listed in its manifest.json"
    refused(r, f"{out}: refusing to replace a folder that is not a deployc build ({why})")
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# --- 3. Every file a step reads is in its key; every refusing check runs on every build --------------------------

def test_changing_onnx_external_data_rebuilds(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    spec = project(folder, external="weights.bin")
    out = tmp_path / "out"
    first = api.build(spec, out, tmp_path / "cache")
    assert not any(first.cached.values())
    key = api.plan(spec, tmp_path / "cache").plan.keys["source"]
    tiny_onnx(tmp_path / "scaled" / "model.onnx", external="weights.bin", scale=-1.0)  # the same graph file
    (folder / "weights.bin").write_bytes((tmp_path / "scaled" / "weights.bin").read_bytes())
    check = api.check(spec, out, tmp_path / "cache")
    assert "local/model.onnx" in check.changed
    assert api.plan(spec, tmp_path / "cache").plan.keys["source"] != key
    api.build(spec, out, tmp_path / "cache")
    assert (out / "local" / "model.onnx").read_bytes() != first.files["local/model.onnx"]


def test_external_data_refusal_holds_with_a_warm_cache(tmp_path: Path) -> None:
    from deployc.compiler.inputs import copy_file

    folder = tmp_path / "p"
    spec = project(folder, external="weights.bin")
    api.build(spec, tmp_path / "out", tmp_path / "cache")
    outside = tmp_path / "elsewhere.bin"
    copy_file(folder / "weights.bin", outside)
    (folder / "weights.bin").unlink()
    (folder / "weights.bin").symlink_to(outside)  # same bytes, now outside: the warm cache must not hide it
    r = cli(folder, "build", "deploy.yaml", "-q", "--out", str(tmp_path / "out"))
    refused(r, "model.path: model.onnx: external data location 'weights.bin' leaves the model's folder")


def test_external_locations_match_onnx_own_reading(tmp_path: Path) -> None:
    """The wire-format reader finds what onnx finds: initializers and attribute tensors, inside subgraphs too."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import _get_all_tensors, convert_model_to_external_data, uses_external_data

    from deployc.compiler.onnx_refs import WireError, external_locations

    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(300, np.float32), "k"))
    branch = helper.make_graph([const], "then", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [300])])
    node = helper.make_node("If", ["cond"], ["c"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [300])],
                              [numpy_helper.from_array(np.zeros(300, np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    convert_model_to_external_data(model, all_tensors_to_one_file=False, size_threshold=0, convert_attribute=True)
    onnx.save(model, str(tmp_path / "m.onnx"))
    theirs = [dict((e.key, e.value) for e in t.external_data)["location"]
              for t in _get_all_tensors(onnx.load(str(tmp_path / "m.onnx"), load_external_data=False))
              if uses_external_data(t)]
    assert len(theirs) == 3
    assert sorted(external_locations((tmp_path / "m.onnx").read_bytes())) == sorted(set(theirs))
    for junk in (b"one", b"\x3a\xff\xff\xff\x0f", b""):
        with pytest.raises(WireError):
            external_locations(junk)


# --- 4. Cache entries are verified whole ---------------------------------------------------------------------------

def _entry(cache: Path, step_key: str) -> Path:
    return cache / "steps" / step_key[:2] / step_key


@pytest.mark.parametrize("tamper", ["result", "extra-file", "file"])
def test_an_edited_cache_entry_is_rebuilt_not_trusted(tmp_path: Path, tamper: str) -> None:
    folder = tmp_path / "p"
    spec = project(folder)
    cache, out = tmp_path / "cache", tmp_path / "out"
    first = api.build(spec, out, cache)
    agreement = first.report["artifacts"][0]["evaluation"]["agreement"]
    key = api.plan(spec, cache).plan.keys["evaluate:onnx-fp32"]
    entry = _entry(cache, key)
    doc = json.loads((entry / "_entry.json").read_text())
    if tamper == "result":
        doc["result"]["evaluation"]["agreement"] = 0.5 if agreement != 0.5 else 0.25
        (entry / "_entry.json").write_text(json.dumps(doc))
    elif tamper == "extra-file":
        (entry / "planted.txt").write_text("x")
    else:
        key = api.plan(spec, cache).plan.keys["source"]
        (_entry(cache, key) / "model.onnx").write_bytes(b"not onnx")
    second = api.build(spec, out, cache)
    assert list(second.cached.values()).count(False) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["artifacts"][0]["evaluation"]["agreement"] == agreement


# --- 5. OS errors: a message naming the path, exit 1, the previous build intact ----------------------------------

def test_non_utf8_labels_are_a_validate_error(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    project(folder, labels="labels.txt")
    (folder / "labels.txt").write_bytes(b"cat\ndog\n\xff\xfebird\n")
    refused(cli(folder, "validate", "deploy.yaml"),
            "deploy.yaml:3:35: model.labels: 'labels.txt': not UTF-8 text (line 3")


def test_label_count_must_match_the_classes(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    project(folder, labels="labels.txt")
    (folder / "labels.txt").write_text("\n".join(f"c{i}" for i in range(10240)) + "\n")
    r = cli(folder, "build", "deploy.yaml", "-q", "--out", str(tmp_path / "out"))
    # validate reads the class count from the ONNX graph's output shape, before the build starts
    refused(r, "deploy.yaml:3:35: model.labels: 'labels.txt' names 10240 classes, but the model's output 'probs' has 3")
    assert not (tmp_path / "out").exists()


def test_out_under_proc_and_cache_below_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    project(folder)
    refused(cli(folder, "build", "deploy.yaml", "-q", "--out", "/proc/deployc-out"),
            "/proc/deployc-out: refusing to write a build under /proc")
    (tmp_path / "afile").write_text("")
    r = run_deployc("build", "deploy.yaml", "-q", "--out", str(tmp_path / "out"), cwd=folder,
                    cache_dir=tmp_path / "afile" / "cache")
    refused(r, f"{tmp_path / 'afile' / 'cache'}: the step cache is not writable", "Not a directory")
    assert not (tmp_path / "out").exists()


@contextmanager
def mounted(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs with `options` at `where` (root with mount rights only; the test skips otherwise)."""
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not root'}); needed to test a full or "
                    "read-only file system")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_read_only_output_folder_and_cache(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    project(folder)
    with mounted(tmp_path / "ro", "size=4m") as ro:
        out = ro / "out"
        assert run_deployc("build", "deploy.yaml", "-q", "--out", str(out), cwd=folder,
                           cache_dir=ro / "cache").returncode == 0
        before = (out / "manifest.json").read_bytes()
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        (folder / "deploy.yaml").write_text((folder / "deploy.yaml").read_text().replace("0.9", "0.8"))
        r = run_deployc("build", "deploy.yaml", "-q", "--out", str(out), cwd=folder, cache_dir=tmp_path / "cache")
        refused(r, f"{out}: cannot write the build folder", "Read-only file system")
        r = run_deployc("build", "deploy.yaml", "-q", "--out", str(tmp_path / "out2"), cwd=folder,
                        cache_dir=ro / "cache")  # all steps cached: a read-only cache serves them
        assert r.returncode == 0, r.stderr
        tiny_onnx(folder / "model.onnx", scale=2.0)  # steps to run: the cache must be written
        r = run_deployc("build", "deploy.yaml", "-q", "--out", str(tmp_path / "out3"), cwd=folder,
                        cache_dir=ro / "cache")
        refused(r, f"{ro / 'cache'}: the step cache is not writable", "Read-only file system")
        assert (out / "manifest.json").read_bytes() == before


def test_a_full_disk_leaves_the_previous_build(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    project(folder)
    with mounted(tmp_path / "small", "size=256k") as small:
        out = small / "out"
        small_spec = folder / "deploy.yaml"
        r = run_deployc("build", str(small_spec), "-q", "--out", str(out), cwd=folder, cache_dir=tmp_path / "cache")
        assert r.returncode == 0, r.stderr
        before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        free = os.statvfs(small).f_bavail * os.statvfs(small).f_frsize
        (small / "filler").write_bytes(b"\0" * max(0, free - 8192))
        tiny_onnx(folder / "model.onnx", scale=2.0)
        r = run_deployc("build", str(small_spec), "-q", "--out", str(out), cwd=folder, cache_dir=tmp_path / "cache")
        refused(r, f"{out}: cannot write the build (the previous build is unchanged)", "No space left on device")
        assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
        assert [p.name for p in small.iterdir()] == ["out", "filler"] or sorted(
            p.name for p in small.iterdir()) == sorted(["out", "filler", ".out.lock"])
    with mounted(tmp_path / "tiny-cache", "size=16k") as tiny:
        r = run_deployc("build", str(small_spec), "-q", "--out", str(tmp_path / "out"), cwd=folder, cache_dir=tiny)
        refused(r, "No space left on device")


# --- 6. Data must be real and finite ------------------------------------------------------------------------------

@pytest.mark.parametrize("values,message", [
    (np.full((8, 4), np.nan, dtype=np.float32), "holds 32 NaN or infinite value(s) of 32; data must be finite"),
    (np.array([[np.inf, 0, 0, 0]] * 8, dtype=np.float64), "holds 8 NaN or infinite value(s) of 32"),
    (np.ones((8, 4), dtype=np.complex64), "holds complex numbers (complex64); data must be real numbers"),
    (np.array([["a"] * 4] * 8), "holds text (<U1); data must be real numbers"),
    (np.zeros((0, 4), dtype=np.float32), "has no rows"),
])
def test_non_finite_or_non_real_data_is_a_located_error(tmp_path: Path, values: np.ndarray, message: str) -> None:
    folder = tmp_path / "p"
    project(folder, x=values)
    r = cli(folder, "validate", "deploy.yaml")
    refused(r, f"deploy.yaml:5:34: data.eval.x: data/eval.npz: array 'x' {message}")


def test_an_artifact_with_non_finite_outputs_fails_its_gates_and_the_report_stays_json(tmp_path: Path) -> None:
    from deployc.ml.evaluate import compare

    ref = np.eye(3, dtype=np.float32)
    figures = compare(ref, np.full_like(ref, np.nan), np.arange(3), "classification")
    assert figures == {"rows": 3, "non_finite_outputs": 9, "max_abs_error": None, "relative_error": None,
                       "agreement": None, "accuracy": None}
    from deployc.compiler.gates import check
    from deployc.schema.spec import Gates

    (gate,) = check(Gates(min_agreement=0.5), {}, figures, "a")
    assert not gate.passed and gate.value is None
    from deployc.render import dump_json

    with pytest.raises(ValueError):
        dump_json({"x": float("nan")})


# --- 9. Staging folders of killed builds are removed, live ones kept -----------------------------------------------

def test_stale_staging_folders_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    spec = project(folder)
    tmp = tmp_path / "cache" / "tmp"
    tmp.mkdir(parents=True)
    legacy, dead, live, fresh = (tmp / f"step-{n}" for n in ("legacy", "dead", "live", "fresh"))
    for d in (legacy, dead, live, fresh):
        d.mkdir()
        (d / "model.onnx").write_bytes(b"partial")
    old = time.time() - 7200
    os.utime(legacy, (old, old))
    for d in (dead, live):
        Path(str(d) + LOCK_SUFFIX).write_text("")
        os.utime(str(d) + LOCK_SUFFIX, (old, old))
    held = os.open(str(live) + LOCK_SUFFIX, os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # a build still running holds its lock
    try:
        api.build(spec, tmp_path / "out", tmp_path / "cache")
    finally:
        os.close(held)
    assert sorted(p.name for p in tmp.iterdir()) == ["step-fresh", "step-live", f"step-live{LOCK_SUFFIX}"]


def test_a_killed_step_leaves_its_staging_folder_to_the_next_build(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    project(folder)
    r = run_deployc("build", "deploy.yaml", "-q", "--out", str(tmp_path / "out"), cwd=folder,
                    cache_dir=tmp_path / "cache", DEPLOYC_CRASH_AT="cache-staged")
    assert r.returncode == -9
    tmp = tmp_path / "cache" / "tmp"
    assert len(list(tmp.glob(f"step-*{LOCK_SUFFIX}"))) == 1
    lock = next(tmp.glob(f"step-*{LOCK_SUFFIX}"))
    os.utime(lock, (time.time() - 120, time.time() - 120))
    r = run_deployc("build", "deploy.yaml", "-q", "--out", str(tmp_path / "out"), cwd=folder,
                    cache_dir=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert list(tmp.iterdir()) == []


def test_validate_reports_spec_errors_before_reading_data(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    project(folder, x=np.full((4, 4), np.nan, dtype=np.float32))
    with pytest.raises(SpecError) as err:
        api.validate(folder / "deploy.yaml")
    assert [p.path for p in err.value.problems] == ["data.eval.x"]


def test_two_builds_storing_one_step_both_report_the_stored_result(tmp_path: Path) -> None:
    """Two builds (processes, CI jobs on a shared cache) run one step at once; a measured figure differs between
    their runs. The second to store keeps the first one's entry and must report it, not its own figure, so a
    later build from cache gives the same output as both."""
    from deployc.compiler.cache import Cache

    first, second = Cache(tmp_path / "c"), Cache(tmp_path / "c")
    staged = [first.staging(), second.staging()]
    for folder, latency in zip(staged, (0.41, 0.47), strict=True):
        (folder / "model.onnx").write_bytes(b"same bytes")
        folder.joinpath("figure").write_text(str(latency))
    d1, r1 = first.put("ab" * 32, staged[0], {"latency_p50_ms": 0.41})
    d2, r2 = second.put("ab" * 32, staged[1], {"latency_p50_ms": 0.47})
    assert (d2, r2) == (d1, r1) == (d1, {"latency_p50_ms": 0.41})
    assert (d1 / "figure").read_text() == "0.41" and not staged[1].exists()
    assert Cache(tmp_path / "c").get("ab" * 32) == (d1, {"latency_p50_ms": 0.41})


def test_a_corrupt_entry_in_the_way_is_replaced_when_storing(tmp_path: Path) -> None:
    from deployc.compiler.cache import Cache

    cache = Cache(tmp_path / "c")
    first = cache.staging()
    (first / "f").write_text("one")
    d, _ = cache.put("cd" * 32, first, {"n": 1})
    (d / "f").write_text("edited")  # no longer matches its hash
    again = cache.staging()
    (again / "f").write_text("two")
    assert cache.put("cd" * 32, again, {"n": 2}) == (d, {"n": 2})
    assert (d / "f").read_text() == "two"
