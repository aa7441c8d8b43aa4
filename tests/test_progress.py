"""What `deployc build` shows while it runs: a few plain lines for the long steps in CI logs and pipes, a live
rich bar on a terminal (a real pseudo-terminal here), nothing with -q; and never a native TensorFlow, absl,
oneDNN or CUDA log line, a library warning or a library's log record.

Each build reuses the session's step cache for the model's own steps and prunes with a sparsity of its own,
so its fine-tuning, conversion to ONNX and int8-static calibration really run."""
from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import deployc_env

from deployc.progress import LineProgress, Progress, RichProgress, as_progress, current, reporting

SPEC = """\
apiVersion: deployc/v1
name: progress
version: 1.0.0
model: {path: model.keras, labels: labels.txt}
data:
  eval: {path: data/eval.npz, x: x, y: y}
  calibration: {path: data/calib.npz, x: x}
  train: {path: data/train.npz, x: x, y: y}
optimize:
  - prune: {sparsity: SPARSITY, epochs: 4}
  - quantize: {mode: int8-static}
measure: {min_seconds: 0.05}
targets:
  local: {port: 8080}
"""

NOISE = [
    re.compile(p, re.MULTILINE) for p in (
        r"oneDNN custom operations", r"Could not find cuda drivers", r"Unable to register cu\w+ factory",
        r"absl::InitializeLog", r"TF-TRT Warning", r"cuInit", r"cpu_feature_guard", r"tensorflow/core/",
        r"^\s*[IWEF]\d{4} \d\d:\d\d:\d\d",  # absl's C++ log line prefix (I0000 00:00:1796...)
        r"\w+Warning: ", r"^(INFO|WARNING|ERROR):[\w.]+:",  # Python warnings; logging's default format
        r"\[(INFO|WARNING)\] - ",  # the format onnxruntime's quantization package configures at import
    )]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def project(trained_digits: Path, tmp_path: Path) -> Path:
    import shutil

    d = tmp_path / "progress"
    shutil.copytree(trained_digits, d)
    return d


def spec(project: Path, sparsity: float) -> None:
    (project / "deploy.yaml").write_text(SPEC.replace("SPARSITY", str(sparsity)))


def env_for(cache: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: TensorFlow's log level left to deployc, not in CI."""
    env = deployc_env(cache, **extra)
    for key in ("TF_CPP_MIN_LOG_LEVEL", "CI", "NO_COLOR", "FORCE_COLOR"):
        env.pop(key, None)
    return env


def assert_no_noise(text: str) -> None:
    found = [m.group(0) for p in NOISE for m in p.finditer(text)]
    assert not found, f"library noise in the build output: {found}\n{text[-4000:]}"


def steps_run(stdout: str) -> int:
    """How many steps a build ran rather than took from the cache, from its "built" line."""
    m = re.search(r"built out \(\d+ files; (\d+)/(\d+) steps from cache\)", stdout)
    assert m, stdout
    return int(m.group(2)) - int(m.group(1))


def build_piped(project: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deployc", "build", "deploy.yaml", "--out", "out", *args],
                          cwd=project, env=env_for(cache), capture_output=True, text=True, timeout=600)


def build_on_terminal(project: Path, cache: Path, timeout: float = 600) -> tuple[int, str, str]:
    """The build with stderr on a pseudo-terminal (120 columns) and stdout on a pipe: (exit code, what the
    terminal received, stdout)."""
    master, slave = pty.openpty()
    env = env_for(cache, TERM="xterm-256color", COLUMNS="120", LINES="40")
    proc = subprocess.Popen([sys.executable, "-m", "deployc", "build", "deploy.yaml", "--out", "out"], cwd=project,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 1 << 16)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                received += chunk
            elif proc.poll() is not None:
                break
        stdout = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0].decode()
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, received.decode("utf-8", errors="replace"), stdout


def test_plain_lines_in_a_pipe(project: Path, session_cache: Path) -> None:
    spec(project, 0.31)
    r = build_piped(project, session_cache)
    assert r.returncode == 0, r.stderr
    assert_no_noise(r.stderr)
    lines = r.stderr.splitlines()
    assert all(line.startswith("deployc: ") for line in lines), r.stderr
    epochs = [line for line in lines if "optimize[0].prune: fine-tuning: epoch" in line]
    assert [re.fullmatch(r"deployc:       optimize\[0\]\.prune: fine-tuning: epoch (\d)/4 loss [\d.e-]+", line)
            .group(1) for line in epochs] == ["1", "2", "3", "4"], r.stderr  # type: ignore[union-attr]
    batches = [line for line in lines if "optimize[1].quantize: calibrating: batch" in line]
    assert 1 <= len(batches) <= 4 and re.search(r"batch (\d+)/\1$", batches[-1]), r.stderr
    assert "deployc:       convert: converting to ONNX (tf2onnx)" in lines
    assert not ANSI.search(r.stderr) and "\r" not in r.stderr
    assert "optimize[0].prune: cached" not in r.stderr and steps_run(r.stdout) >= 5  # it really trained


def test_rich_bar_on_a_terminal(project: Path, session_cache: Path) -> None:
    spec(project, 0.32)
    code, term, stdout = build_on_terminal(project, session_cache)
    assert code == 0, term[-4000:]
    assert steps_run(stdout) >= 5
    text = ANSI.sub("", term)
    assert_no_noise(text)
    assert "\r\x1b[2K" in term  # rich redraws its bar in place
    frames = [f for f in re.split(r"\r\n|\r|\n", text) if "━" in f]
    training = [f for f in frames if "optimize[0].prune: fine-tuning" in f]
    assert training, text[-4000:]
    assert any(re.search(r"[1-4]/4 epochs +loss [\d.]+", f) for f in training), training
    assert any("convert: converting to ONNX (tf2onnx)" in f for f in frames), frames
    assert any("optimize[1].quantize: calibrating" in f and "batches" in f for f in frames), frames
    # the lines that stay are rich-styled, and no plain "deployc: " line is mixed in
    assert "deployc [2/" in text and "deployc: " not in text
    assert "optimize[0].prune: fine-tuning: epoch" not in text


def test_quiet_prints_nothing(project: Path, session_cache: Path) -> None:
    spec(project, 0.33)
    r = build_piped(project, session_cache, "-q")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert steps_run(r.stdout) >= 5


def test_line_progress_says_each_quarter() -> None:
    lines: list[str] = []
    progress = as_progress(lines.append).prefixed("      step: ")
    with progress.task("fine-tuning", total=10, unit="epoch") as task:
        for i in range(10):
            task.advance(status=f"loss {i}")
    with progress.task("converting"):
        pass
    with progress.task("quietly", announce=False):
        pass
    assert lines == ["      step: fine-tuning: epoch 3/10 loss 2", "      step: fine-tuning: epoch 5/10 loss 4",
                     "      step: fine-tuning: epoch 8/10 loss 7", "      step: fine-tuning: epoch 10/10 loss 9",
                     "      step: converting"]


def test_reporters() -> None:
    quiet = Progress()
    assert as_progress(quiet) is quiet and isinstance(as_progress(print), LineProgress)
    lines: list[str] = []
    with reporting(LineProgress(lines.append)):
        current()("inside")
    current()("outside")  # outside a step: dropped
    assert lines == ["inside"]

    from rich.console import Console

    out = io.StringIO()
    rich = RichProgress(Console(file=out, force_terminal=True, width=100, color_system=None))
    with rich.task("step", announce=False), rich.prefixed("      step: ").task("calibrating", 3, unit="batch") as t:
        t.advance()
        assert rich._bars is not None and len(rich._open) == 2
        rich._bars.refresh()
    assert rich._bars is None and rich._open == []  # the display stops with the last task
    rich.log("a line")
    assert "step: calibrating" in out.getvalue() and "batches" in out.getvalue()
    assert "deployc a line" in out.getvalue()
