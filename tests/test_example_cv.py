"""examples/cv: a MobileNet-style CNN (BatchNorm, depthwise-separable blocks, ReLU6, a residual Add),
quantized by auto (every candidate on both runtimes, the attribution gate among the gates)."""
from __future__ import annotations

from pathlib import Path

import pytest
from example_support import built, check_example, served_like_the_original, trained


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained(tmp_path_factory, "cv")


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> Path:
    return built(tmp_path_factory, "cv", session_cache)


def test_cv_builds_verified(build: Path, project: Path) -> None:
    report = check_example(build, project, "cv")
    assert report["reference"]["accuracy"] >= 0.95  # inference mode: BatchNorm statistics settled
    for a in report["artifacts"]:
        assert a["evaluation"]["agreement"] >= 0.97, a


def test_cv_serves_like_the_original(build: Path, project: Path, tmp_path: Path) -> None:
    assert served_like_the_original(build, project, tmp_path, "cv", "classification") >= 0.97
