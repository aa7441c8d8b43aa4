"""examples/nlp: a Transformer topic classifier over int64 token ids and an attention mask."""
from __future__ import annotations

from pathlib import Path

import pytest
from example_support import built, check_example, served_like_the_original, trained


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained(tmp_path_factory, "nlp")


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> Path:
    return built(tmp_path_factory, "nlp", session_cache)


def test_nlp_builds_verified(build: Path, project: Path) -> None:
    report = check_example(build, project, "nlp")
    assert report["reference"]["accuracy"] >= 0.95
    for a in report["artifacts"]:
        assert a["evaluation"]["agreement"] >= 0.97, a


def test_nlp_serves_like_the_original(build: Path, project: Path, tmp_path: Path) -> None:
    assert served_like_the_original(build, project, tmp_path, "nlp", "classification") >= 0.97
