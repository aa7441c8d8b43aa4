"""The tflite target: its plan steps, verification figures, gates, auto selection and the emitted bundle."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployc.compiler.steps import StepOutput
from deployc.errors import GateError
from deployc.ml.tflite import predict_tflite
from deployc.targets import get_target
from deployc.targets.base import EmitContext
from deployc.targets.tflite import CONVERT, VERIFY, readme
from tests.tflite_support import digits_dir, keras_output, markdown_headings, reference_output, spec, step_context

pytestmark = pytest.mark.slow


def build(tmp: Path, tflite: dict[str, Any], gates: dict[str, Any] | None = None
          ) -> tuple[Any, dict[str, StepOutput]]:
    """Run the target's steps in plan order, as the pipeline would."""
    s = spec(tflite, gates)
    target = get_target("tflite")
    outs = {"keras": keras_output(), "reference": reference_output()}
    for step in target.steps(s, digits_dir(), "final", "keras"):
        ctx = step_context(s, tmp / step.id.replace(":", "-"), {d: outs[d] for d in step.deps})
        outs[step.id] = StepOutput(ctx.out_dir, step.run(ctx))
    return s, outs


def emit(s: Any, outs: dict[str, StepOutput]) -> dict[str, bytes]:
    ctx = EmitContext(spec=s, spec_file="deploy.yaml", onnx_model=Path("unused.onnx"), onnx_sha256="0" * 64,
                      inputs=(), outputs=(), labels=tuple(f"digit-{i}" for i in range(10)),
                      reference_distribution=None, latency_buckets=(),
                      step_outputs={k: v.dir for k, v in outs.items()},
                      step_results={k: v.result for k, v in outs.items()})
    return get_target("tflite").emit(ctx)


@pytest.fixture(scope="module")
def int8_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, StepOutput]]:
    return build(tmp_path_factory.mktemp("int8"), {"quantization": "int8", "io_type": "int8",
                                                   "normalization": {"mean": [0.0], "std": [1.0]}})


def test_steps_depend_on_the_keras_model_and_the_reference() -> None:
    target = get_target("tflite")
    steps = {st.id: st for st in target.steps(spec({"quantization": "int8"}), digits_dir(), "final", "keras-final")}
    assert list(steps) == [CONVERT, VERIFY]
    assert steps[CONVERT].deps == ("keras-final",)
    assert steps[VERIFY].deps == (CONVERT, "reference")
    assert steps[CONVERT].params["config"]["quantization"] == "int8"
    assert set(steps[VERIFY].libs) == {"tensorflow", "ai-edge-litert"}
    assert digits_dir() / "calib.npz" in steps[CONVERT].input_files
    other = target.steps(spec({"quantization": "int8", "threads": 2}), digits_dir(), "final", "keras-final")
    assert other[0].params != steps[CONVERT].params
    auto = target.steps(spec({"quantization": "auto"}), digits_dir(), "final", "k")
    assert auto[0].deps == ("k", "reference") and "gates" in auto[0].params


def test_verify_reports_the_figures_the_gates_read(int8_build: Any) -> None:
    _, outs = int8_build
    result = outs[VERIFY].result
    ev = result["evaluation"]
    assert result["artifact"] == "tflite" and result["mode"] == "int8" and result["verified"] is True
    assert {"accuracy", "agreement", "max_abs_error", "size_bytes", "gzip_bytes", "latency_p50_ms",
            "latency_p99_ms"} <= ev.keys()
    assert ev["agreement"] >= 0.97 and ev["accuracy"] >= 0.85
    assert ev["size_bytes"] == (outs[CONVERT].dir / "model.tflite").stat().st_size
    assert 0 < ev["latency_p50_ms"] <= ev["latency_p99_ms"]
    json.dumps(result)  # JSON-able, as the cache stores it


def test_bundle_files_and_metadata(int8_build: Any) -> None:
    s, outs = int8_build
    files = emit(s, outs)
    assert sorted(files) == ["tflite/README.md", "tflite/labels.txt", "tflite/metadata.json", "tflite/model.tflite"]
    model = files["tflite/model.tflite"]
    assert model == (outs[CONVERT].dir / "model.tflite").read_bytes()
    meta = json.loads(files["tflite/metadata.json"])
    assert meta["model"]["sha256"] == hashlib.sha256(model).hexdigest()
    assert meta["model"]["quantization"] == "int8" and meta["deployc_version"]
    assert meta["inputs"][0]["dtype"] == "int8" and meta["inputs"][0]["shape"] == [-1, 64]
    assert meta["normalization"] == {"mean": [0.0], "std": [1.0]}
    assert meta["evaluation"] == outs[VERIFY].result["evaluation"]
    assert files["tflite/labels.txt"].decode().splitlines()[3] == "digit-3"


def test_readme_carries_the_right_scale_numbers(int8_build: Any) -> None:
    s, outs = int8_build
    files = emit(s, outs)
    meta = json.loads(files["tflite/metadata.json"])
    text = files["tflite/README.md"].decode()
    qi, qo = meta["inputs"][0]["quantization"], meta["outputs"][0]["quantization"]
    assert f"INPUT_SCALE = {json.dumps(qi['scale'])}\n" in text
    assert f"INPUT_ZERO_POINT = {qi['zero_point']}\n" in text
    assert f"OUTPUT_SCALE = {json.dumps(qo['scale'])}\n" in text
    assert text.count("```") % 2 == 0
    # the README's own Python snippet, run against the model, gives predict_tflite's outputs
    snippet = text.split("## Run it")[1].split("```python\n")[1].split("```")[0]
    x = np.load(digits_dir() / "eval.npz")["x"][:32]
    scope: dict[str, Any] = {"raw": x}
    tflite_dir = outs[CONVERT].dir
    snippet = snippet.replace('model_path="model.tflite"', f'model_path={str(tflite_dir / "model.tflite")!r}')
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 - our own generated snippet
    np.testing.assert_allclose(scope["y"], predict_tflite(tflite_dir / "model.tflite", x), atol=1e-6)


def test_values_cannot_change_the_readme_structure(int8_build: Any) -> None:
    s, outs = int8_build
    meta = json.loads(emit(s, outs)["tflite/metadata.json"])
    meta["inputs"][0]["name"] = "x\n```\n# Injected heading\n"
    text = readme(meta, "deploy.yaml\n-->\n# Also injected")
    assert "\n# Injected" not in text and "\n# Also injected" not in text
    assert markdown_headings(text) == ["# TFLite (LiteRT) bundle", "## Input", "## Output",
                                       "## Run it (Python, `pip install ai-edge-litert`)", "## Measured by deployc"]


def test_size_budget_fails_with_size_and_limit(tmp_path: Path) -> None:
    with pytest.raises(GateError) as err:
        build(tmp_path, {"quantization": "none", "max_size_kb": 10})
    assert err.value.exit_code == 3
    assert "max_size_kb" in str(err.value) and "limit of 10 KiB" in str(err.value)
    assert "KiB (" in str(err.value)


def test_auto_keeps_the_smallest_candidate_that_passes(tmp_path: Path) -> None:
    _, outs = build(tmp_path / "a", {"quantization": "auto"}, {"min_agreement": 0.97})
    conv = outs[CONVERT].result
    rows = {r["mode"]: r for r in conv["candidates"]}
    assert set(rows) == {"int8", "dynamic", "float16", "none"}
    smallest = min((r for r in rows.values() if r["passed"]), key=lambda r: r["size_bytes"])
    assert conv["mode"] == smallest["mode"] and conv["mode"] in ("int8", "dynamic")
    assert (outs[CONVERT].dir / "model.tflite").stat().st_size == smallest["size_bytes"]
    assert outs[VERIFY].result["candidates"] == conv["candidates"]
    # a tight error gate only float32 meets
    _, strict = build(tmp_path / "b", {"quantization": "auto"}, {"max_abs_error": 1e-5})
    assert strict[CONVERT].result["mode"] == "none"
    with pytest.raises(GateError, match="no candidate passes") as err:
        build(tmp_path / "c", {"quantization": "auto", "max_size_kb": 1})
    assert "max_size_kb" in err.value.table
