"""Crash safety: a build SIGKILLed at any point leaves the previous output intact and the cache consistent;
two builds of one output folder at once do not corrupt each other."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import deployc_env, run_deployc
from test_build import SPEC, tree

POINTS = ["after-step:reference", "cache-staged", "after-step:convert", "write-staged", "write-swapping"]


@pytest.fixture
def built(digits: Path, session_cache: Path, tmp_path: Path) -> tuple[Path, Path, Path, dict[str, bytes]]:
    """A build of SPEC in the session's step cache: its steps are cached, the tests below change the output."""
    (digits / "deploy.yaml").write_text(SPEC.replace("GATE_SIZE", "5"))
    cache, out = session_cache, tmp_path / "out"
    assert run_deployc("build", "deploy.yaml", "--out", str(out), "-q", cwd=digits, cache_dir=cache).returncode == 0
    return digits, cache, out, tree(out)


def test_sigkill_at_each_point_keeps_output_and_cache_sound(built: tuple[Path, Path, Path, dict[str, bytes]],
                                                            tmp_path: Path) -> None:
    project, _, out, before = built
    # a changed spec (other port) so the new build differs from the old one in every run below
    (project / "deploy.yaml").write_text(SPEC.replace("GATE_SIZE", "5").replace("8123", "8124"))
    cache = tmp_path / "cold-cache"  # a cold cache, so the crash points inside steps are reached too
    for point in POINTS:
        r = run_deployc("build", "deploy.yaml", "--out", str(out), "-q", cwd=project, cache_dir=cache,
                        DEPLOYC_CRASH_AT=point)
        assert r.returncode == -signal.SIGKILL, (point, r.returncode, r.stderr[-500:])
        # what a reader sees right after the crash: the old build, or no folder only mid-swap
        if point == "write-swapping":
            assert not out.exists()
        else:
            assert tree(out) == before, point
        # every cache entry that exists verifies; nothing half-written is visible
        from deployc.compiler.cache import ENTRY, Cache

        c = Cache(cache)
        for entry in (cache / "steps").glob("*/*") if (cache / "steps").exists() else []:
            assert (entry / ENTRY).is_file() and c.get(entry.name) is not None, (point, entry)
    r = run_deployc("build", "deploy.yaml", "--out", str(out), "-q", cwd=project, cache_dir=cache)
    assert r.returncode == 0, r.stderr
    after = tree(out)
    assert b'"port": 8124' in after["local/serving.json"]
    assert not list(out.parent.glob(".out.tmp-*")) and not list(out.parent.glob(".out.old-*"))


def test_interrupted_swap_restores_previous_build_on_next_run(built: tuple[Path, Path, Path, dict[str, bytes]]
                                                              ) -> None:
    project, cache, out, before = built
    (project / "deploy.yaml").write_text(SPEC.replace("GATE_SIZE", "5").replace("8123", "8125"))
    r = run_deployc("build", "deploy.yaml", "--out", str(out), "-q", cwd=project, cache_dir=cache,
                    DEPLOYC_CRASH_AT="write-swapping")
    assert r.returncode == -signal.SIGKILL and not out.exists()
    # a failing build (bad gate) still first restores what the crash moved aside
    (project / "deploy.yaml").write_text(SPEC.replace("GATE_SIZE", "0.0001"))
    r = run_deployc("build", "deploy.yaml", "--out", str(out), "-q", cwd=project, cache_dir=cache)
    assert r.returncode == 3
    assert tree(out) == before


def test_a_build_waits_for_the_one_holding_the_folder(built: tuple[Path, Path, Path, dict[str, bytes]],
                                                       tmp_path: Path) -> None:
    import fcntl
    import time

    project, cache, out, before = built
    (project / "deploy.yaml").write_text(SPEC.replace("GATE_SIZE", "5").replace("8123", "8127"))
    log = tmp_path / "second.log"
    with open(out.parent / f".{out.name}.lock", "a+b") as held, open(log, "w") as err:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running build does
        proc = subprocess.Popen([sys.executable, "-m", "deployc", "build", "deploy.yaml", "--out", str(out)],
                                cwd=project, env=deployc_env(cache), stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 120
        while "another build is writing" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        assert "another build is writing" in log.read_text()
        time.sleep(0.5)
        assert proc.poll() is None and tree(out) == before  # still waiting, nothing touched
        fcntl.flock(held, fcntl.LOCK_UN)
    assert proc.wait(timeout=300) == 0
    assert b'"port": 8127' in tree(out)["local/serving.json"]


def test_two_builds_of_one_folder_serialize(built: tuple[Path, Path, Path, dict[str, bytes]]) -> None:
    project, cache, out, _ = built
    (project / "deploy.yaml").write_text(SPEC.replace("GATE_SIZE", "5").replace("8123", "8126"))
    cmd = [sys.executable, "-m", "deployc", "build", "deploy.yaml", "--out", str(out)]
    procs = [subprocess.Popen(cmd, cwd=project, env=deployc_env(cache), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    assert [r[2] for r in results] == [0, 0], results
    files = tree(out)
    import hashlib
    import json

    manifest = json.loads(files["manifest.json"])
    assert all(hashlib.sha256(files[p]).hexdigest() == m["sha256"] for p, m in manifest["files"].items())
    assert set(files) == set(manifest["files"]) | {"manifest.json"}
