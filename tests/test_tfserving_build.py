"""`deployc build` of examples/tfserving on the trained digits model: the versioned SavedModel loads with
TensorFlow and computes what the Keras model does; verification figures reach the report and the gates."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import example_project, run_deployc

pytestmark = pytest.mark.slow


@pytest.fixture
def project(trained_digits: Path, tmp_path: Path) -> Path:
    return example_project(trained_digits, tmp_path / "tfserving", "tfserving")


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_example_builds_a_verified_versioned_savedmodel(project: Path, session_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run_deployc("build", "deploy.yaml", "--out", str(out), "-q", cwd=project, cache_dir=session_cache)
    assert r.returncode == 0, r.stderr
    files = tree(out / "tfserving")
    version = "digits/1000000"
    assert {"models.config", "batching_parameters.txt", f"{version}/saved_model.pb",
            f"{version}/variables/variables.index"} <= set(files)
    assert all(k.startswith(f"{version}/") for k in files if k not in ("models.config", "batching_parameters.txt"))
    assert b"versions: 1000000" in files["models.config"]

    from deployc.ml.convert import load_keras, quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    fn = tf.saved_model.load(str(out / "tfserving" / version)).signatures["serving_default"]
    assert list(fn.structured_input_signature[1]) == ["pixels"] and list(fn.structured_outputs) == ["output"]
    x = np.load(project / "data" / "eval.npz")["x"][:16]
    keras_out = np.asarray(load_keras(project / "model.keras").predict(x, verbose=0))
    np.testing.assert_allclose(fn(pixels=tf.constant(x))["output"].numpy(), keras_out, atol=1e-6)

    report = json.loads((out / "report.json").read_text())
    art = {a["artifact"]: a for a in report["artifacts"]}["tfserving"]
    assert art["shipped"] and art["step"] == "tfserving:verify"
    ev = art["evaluation"]
    assert ev["agreement"] == 1.0 and ev["max_abs_error"] < 1e-5 and ev["rows"] == 360
    assert ev["size_bytes"] == sum(len(v) for k, v in files.items() if k.startswith(version))
    assert {(g["artifact"], g["gate"]) for g in report["gates"]} >= {("tfserving", "min_agreement"),
                                                                    ("tfserving", "max_abs_error")}
    assert "| tfserving **(shipped)** |" in (out / "report.md").read_text()

    again = run_deployc("build", "deploy.yaml", "--out", str(out), cwd=project, cache_dir=session_cache)
    assert again.returncode == 0 and "6/6 steps from cache" in again.stdout
    assert tree(out / "tfserving") == files  # the export is cached, so a warm rebuild gives the same bytes


def test_a_failing_gate_on_the_savedmodel_stops_the_build(project: Path, session_cache: Path,
                                                          tmp_path: Path) -> None:
    text = (project / "deploy.yaml").read_text().replace("max_abs_error: 0.0001", "max_latency_p99_ms: 0.000001")
    (project / "deploy.yaml").write_text(text)
    r = run_deployc("build", "deploy.yaml", "--out", str(tmp_path / "out"), "-q", cwd=project,
                    cache_dir=session_cache)
    assert r.returncode == 3, r.stderr
    rows = [line.split() for line in r.stderr.splitlines()]
    results = {row[1]: row[-1] for row in rows if row[:1] == ["tfserving"]}
    assert results == {"max_accuracy_drop": "pass", "min_agreement": "pass", "max_latency_p99_ms": "FAIL"}
    assert not (tmp_path / "out").exists()
