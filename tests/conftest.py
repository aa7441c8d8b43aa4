"""Shared fixtures: the digits example trained once per session, one step cache for the session, and a
`deployc` subprocess runner."""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits"


AUDIT_LOG = Path(tempfile.gettempdir()) / f"deployc-test-audit-{os.getpid()}.jsonl"
os.environ.setdefault("DEPLOYC_AUDIT_LOG", str(AUDIT_LOG))  # in-process deploys too


def deployc_env(cache_dir: Path | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.pop("DEPLOYC_DEBUG", None)
    env.setdefault("DEPLOYC_AUDIT_LOG", str(AUDIT_LOG))  # deploy tests never write the user's own audit log
    if cache_dir is not None:
        env["DEPLOYC_CACHE_DIR"] = str(cache_dir)
    env.update(extra)
    return env


def run_deployc(*args: str, cwd: Path | None = None, cache_dir: Path | None = None, timeout: float = 600,
                **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m deployc ARGS` in a real process (exit codes and stderr as a user sees them)."""
    return subprocess.run([sys.executable, "-m", "deployc", *args], cwd=cwd, env=deployc_env(cache_dir, **env),
                          capture_output=True, text=True, timeout=timeout)


def session_folder(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None] | None = None) -> Path:
    """A folder made once for the whole run: with pytest-xdist, the workers share it (the first one makes it
    under a lock, the others wait for it), so a session fixture is not paid once per worker."""
    base = factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not folder.exists():
            staged = root / f"{name}.partial"
            shutil.rmtree(staged, ignore_errors=True)
            staged.mkdir()
            if make is not None:
                make(staged)
            staged.rename(folder)
    return folder


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's model and data, trained once (few epochs) in a session folder; never modify it."""
    def train(out: Path) -> None:
        subprocess.run([sys.executable, str(EXAMPLE / "train.py"), str(out)], check=True, env=deployc_env(),
                       capture_output=True, timeout=600)

    return session_folder(tmp_path_factory, "digits-trained", train)


@pytest.fixture
def digits(trained_digits: Path, tmp_path: Path) -> Path:
    """A private copy of the trained example folder with the example's deploy.yaml, for one test."""
    d = tmp_path / "digits"
    shutil.copytree(trained_digits, d)
    shutil.copyfile(EXAMPLE / "deploy.yaml", d / "deploy.yaml")
    return d


def example_project(trained_digits: Path, folder: Path, example: str) -> Path:
    """The trained digits model and data with examples/<example>/deploy.yaml, timing briefly (0.1 s an
    artifact), copied into `folder`."""
    shutil.copytree(trained_digits, folder)
    text = (ROOT / "examples" / example / "deploy.yaml").read_text()
    (folder / "deploy.yaml").write_text(text.replace("gates:", "measure: {min_seconds: 0.1}\ngates:"))
    return folder


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One step cache for every build of the session: step keys hash content (model, data, parameters,
    library versions), not paths, so each distinct model/pass combination is trained or converted once.

    Builds that only need a build use it. Tests that assert a step ran, build cold on purpose, run several
    builds of one step at once, or edit entries keep a cache of their own (or a copy of this one)."""
    return session_folder(tmp_path_factory, "deployc-cache")
