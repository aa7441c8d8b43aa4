"""Conversion to TFLite in every mode, checked with the LiteRT interpreter on the digits model."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from deployc.errors import InputError
from deployc.ml.tflite import convert, dequantize, inspect_model, interpreter, predict_tflite, quantize
from deployc.targets.tflite import TFLiteConfig as TFLiteTarget
from tests.tflite_support import digits_dir

pytestmark = pytest.mark.slow
MODES = [("none", "float32"), ("float16", "float32"), ("dynamic", "float32"), ("int8", "int8"), ("int8", "uint8")]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    root, out = digits_dir(), tmp_path_factory.mktemp("tflite")
    calib = np.load(root / "calib.npz")["x"]
    result = {}
    for mode, io in MODES:
        dst = out / f"{mode}-{io}.tflite"
        result[f"{mode}-{io}"] = (dst, convert(root / "model.keras", dst, TFLiteTarget(quantization=mode, io_type=io),
                                               calib))
    return result


@pytest.fixture(scope="module")
def eval_data() -> tuple[np.ndarray, np.ndarray]:
    root = digits_dir()
    return np.load(root / "eval.npz")["x"], np.load(root / "reference" / "predictions.npy")


def test_float_model_is_all_float32(converted: dict[str, Any]) -> None:
    _, info = converted["none-float32"]
    assert set(info["tensor_types"]) == {"float32"}
    assert info["inputs"][0] | {"index": 0} == {"name": "pixels", "tensor": info["inputs"][0]["tensor"], "index": 0,
                                                "dtype": "float32", "shape": [-1, 64], "quantization": None}
    assert [o["name"] for o in info["outputs"]] == ["output"]
    assert info["ops"] == ["FULLY_CONNECTED", "SOFTMAX"] and info["select_tf_ops"] == []


def test_sizes_shrink_as_expected(converted: dict[str, Any]) -> None:
    full = converted["none-float32"][1]["size_bytes"]
    ratio = {k: v[1]["size_bytes"] / full for k, v in converted.items()}
    assert 0.45 < ratio["float16-float32"] < 0.6
    # int8 weights are a quarter of float32; the flatbuffer's fixed few KiB keep a 76 KB model above 0.25
    assert ratio["dynamic-float32"] < 0.4
    assert ratio["int8-int8"] < 0.4
    assert converted["float16-float32"][1]["tensor_types"].get("float16", 0) >= 2
    assert converted["dynamic-float32"][1]["tensor_types"].get("int8", 0) >= 2


def test_int8_tensors_really_are_int8(converted: dict[str, Any]) -> None:
    path, info = converted["int8-int8"]
    it = interpreter(path)
    assert it.get_input_details()[0]["dtype"] == np.int8
    assert it.get_output_details()[0]["dtype"] == np.int8
    kinds = {np.dtype(t["dtype"]).name for t in it.get_tensor_details()}
    assert kinds <= {"int8", "int32"}, kinds  # int32: biases only
    assert "float32" not in info["tensor_types"]
    u_path, _ = converted["int8-uint8"]
    assert interpreter(u_path).get_input_details()[0]["dtype"] == np.uint8


@pytest.mark.parametrize("key", [f"{m}-{io}" for m, io in MODES])
def test_agreement_with_the_keras_model(converted: dict[str, Any], eval_data: Any, key: str) -> None:
    x, ref = eval_data
    pred = predict_tflite(converted[key][0], x)
    assert pred.dtype == np.float32 and pred.shape == ref.shape
    assert np.mean(pred.argmax(1) == ref.argmax(1)) >= 0.97
    limit = {"none": 1e-5, "float16": 5e-3}.get(key.split("-")[0], 0.05)
    assert np.max(np.abs(pred - ref)) < limit


def test_metadata_scale_and_zero_point_reproduce_the_interpreter(converted: dict[str, Any], eval_data: Any) -> None:
    x, _ = eval_data
    path, info = converted["int8-int8"]
    qi, qo = info["inputs"][0]["quantization"], info["outputs"][0]["quantization"]
    assert qi["scale"] > 0 and -128 <= qi["zero_point"] <= 127
    # by hand, with numbers only from the metadata
    q = np.clip(np.round(x / qi["scale"]) + qi["zero_point"], -128, 127).astype(np.int8)
    it = interpreter(path)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(inp["index"], [len(x), 64])
    it.allocate_tensors()
    it.set_tensor(inp["index"], q)
    it.invoke()
    by_hand = (it.get_tensor(out["index"]).astype(np.float32) - qo["zero_point"]) * qo["scale"]
    np.testing.assert_allclose(by_hand, predict_tflite(path, x), rtol=0, atol=1e-7)
    assert np.array_equal(quantize(x, np.int8, qi), q)
    assert np.allclose(dequantize(np.array([qo["zero_point"] + 10], np.int8), qo), 10 * qo["scale"])


def test_conversion_is_deterministic(converted: dict[str, Any], tmp_path: Path) -> None:
    root = digits_dir()
    calib = np.load(root / "calib.npz")["x"]
    for mode, io in [("int8", "int8"), ("dynamic", "float32")]:
        again = tmp_path / f"{mode}.tflite"
        convert(root / "model.keras", again, TFLiteTarget(quantization=mode, io_type=io), calib)
        assert again.read_bytes() == converted[f"{mode}-{io}"][0].read_bytes()


def test_microcontroller_means_full_int8_with_integer_io(tmp_path: Path) -> None:
    root = digits_dir()
    cfg = TFLiteTarget(device="microcontroller")
    info = convert(root / "model.keras", tmp_path / "m.tflite", cfg, np.load(root / "calib.npz")["x"])
    assert info["mode"] == "int8" and info["io_type"] == "int8"
    assert [t["dtype"] for t in info["inputs"] + info["outputs"]] == ["int8", "int8"]
    assert inspect_model(tmp_path / "m.tflite")["tensor_types"].keys() <= {"int8", "int32"}


def test_per_tensor_int8_has_fewer_scales_and_is_smaller(converted: dict[str, Any],
                                                                         eval_data: Any, tmp_path: Path) -> None:
    x, ref = eval_data
    per_tensor = tmp_path / "per-tensor.tflite"
    convert(digits_dir() / "model.keras", per_tensor,
            TFLiteTarget(quantization="int8", io_type="int8", per_channel=False),
            np.load(digits_dir() / "calib.npz")["x"])
    per_channel = converted["int8-int8"][0]

    def scales(path: Path) -> int:
        return sum(len(t["quantization_parameters"]["scales"]) for t in interpreter(path).get_tensor_details())

    assert scales(per_tensor) < scales(per_channel)
    assert per_tensor.stat().st_size < per_channel.stat().st_size
    assert float(np.mean(predict_tflite(per_tensor, x).argmax(1) == ref.argmax(1))) >= 0.95


def test_int8_without_calibration_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="data.calibration"):
        convert(digits_dir() / "model.keras", tmp_path / "m.tflite", TFLiteTarget(quantization="int8"), None)


@pytest.mark.parametrize("cfg, message", [
    ({"quantization": "dynamic", "io_type": "int8"}, "io_type int8 needs quantization int8"),
    ({"device": "microcontroller", "quantization": "float16"}, "needs quantization int8"),
    ({"device": "microcontroller", "io_type": "float32"}, "io_type int8 or uint8"),
    ({"device": "microcontroller", "allow_select_tf_ops": True}, "builtin ops only"),
    ({"normalization": {"mean": [0.5], "std": [0.0]}}, "must not be 0"),
])
def test_inconsistent_configs_are_rejected(cfg: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TFLiteTarget.model_validate(cfg)
