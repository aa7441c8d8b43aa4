"""Golden builds: every file `deployc build` writes for a whole spec, compared with tests/golden/builds/<case>/expected
after golden_support.normalize_build (DEPLOYC_UPDATE_GOLDEN=1 rewrites them; review the diff).

A case folder holding a deploy.yaml is self-contained: the spec and the committed model and data it names, so
its build is byte-reproducible but for timings. `digits-example` holds only `expected/`: it is
examples/digits/deploy.yaml (local, tflite, sagemaker and monitoring) built on the digits model trained for the
session, whose converted models are not byte-identical across machines.
"""
from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

import pytest
from conftest import EXAMPLE, run_deployc
from golden_support import Files, assert_golden, normalize_build, read_tree

GOLDEN = Path(__file__).parent / "golden" / "builds"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "deploy.yaml").is_file())
EXAMPLE_CASE = "digits-example"


def build(project: Path, out: Path, cache: Path) -> Files:
    r = run_deployc("build", "deploy.yaml", "--out", str(out), "-q", cwd=project, cache_dir=cache)
    assert r.returncode == 0, r.stderr
    return read_tree(out)


@pytest.mark.parametrize("case", CASES)
def test_build_matches_golden(case: str, session_cache: Path, tmp_path: Path) -> None:
    project, out = tmp_path / case, tmp_path / "out"
    shutil.copytree(GOLDEN / case, project, ignore=shutil.ignore_patterns("expected"))
    files = build(project, out, session_cache)
    assert_golden(files, GOLDEN / case / "expected",
                  normalize=partial(normalize_build, reproducible=True, paths={project: "<project>", out: "<out>"},
                                    inputs={"deploy.yaml": (project / "deploy.yaml").read_bytes()}))


@pytest.mark.slow
def test_example_build_matches_golden(trained_digits: Path, session_cache: Path, tmp_path: Path) -> None:
    project, out = tmp_path / "digits", tmp_path / "out"
    shutil.copytree(trained_digits, project)
    text = (EXAMPLE / "deploy.yaml").read_text()  # measured briefly, as the other builds of the examples are
    (project / "deploy.yaml").write_text(text.replace("\ntargets:", "\nmeasure: {min_seconds: 0.1}\ntargets:", 1))
    files = build(project, out, session_cache)
    assert_golden(files, GOLDEN / EXAMPLE_CASE / "expected",
                  normalize=partial(normalize_build, reproducible=False, paths={project: "<project>", out: "<out>"},
                                    inputs={"deploy.yaml": (project / "deploy.yaml").read_bytes()}))
