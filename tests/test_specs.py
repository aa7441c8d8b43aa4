"""The spec corpus: every good spec validates; every bad one fails with exactly the pinned messages.

Set DEPLOYC_UPDATE_GOLDEN=1 to rewrite the pinned `.err` files (then review the diff).
"""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_deployc
from golden_support import assert_golden_file

SPECS = Path(__file__).parent / "specs"
BAD = sorted(p.name for p in (SPECS / "bad").glob("*.yaml"))
GOOD = sorted(p.name for p in (SPECS / "good").glob("*.yaml"))


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
    assert_golden_file(r.stderr, SPECS / "bad" / (case.removesuffix(".yaml") + ".err"))
    for line in r.stderr.splitlines():  # file:line:col: ...
        file, line_no, col, _ = line.split(":", 3)
        assert file == case and int(line_no) >= 1 and int(col) >= 1
