"""The spec corpus: every good spec validates; every bad one fails with exactly the pinned messages.

Set DEPLOYC_UPDATE_GOLDEN=1 to rewrite the pinned `.err` files (then review the diff).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import run_deployc

SPECS = Path(__file__).parent / "specs"
BAD = sorted(p.name for p in (SPECS / "bad").glob("*.yaml"))
GOOD = sorted(p.name for p in (SPECS / "good").glob("*.yaml"))
UPDATE = os.environ.get("DEPLOYC_UPDATE_GOLDEN") == "1"


@pytest.mark.parametrize("case", GOOD)
def test_good_spec_validates(case: str) -> None:
    r = run_deployc("validate", case, cwd=SPECS / "good")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{case}: valid")


@pytest.mark.parametrize("case", BAD)
def test_bad_spec_fails_with_pinned_messages(case: str) -> None:
    r = run_deployc("validate", case, cwd=SPECS / "bad")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    expected_file = SPECS / "bad" / (case.removesuffix(".yaml") + ".err")
    if UPDATE:
        expected_file.write_text(r.stderr)
    assert r.stderr == expected_file.read_text()
    for line in r.stderr.splitlines():  # file:line:col: ...
        file, line_no, col, _ = line.split(":", 3)
        assert file == case and int(line_no) >= 1 and int(col) >= 1
