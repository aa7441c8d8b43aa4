"""CI features: `build --check`, `diff`, several specs built in parallel, --format json."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import run_deployc
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
