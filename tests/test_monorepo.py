"""Monorepos of many specs: the summary table of a multi-spec build, `--changed-since` against a real git
repository, and the matrix workflow example under actionlint. No model is trained: a spec that declares its
model's inputs is planned from any bytes in model.keras."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_ci_workflow import actionlint

from deployc.api import BuildResult, CheckResult, SpecBuild
from deployc.changed import changed_paths, changed_specs
from deployc.compiler.gates import GateCheck
from deployc.errors import EXIT_EXTERNAL, EXIT_GATE, EXIT_INVALID, InputError
from deployc.summary import SKIPPED, summarize, worst

ROOT = Path(__file__).resolve().parent.parent


# --- the summary table ---------------------------------------------------------------------------------------

def _built(cached: dict[str, bool], checks: list[GateCheck]) -> BuildResult:
    return BuildResult(out_dir=Path("build/x"), files={}, cached=cached, report={"gates": []}, gates=checks)


def _results() -> list[SpecBuild]:
    ok = SpecBuild(Path("models/digits/deploy.yaml"), "digits", Path("build/digits"),
                   _built({"source": True, "convert": False, "evaluate": False},
                          [GateCheck("onnx-int8", "min_agreement", 0.98, 0.99, True),
                           GateCheck("onnx-int8", "max_size_mb", 1, 0.2, True)]))
    gate = SpecBuild(Path("models/cv/deploy.yaml"), "cv", Path("build/cv"), None, error="GateError",
                     messages=["1 verification gate(s) failed; build/cv was left unchanged", "table"],
                     exit_code=EXIT_GATE)
    bad = SpecBuild(Path("models/a|b/deploy.yaml"), "ab", Path("build/ab"), None, error="SpecError",
                    messages=["deploy.yaml:3:3: model.path: <missing> no such file"], exit_code=EXIT_INVALID)
    skipped = SpecBuild(Path("models/nlp/deploy.yaml"), "nlp", Path("build/nlp"), None, error=SKIPPED,
                        messages=["not built: --fail-fast stopped after models/cv/deploy.yaml failed"])
    return [ok, gate, bad, skipped]


def test_summary_text_is_aligned_and_counts_each_status() -> None:
    text = summarize(_results(), seconds=75.4).text()
    lines = text.splitlines()
    assert lines[0].split() == ["spec", "name", "status", "steps", "run", "from", "cache", "gates", "passed",
                                "gates", "failed", "time"]
    digits = next(line for line in lines if line.startswith("models/digits"))
    assert digits.split()[2:] == ["ok", "2", "1", "2", "0", "-"]
    cv = next(line for line in lines if line.startswith("models/cv"))
    assert "gate failed" in cv and cv.split()[-5:] == ["-"] * 5
    assert "skipped" in next(line for line in lines if line.startswith("models/nlp"))
    # every column starts at the same offset on every row (the dashes under the header mark them)
    rule = lines[1]
    starts = [i for i in range(len(rule)) if rule[i] == "-" and (i == 0 or rule[i - 1] == " ")]
    assert len(starts) == 8
    for line in lines[2:6]:
        assert all(line[s - 1] == " " for s in starts[1:3]), line  # text columns are left-aligned
    assert lines[-1] == "4 specs in 1 min 15 s: 1 ok, 1 gate failed, 1 invalid, 1 skipped"


def test_summary_markdown_escapes_cells_and_explains_failures() -> None:
    md = summarize(_results()).markdown()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert rows[0] == "| spec | name | status | steps run | from cache | gates passed | gates failed | time |"
    assert rows[1] == "| `models/digits/deploy.yaml` | digits | ok | 2 | 1 | 2 | 0 | - |"
    assert rows[2].startswith("| `models/cv/deploy.yaml` | cv | **gate failed** |")
    assert "`models/a\\|b/deploy.yaml`" in rows[3]  # a `|` in a path would split the cell
    assert all(line.count(" | ") == 7 for line in rows)
    assert "|---|---|---|---:|---:|---:|---:|---:|" in md
    why = md.split("<details>")[1]
    assert "- `models/cv/deploy.yaml` (gate failed): 1 verification gate(s) failed" in why
    assert "&lt;missing&gt;" not in why and "&lt;missing> no such file" in why  # no HTML from a message
    assert "nlp" not in why  # skipped: nothing went wrong there


def test_overall_exit_code_is_the_worst() -> None:
    assert summarize(_results()).exit_code == EXIT_GATE
    external = SpecBuild(Path("m/deploy.yaml"), "m", Path("build/m"), None, error="DeployError",
                         exit_code=EXIT_EXTERNAL)
    assert summarize([*_results(), external]).exit_code == EXIT_EXTERNAL
    assert summarize(_results()[:1]).exit_code == 0
    assert summarize([]).exit_code == 0
    assert worst([1, 3, 0]) == 3


def test_summary_of_a_check_that_found_differences() -> None:
    stale = SpecBuild(Path("m/deploy.yaml"), "m", Path("build/m"),
                      CheckResult(Path("build/m"), added=["a"], removed=[], changed=[]), exit_code=EXIT_INVALID)
    row = summarize([stale]).rows[0]
    assert (row.status, row.exit_code, row.steps_run) == ("out of date", EXIT_INVALID, None)


# --- --changed-since ----------------------------------------------------------------------------------------

SPEC = """apiVersion: deployc/v1
name: {name}
model:
  path: model.keras
  labels: labels.txt
  inputs: [{{name: x, dtype: float32, shape: [-1, 3]}}]
data:
  eval: {{path: data/eval.npz, x: x, y: y}}
targets:
  local: {{}}
"""


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", *args], cwd=repo,
                          env=env, check=True, capture_output=True, text=True).stdout


def _model(folder: Path, name: str, seed: int = 0) -> Path:
    (folder / "data").mkdir(parents=True)
    (folder / "model.keras").write_bytes(f"weights of {name}".encode())
    (folder / "labels.txt").write_text("no\nyes\n")
    _npz(folder / "data" / "eval.npz", seed)
    (folder / "README.md").write_text(f"{name}\n")
    spec = folder / "deploy.yaml"
    spec.write_text(SPEC.format(name=name))
    return spec


def _npz(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        np.savez(f, x=rng.random((4, 3), dtype=np.float32), y=rng.integers(0, 2, 4))


@pytest.fixture()
def repo(tmp_path: Path) -> dict[str, Path]:
    """A repository on branch `work`, started from `main`: models/a, models/b, `models/with space`, models/link
    (its data/eval.npz a link into its store/ folder)."""
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    specs = {n: _model(root / "models" / n, n.replace(" ", "-")) for n in ("a", "b", "with space", "link")}
    link = root / "models" / "link"
    (link / "store").mkdir()
    (link / "data" / "eval.npz").rename(link / "store" / "eval.npz")
    (link / "data" / "eval.npz").symlink_to(Path("..") / "store" / "eval.npz")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "models")
    _git(root, "checkout", "-q", "-b", "work")
    return {"root": root, **specs}


def _selected(repo: dict[str, Path]) -> set[str]:
    specs = [repo[n] for n in ("a", "b", "with space", "link")]
    return {p.parent.name for p in changed_specs(specs, "main", cwd=repo["root"])}


def _commit(repo: dict[str, Path]) -> None:
    _git(repo["root"], "add", "-A")
    _git(repo["root"], "commit", "-q", "-m", "change")


def test_nothing_changed_selects_nothing(repo: dict[str, Path]) -> None:
    assert _selected(repo) == set()


def test_a_changed_data_file_selects_only_its_spec(repo: dict[str, Path]) -> None:
    _npz(repo["a"].parent / "data" / "eval.npz", seed=1)
    assert _selected(repo) == {"a"}  # uncommitted
    _commit(repo)
    assert _selected(repo) == {"a"}  # committed on the branch
    why = changed_specs([repo["a"]], "main", cwd=repo["root"])[repo["a"]]
    assert why == ["models/a/data/eval.npz"]


def test_files_the_spec_does_not_read_do_not_count(repo: dict[str, Path]) -> None:
    a = repo["a"].parent
    (a / "README.md").write_text("more words\n")  # tracked, changed
    (a / "notes.txt").write_text("untracked\n")  # untracked, not an input
    (repo["b"].parent / "README.md").unlink()  # deleted, not an input
    assert changed_paths("main", repo["root"]).paths == {"models/a/README.md", "models/a/notes.txt",
                                                         "models/b/README.md"}
    assert _selected(repo) == set()


def test_the_spec_labels_and_model_are_inputs(repo: dict[str, Path]) -> None:
    repo["a"].write_text(repo["a"].read_text() + "# a comment\n")
    (repo["b"].parent / "labels.txt").write_text("yes\nno\n")
    (repo["link"].parent / "model.keras").write_bytes(b"retrained")
    assert _selected(repo) == {"a", "b", "link"}


def test_paths_with_spaces(repo: dict[str, Path]) -> None:
    _npz(repo["with space"].parent / "data" / "eval.npz", seed=2)
    _commit(repo)
    assert _selected(repo) == {"with space"}


def test_a_change_behind_a_symlink_counts(repo: dict[str, Path]) -> None:
    _npz(repo["link"].parent / "store" / "eval.npz", seed=3)  # what data/eval.npz links to
    assert _selected(repo) == {"link"}


def test_a_retargeted_symlink_counts(repo: dict[str, Path]) -> None:
    link = repo["link"].parent
    _npz(link / "store" / "other.npz", seed=4)
    _commit(repo)
    (link / "data" / "eval.npz").unlink()
    (link / "data" / "eval.npz").symlink_to(Path("..") / "store" / "other.npz")
    assert _selected(repo) == {"link"}


def test_a_rename_counts_on_both_sides(repo: dict[str, Path]) -> None:
    """a's data file moved into b's folder: git's rename detection would name only the new path, and miss a."""
    _git(repo["root"], "mv", "models/a/data/eval.npz", "models/b/data/spare.npz")
    _commit(repo)
    assert _git(repo["root"], "diff", "--name-only", "-M", "main...HEAD").split() == ["models/b/data/spare.npz"]
    assert changed_paths("main", repo["root"]).paths == {"models/a/data/eval.npz", "models/b/data/spare.npz"}
    assert _selected(repo) == {"a"}  # b does not read spare.npz
    why = changed_specs([repo["a"]], "main", cwd=repo["root"])[repo["a"]]
    assert why[0] == "models/a/data/eval.npz" and "does not validate" in why[1]


def test_a_deleted_input_counts(repo: dict[str, Path]) -> None:
    (repo["b"].parent / "labels.txt").unlink()
    _commit(repo)
    assert _selected(repo) == {"b"}


def test_an_untracked_new_spec_counts(repo: dict[str, Path]) -> None:
    new = _model(repo["root"] / "models" / "new", "new")
    found = changed_specs([repo["a"], new], "main", cwd=repo["root"])
    assert list(found) == [new]
    assert "models/new/deploy.yaml" in found[new]


def test_a_spec_outside_the_repository_always_counts(repo: dict[str, Path], tmp_path: Path) -> None:
    outside = _model(tmp_path / "elsewhere", "elsewhere")
    found = changed_specs([repo["a"], outside], "main", cwd=repo["root"])
    assert list(found) == [outside]
    assert "outside the git repository" in found[outside][0]


def test_an_unknown_ref_is_an_error_naming_it(repo: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="unknown git ref 'origin/nope'") as err:
        changed_specs([repo["a"]], "origin/nope", cwd=repo["root"])
    assert err.value.exit_code == 1
    with pytest.raises(InputError, match="not a git ref"):
        changed_specs([repo["a"]], "--output=/tmp/x", cwd=repo["root"])


def test_not_a_repository_is_an_error(tmp_path: Path) -> None:
    spec = _model(tmp_path / "plain", "plain")
    with pytest.raises(InputError, match="is not inside a git repository") as err:
        changed_specs([spec], "main", cwd=tmp_path)
    assert err.value.exit_code == 1


def test_loading_specs_imports_no_tensorflow(repo: dict[str, Path]) -> None:
    code = ("import sys; from pathlib import Path; from deployc.changed import spec_inputs; "
            f"print(len(spec_inputs(Path({str(repo['a'])!r})))); print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["4", "False"]  # the spec, its labels, its model, its data


# --- the matrix workflow ------------------------------------------------------------------------------------

def test_monorepo_workflow_passes_actionlint() -> None:
    assert actionlint(ROOT / "examples" / "ci" / "github-monorepo.yml") == []
