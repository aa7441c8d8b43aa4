"""End to end: `deployc build` on the digits example (Keras -> ONNX -> local bundle), cache and atomicity."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_deployc

SPEC = """\
apiVersion: deployc/v1
name: digits
version: 1.0.0
model:
  path: model.keras
  labels: labels.txt
data:
  eval: {path: data/eval.npz, x: x, y: y}
gates:
  max_accuracy_drop: 0.01
  min_agreement: 0.99
  max_size_mb: GATE_SIZE
measure: {min_seconds: 0.1}
targets:
  local: {port: 8123}
"""


@pytest.fixture
def project(digits: Path) -> Path:
    (digits / "deploy.yaml").write_text(SPEC.replace("GATE_SIZE", "5"))
    return digits


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_writes_verified_bundle_and_rebuild_is_cached_and_identical(project: Path, session_cache: Path,
                                                                          tmp_path: Path) -> None:
    cache, out = session_cache, tmp_path / "out"
    first = run_deployc("build", "deploy.yaml", "--out", str(out), cwd=project, cache_dir=cache)
    assert first.returncode == 0, first.stderr
    files = tree(out)
    charts = {f for f in files if f.startswith("charts/")}
    assert set(files) - charts == {"manifest.json", "report.json", "report.md", "report.html", "plan.json",
                                   "local/model.onnx", "local/serving.json", "local/labels.txt"}
    assert {"charts/pareto.svg", "charts/latency.svg", "charts/confusion.svg"} <= charts
    manifest = json.loads(files["manifest.json"])
    for rel, meta in manifest["files"].items():
        assert hashlib.sha256(files[rel]).hexdigest() == meta["sha256"] and len(files[rel]) == meta["size"]
    assert manifest["spec_sha256"] == hashlib.sha256((project / "deploy.yaml").read_bytes()).hexdigest()
    assert manifest["versions"]["deployc"] and manifest["versions"]["onnxruntime"] != "absent"

    serving = json.loads(files["local/serving.json"])
    assert serving["model"]["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    assert serving["model"]["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    assert serving["model"]["sha256"] == hashlib.sha256(files["local/model.onnx"]).hexdigest()
    assert serving["server"]["port"] == 8123 and serving["labels"] == "labels.txt"
    assert files["local/labels.txt"].decode().splitlines()[3] == "digit-3"

    report = json.loads(files["report.json"])
    (art,) = report["artifacts"]
    ev = art["evaluation"]
    assert art["artifact"] == "onnx-fp32" and art["shipped"] is True
    assert ev["agreement"] == 1.0 and ev["max_abs_error"] < 1e-4 and ev["rows"] == 360
    assert ev["accuracy"] == report["reference"]["accuracy"] > 0.9
    assert ev["latency_p50_ms"] > 0 and ev["size_bytes"] == len(files["local/model.onnx"])
    assert [g["gate"] for g in report["gates"]] == ["max_accuracy_drop", "min_agreement", "max_size_mb"]
    assert all(g["passed"] for g in report["gates"])
    md = files["report.md"].decode()
    assert "| onnx-fp32 **(shipped)** | " in md and "| onnx-fp32 | min_agreement | 0.99 | 1 | pass |" in md

    # the ONNX model really computes what the Keras model does
    import onnxruntime as ort

    x = np.load(project / "data" / "eval.npz")["x"][:5]
    sess = ort.InferenceSession(str(out / "local" / "model.onnx"))
    probs = sess.run(None, {"pixels": x})[0]
    assert probs.shape == (5, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)

    second = run_deployc("build", "deploy.yaml", "--out", str(out), cwd=project, cache_dir=cache)
    assert second.returncode == 0, second.stderr
    assert "5/5 steps from cache" in second.stdout
    assert tree(out) == files
    plan = json.loads(run_deployc("plan", "deploy.yaml", "--format", "json", cwd=project, cache_dir=cache).stdout)
    assert all(s["cached"] for s in plan["steps"])


def test_cold_rebuild_gives_identical_artifacts(project: Path, tmp_path: Path) -> None:
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        r = run_deployc("build", "deploy.yaml", "--out", str(out), "-q", cwd=project, cache_dir=tmp_path / f"c{i}")
        assert r.returncode == 0, r.stderr
        outs.append(tree(out))
    for rel in ("local/model.onnx", "local/serving.json", "local/labels.txt", "plan.json"):
        assert outs[0][rel] == outs[1][rel], rel


def test_failed_gate_exits_3_and_keeps_previous_output(project: Path, session_cache: Path, tmp_path: Path) -> None:
    cache, out = session_cache, tmp_path / "out"
    assert run_deployc("build", "deploy.yaml", "--out", str(out), "-q", cwd=project, cache_dir=cache).returncode == 0
    before = tree(out)
    (project / "deploy.yaml").write_text(SPEC.replace("GATE_SIZE", "0.001"))
    r = run_deployc("build", "deploy.yaml", "--out", str(out), "-q", cwd=project, cache_dir=cache)
    assert r.returncode == 3, r.stderr
    assert "1 verification gate(s) failed" in r.stderr and "Traceback" not in r.stderr
    assert "onnx-fp32  max_size_mb        0.001" in r.stderr and "FAIL" in r.stderr
    assert tree(out) == before
    assert not list(tmp_path.glob(".out.tmp-*")) and not list(tmp_path.glob(".out.old-*"))


def test_invalid_spec_writes_nothing(project: Path, tmp_path: Path) -> None:
    (project / "deploy.yaml").write_text(SPEC.replace("GATE_SIZE", "5").replace("port: 8123", "port: http"))
    out = tmp_path / "out"
    r = run_deployc("build", "deploy.yaml", "--out", str(out), cwd=project, cache_dir=tmp_path / "c")
    assert r.returncode == 1
    assert r.stderr == "deploy.yaml:15:11: targets.local.port: Input should be a valid integer (got 'http')\n"
    assert not out.exists() and not (tmp_path / "c").exists()


def test_corrupt_cache_entry_is_rebuilt(project: Path, session_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run_deployc("build", "deploy.yaml", "--out", str(out), "-q", cwd=project, cache_dir=session_cache)
    assert r.returncode == 0, r.stderr
    good = tree(out)
    # a private copy holding every step, edited below (steps/ only: the other test worker may be staging in tmp/)
    cache = tmp_path / "cache"
    shutil.copytree(session_cache / "steps", cache / "steps")
    plan = json.loads(run_deployc("plan", "deploy.yaml", "--format", "json", cwd=project, cache_dir=cache).stdout)
    key = next(s["key"] for s in plan["steps"] if s["id"] == "convert")
    (cache / "steps" / key[:2] / key / "model.onnx").write_bytes(b"garbage")
    r = run_deployc("build", "deploy.yaml", "--out", str(out), cwd=project, cache_dir=cache)
    assert r.returncode == 0, r.stderr
    assert "4/5 steps from cache" in r.stdout
    assert tree(out) == good


def test_refuses_to_replace_a_folder_that_is_not_a_build(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    r = run_deployc("build", "deploy.yaml", "--out", str(out), "-q", cwd=project, cache_dir=tmp_path / "c")
    assert r.returncode == 1 and "not a deployc build" in r.stderr
    assert (out / "thesis.tex").read_text() == "do not delete"


def _with_manifest(files: dict[str, bytes]) -> dict[str, bytes]:
    from deployc.manifest import make_manifest
    from deployc.render import dump_json

    manifest = make_manifest(files, name="t", version="1", spec_sha256="0" * 64, versions={})
    return {**files, "manifest.json": dump_json(manifest)}


def test_interrupted_swap_is_recovered(tmp_path: Path) -> None:
    from deployc.compiler.write import recover, write_output

    out = tmp_path / "out"
    write_output(out, _with_manifest({"a.txt": b"old"}))
    out.rename(tmp_path / ".out.old-abc")  # as if killed between the two renames
    (tmp_path / ".out.tmp-def").mkdir()
    recover(out)
    assert (out / "a.txt").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    write_output(out, _with_manifest({"b.txt": b"new"}))
    assert sorted(p.name for p in out.iterdir()) == ["b.txt", "manifest.json"]  # stale files are gone


def test_example_spec_is_valid(digits: Path) -> None:
    r = run_deployc("validate", "deploy.yaml", cwd=digits)
    assert r.returncode == 0, r.stderr
