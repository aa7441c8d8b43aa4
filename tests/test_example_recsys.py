"""examples/recsys: a click model of three inputs (int64 user and item ids through embeddings, float
features) with a sigmoid output, judged by ROC AUC; int8 ships at under a third of the size."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from example_support import built, check_example, served_like_the_original, trained


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained(tmp_path_factory, "recsys")


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> Path:
    return built(tmp_path_factory, "recsys", session_cache)


def test_recsys_builds_verified_by_auc(build: Path, project: Path) -> None:
    report = check_example(build, project, "recsys")
    assert report["reference"]["auc"] >= 0.78
    int8 = next(a["evaluation"] for a in report["artifacts"] if a["artifact"].startswith("quantize"))
    assert report["reference"]["auc"] - int8["auc"] <= 0.005
    assert int8["size_ratio"] <= 0.35  # embeddings quantized (Gather); 0.29 measured
    gates = {g["gate"] for g in report["gates"]}
    assert "max_auc_drop" in gates


def test_recsys_serves_like_the_original(build: Path, project: Path, tmp_path: Path) -> None:
    """int8-dynamic moves the click probabilities of rows near the 0.5 threshold across it: 95.3% agreement over
    data.eval on an AMD EPYC (the example gates ROC AUC, which int8 keeps); 64 served rows sample that."""
    report = json.loads((build / "report.json").read_text())
    shipped = next(a["evaluation"] for a in report["artifacts"] if a["shipped"] and a["artifact"] != "tflite")
    assert served_like_the_original(build, project, tmp_path, "recsys", "binary") >= shipped["agreement"] - 0.05


def test_serving_images_install_what_the_bundle_serves(build: Path) -> None:
    """The recsys bundle serves kernel-shap explanations, so its image installs deployc[serve,explain] (the
    digits golden build, integrated gradients, holds deployc[serve] only); neither installs TensorFlow."""
    from deployc import __version__

    text = (build / "sagemaker" / "Dockerfile").read_text()
    assert f'ARG DEPLOYC_REQUIREMENT="deployc[serve,explain]=={__version__}"' in text
