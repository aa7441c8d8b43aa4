"""Run promtool on generated rules: `check rules` (syntax, PromQL) and `test rules` (the generated unit tests)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from deployc.errors import InputError

RULES_FILE = "prometheus-rules.yaml"
TESTS_FILE = "prometheus-rules.test.yaml"
TIMEOUT_S = 300


def _run(promtool: str, args: list[str], cwd: Path) -> str:
    try:
        proc = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise InputError(f"promtool {' '.join(args)} took longer than {TIMEOUT_S} s") from None
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise InputError(f"promtool {' '.join(args)} failed in {cwd}:\n{output}")
    return output


def run_promtool(rules_dir: Path) -> dict[str, str]:
    """Check and unit-test the rules in `rules_dir` (the build's monitoring folder, in a temp location).

    Skipped, not failed, when promtool is not installed: the rules are still written, and the report says so.
    """
    rules_dir = Path(rules_dir)
    if not (rules_dir / RULES_FILE).is_file():
        return {"promtool": "skipped (no rules)"}
    promtool = shutil.which("promtool")
    if promtool is None:
        return {"promtool": "skipped (promtool not installed)"}
    _run(promtool, ["check", "rules", RULES_FILE], rules_dir)
    if (rules_dir / TESTS_FILE).is_file():
        _run(promtool, ["test", "rules", TESTS_FILE], rules_dir)
    version = _run(promtool, ["--version"], rules_dir).splitlines()[0]
    return {"promtool": "passed", "promtool_version": version}
