"""The tflite target with models of several inputs and outputs: token ids + attention mask (int64) -> two outputs,
and user_id (int64) + item_id (int32) + float features -> a click probability. Inputs are fed by name, integer
inputs stay integer in every mode, and the gates judge the output model.prediction names."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployc.compiler import ops
from deployc.compiler.gates import failures
from deployc.compiler.resolved import resolve
from deployc.compiler.steps import REFERENCE, SOURCE, StepContext, StepOutput
from deployc.errors import InputError
from deployc.ml.tflite import convert, interpreter, measure_tflite, predict_tflite, signature_io
from deployc.schema.spec import DeploySpec
from deployc.targets import get_target
from deployc.targets.base import EmitContext
from deployc.targets.tflite import CONVERT, VERIFY, TFLiteConfig
from tests.tflite_support import markdown_headings, rec_inputs, rec_model, text_inputs, text_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with text.keras, rec.keras and their eval / calibration .npz files."""
    root = tmp_path_factory.mktemp("multi")
    text_model(root)
    rec_model(root)
    return root


@pytest.fixture(scope="module")
def keras_out(models: Path) -> dict[str, dict[str, np.ndarray]]:
    """The Keras models' own outputs on the eval rows, by output name."""
    import keras

    text = keras.models.load_model(models / "text.keras")
    score, probs = text.predict(text_inputs(models / "text_eval.npz"), verbose=0)
    rec = keras.models.load_model(models / "rec.keras")
    return {"text": {"score": score, "probs": probs},
            "rec": {"output": rec.predict(rec_inputs(models / "rec_eval.npz"), verbose=0)}}


@pytest.fixture(scope="module")
def converted(models: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    out = models / "tflite"
    result = {}
    for name, inputs in (("text", text_inputs), ("rec", rec_inputs)):
        calib = inputs(models / f"{name}_calib.npz")
        for mode, io in (("none", "float32"), ("int8", "int8")):
            dst = out / f"{name}-{mode}.tflite"
            result[f"{name}-{mode}"] = (dst, convert(models / f"{name}.keras", dst,
                                                     TFLiteConfig(quantization=mode, io_type=io), calib))
    return result


def test_float32_matches_keras_on_every_output(models: Path, converted: Any, keras_out: Any) -> None:
    path, info = converted["text-none"]
    assert [(t["name"], t["dtype"], t["shape"]) for t in info["inputs"]] == [
        ("attention_mask", "int64", [-1, 16]), ("input_ids", "int64", [-1, 16])]
    assert [t["name"] for t in info["outputs"]] == ["score", "probs"]  # the Keras model's order, not the file's
    x = text_inputs(models / "text_eval.npz")
    reordered = {"input_ids": x["input_ids"], "attention_mask": x["attention_mask"]}  # by name, not position
    for name in ("probs", "score"):
        np.testing.assert_allclose(predict_tflite(path, reordered, output=name), keras_out["text"][name],
                                   rtol=0, atol=1e-4)
    # no name: the file's first output, in the converter's order (by name here); the target always passes one
    np.testing.assert_allclose(predict_tflite(path, x, batch_size=64), keras_out["text"]["probs"], atol=1e-4)
    rec_path, rec_info = converted["rec-none"]
    assert {t["name"]: t["dtype"] for t in rec_info["inputs"]} == {"dense": "float32", "item_id": "int32",
                                                                   "user_id": "int64"}
    np.testing.assert_allclose(predict_tflite(rec_path, rec_inputs(models / "rec_eval.npz"), output="click"),
                               keras_out["rec"]["output"], atol=1e-4)  # its one output answers the Keras name


def test_int8_keeps_integer_inputs_integer(converted: Any) -> None:
    """io_type int8 applies to real-valued tensors: ids keep the model's int64 / int32, floats become int8."""
    for key, want in (("rec-int8", {"user_id": np.int64, "item_id": np.int32, "dense": np.int8}),
                      ("text-int8", {"input_ids": np.int64, "attention_mask": np.int64})):
        path, info = converted[key]
        ins, outs = signature_io(interpreter(path))
        assert {n: d["dtype"] for n, d in ins.items()} == want, key
        assert all(d["dtype"] == np.int8 for d in outs.values())
        quantized = {t["name"] for t in info["inputs"] if t["quantization"]}
        assert quantized == {n for n, dt in want.items() if dt == np.int8}
    # the mask is cast to float32 inside the text model (then quantized); the click model has no float left
    assert "float32" not in converted["rec-int8"][1]["tensor_types"]


def test_int8_agrees_with_keras(models: Path, converted: Any, keras_out: Any) -> None:
    """Full-integer models: the same classes on >= 95% of the rows, and bounded errors. Measured on these 300
    rows: probs max 0.016 (agreement 1.0); click max 0.074, mean 0.006, 99th percentile 0.038 (agreement 0.993).
    The click output is int8 with scale 1/256 (0.004 a step); its largest errors sit where the sigmoid is
    steepest, where one int8 step of the hidden activations moves the logit most. The bounds leave ~35% margin."""
    probs = predict_tflite(converted["text-int8"][0], text_inputs(models / "text_eval.npz"), output="probs")
    assert np.mean(probs.argmax(1) == keras_out["text"]["probs"].argmax(1)) >= 0.95
    assert np.max(np.abs(probs - keras_out["text"]["probs"])) < 0.025
    click = predict_tflite(converted["rec-int8"][0], rec_inputs(models / "rec_eval.npz"))
    error = np.abs(click - keras_out["rec"]["output"])
    assert np.mean((click >= 0.5) == (keras_out["rec"]["output"] >= 0.5)) >= 0.95
    assert error.max() < 0.1 and error.mean() < 0.01


@pytest.mark.parametrize("mode, limit", [("float16", 5e-3), ("dynamic", 0.05)])
def test_float16_and_dynamic_take_every_input(models: Path, keras_out: Any, tmp_path: Path, mode: str,
                                              limit: float) -> None:
    info = convert(models / "rec.keras", tmp_path / "m.tflite", TFLiteConfig(quantization=mode), None)
    assert {t["name"]: t["dtype"] for t in info["inputs"]} == {"dense": "float32", "item_id": "int32",
                                                               "user_id": "int64"}
    pred = predict_tflite(tmp_path / "m.tflite", rec_inputs(models / "rec_eval.npz"))
    assert np.max(np.abs(pred - keras_out["rec"]["output"])) < limit


def test_inputs_are_checked_by_name_dtype_and_shape(models: Path, converted: Any) -> None:
    path = converted["rec-int8"][0]
    x = rec_inputs(models / "rec_eval.npz")
    with pytest.raises(InputError, match="needs inputs user_id"):
        predict_tflite(path, {k: v for k, v in x.items() if k != "user_id"})
    with pytest.raises(InputError, match="'item_id' is int32 in the model, and its data holds fractions"):
        predict_tflite(path, {**x, "item_id": x["item_id"] + 0.5})
    with pytest.raises(InputError, match=r"'dense' takes rows shaped \[4\]"):
        predict_tflite(path, {**x, "dense": x["dense"][:, :3]})
    with pytest.raises(InputError, match="has 3 inputs"):
        predict_tflite(path, x["dense"])
    with pytest.raises(InputError, match="no output named 'nope'"):
        predict_tflite(converted["text-none"][0], text_inputs(models / "text_eval.npz"), output="nope")
    figures = measure_tflite(path, None, min_seconds=0.02)  # zeros of each input's dtype
    assert 0 < figures["latency_p50_ms"] <= figures["latency_p99_ms"]


# --- through the target: spec with data.<set>.x mappings, the reference step, verification, the bundle ---

def _spec(name: str, task: str, prediction: str, tflite: dict[str, Any]) -> DeploySpec:
    x = ({"input_ids": "ids", "attention_mask": "mask"} if name == "text"
         else {"user_id": "user", "item_id": "item", "dense": "dense"})
    return DeploySpec.model_validate({
        "apiVersion": "deployc/v1", "name": name, "version": "1.0.0",
        "model": {"path": f"{name}.keras", "task": task, "prediction": prediction},
        "data": {"eval": {"path": f"{name}_eval.npz", "x": x, "y": "y"},
                 "calibration": {"path": f"{name}_calib.npz", "x": x}},
        "gates": {"min_agreement": 0.95}, "measure": {"min_seconds": 0.02}, "targets": {"tflite": tflite}})


def _build(models: Path, out: Path, s: DeploySpec) -> dict[str, StepOutput]:
    """The source and reference steps of the core, then the target's steps in plan order."""
    r = resolve(s, models)
    outs = {SOURCE: StepOutput(models, {"model": s.model.path, "format": "keras"})}

    def ctx(step_id: str, deps: tuple[str, ...]) -> StepContext:
        folder = out / step_id.replace(":", "-")
        folder.mkdir(parents=True)
        return StepContext(out_dir=folder, deps={d: outs[d] for d in deps}, resolved=r, log=lambda _m: None)

    c = ctx(REFERENCE, (SOURCE,))
    outs[REFERENCE] = StepOutput(c.out_dir, ops.reference(c))
    for step in get_target("tflite").steps(s, models, "final", SOURCE):
        c = ctx(step.id, step.deps)
        outs[step.id] = StepOutput(c.out_dir, step.run(c))
    return outs


def _emit(s: DeploySpec, outs: dict[str, StepOutput]) -> dict[str, bytes]:
    ctx = EmitContext(spec=s, spec_file="deploy.yaml", onnx_model=Path("unused.onnx"), onnx_sha256="0" * 64,
                      inputs=(), outputs=(), labels=(), reference_distribution=None, latency_buckets=(),
                      step_outputs={k: v.dir for k, v in outs.items()},
                      step_results={k: v.result for k, v in outs.items()})
    return get_target("tflite").emit(ctx)


def _run_readme(text: str, model: Path, raw: dict[str, np.ndarray]) -> Any:
    snippet = text.split("## Run it")[1].split("```python\n")[1].split("```")[0]
    snippet = snippet.replace('model_path="model.tflite"', f"model_path={str(model)!r}")
    scope: dict[str, Any] = {"raw": raw}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 - our own generated snippet
    return scope["prediction"]


@pytest.mark.parametrize("case", ["text", "rec"])
def test_a_build_verifies_and_the_bundle_lists_every_tensor(models: Path, tmp_path: Path, case: str) -> None:
    """text: int8 inside, float I/O, prediction `probs` (the second output); rec: int8 I/O, model.prediction
    naming the Keras model's one output (`click`, which the artifact calls "output")."""
    s = (_spec("text", "classification", "probs", {"quantization": "int8"}) if case == "text"
         else _spec("rec", "binary", "click", {"quantization": "int8", "io_type": "int8"}))
    outs = _build(models, tmp_path, s)
    verify = outs[VERIFY].result
    assert verify["verified"] is True
    ev = verify["evaluation"]
    assert ev["agreement"] >= 0.95 and ev["accuracy"] >= 0.85 and ev["latency_p50_ms"] > 0
    assert failures(resolve(s, models).gates, verify["reference"], ev) == []
    files = _emit(s, outs)
    meta = json.loads(files["tflite/metadata.json"])
    text = files["tflite/README.md"].decode()
    model = outs[CONVERT].dir / "model.tflite"
    raw = (text_inputs if case == "text" else rec_inputs)(models / f"{case}_eval.npz")
    if case == "text":
        assert [(t["name"], t["dtype"], t["shape"]) for t in meta["inputs"]] == [
            ("attention_mask", "int64", [-1, 16]), ("input_ids", "int64", [-1, 16])]
        assert [(t["name"], t["dtype"], t["shape"]) for t in meta["outputs"]] == [
            ("score", "float32", [-1, 1]), ("probs", "float32", [-1, 3])]  # int8 inside, io_type float32
        assert meta["prediction"] == "probs"
    else:
        assert {t["name"]: (t["dtype"], t["shape"]) for t in meta["inputs"]} == {
            "dense": ("int8", [-1, 4]), "item_id": ("int32", [-1, 1]), "user_id": ("int64", [-1, 1])}
        assert "prediction" not in meta  # one output
    for t in meta["inputs"] + meta["outputs"]:
        assert json.dumps({k: t[k] for k in ("dtype", "name", "quantization", "shape")}, sort_keys=True) in text
    assert text.count("```") % 2 == 0 and "## Inputs\n" in text and "## Measured by deployc\n" in text
    assert "## Input\n" not in text  # the one-input sections are replaced
    # the README's own snippet, run against the model, gives what verification measured
    np.testing.assert_allclose(_run_readme(text, model, raw),
                               predict_tflite(model, raw, output=meta.get("prediction")), atol=1e-6)


def test_auto_evaluates_every_mode_on_the_prediction_output(models: Path, tmp_path: Path) -> None:
    s = _spec("text", "classification", "probs", {"quantization": "auto"})
    outs = _build(models, tmp_path, s)
    rows = {r["mode"]: r for r in outs[CONVERT].result["candidates"]}
    assert set(rows) == {"int8", "dynamic", "float16", "none"} and all(r["passed"] for r in rows.values())
    assert rows["none"]["max_abs_error"] < 1e-4 and rows["int8"]["agreement"] >= 0.95
    assert outs[CONVERT].result["mode"] == min(rows.values(), key=lambda r: r["size_bytes"])["mode"]
    assert outs[VERIFY].result["verified"] is True


def _meta(names: list[str]) -> dict[str, Any]:
    """metadata.json of a model of two inputs (quantized features, int64 ids) and two outputs, by hand."""
    def tensor(name: str, dtype: str, quantization: Any) -> dict[str, Any]:
        return {"name": name, "tensor": f"t_{name}", "index": 0, "dtype": dtype, "shape": [-1, 4],
                "quantization": quantization}

    q = {"scale": 0.5, "zero_point": -3}
    return {"name": "m", "version": "1.0.0", "task": "classification", "deployc_version": "0",
            "model": {"path": "model.tflite", "sha256": "0" * 64, "size_bytes": 1, "quantization": "int8",
                      "io_type": "int8", "signature": "serving_default", "ops": ["GATHER"], "select_tf_ops": [],
                      "tensor_types": {}, "device": "generic"},
            "inputs": [tensor(names[0], "int8", q), tensor(names[1], "int64", None)],
            "outputs": [tensor(names[2], "int8", q), tensor(names[3], "float32", None)], "prediction": names[3],
            "normalization": {"mean": [0.5], "std": [2.0]}, "labels": None, "evaluation": {}, "reference": {},
            "verified": False, "candidates": [], "warnings": []}


def test_tensor_names_cannot_change_the_readme_or_its_snippet() -> None:
    import ast

    from deployc.targets.tflite import readme

    def outline(text: str) -> tuple[list[str], list[str]]:
        headings = markdown_headings(text)
        snippet = text.split("```python\n")[1].split("\n```")[0]  # a fence closes at a line's start only
        return headings, [type(node).__name__ for node in ast.parse(snippet).body]

    hostile = ["x\n```\n# Injected heading\n", 'a"]; import os; x = ["', "-->\n## Also", "b\\\"\n```python"]
    base = outline(readme(_meta(["f", "ids", "aux", "probs"]), "deploy.yaml"))
    assert base[0] == ["# TFLite (LiteRT) bundle", "## Inputs", "## Outputs",
                       "## Run it (Python, `pip install ai-edge-litert`)", "## Measured by deployc"]
    text = readme(_meta(hostile), "deploy.yaml")
    assert outline(text) == base
    snippet = text.split("```python\n")[1].split("\n```")[0]
    constants: dict[str, Any] = {}
    for node in ast.parse(snippet).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id in (
                "DTYPES", "INPUT_SCALES", "OUTPUT_SCALES", "REAL"):
            constants[node.targets[0].id] = ast.literal_eval(node.value)
    assert constants == {"DTYPES": {hostile[0]: "int8", hostile[1]: "int64"},
                         "INPUT_SCALES": {hostile[0]: [0.5, -3]}, "OUTPUT_SCALES": {hostile[2]: [0.5, -3]},
                         "REAL": [hostile[0]]}
