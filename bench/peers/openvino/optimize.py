"""OpenVINO + NNCF on their own recommended post-training recipe, for bench/optimize.py's peer comparison.

    bench/.venvs/openvino/bin/python bench/peers/openvino/optimize.py --onnx MODEL.onnx --data DATA.npz \
        --kind {mlp,cnn,transformer} --out OUTDIR

DATA.npz holds x_calib (calibration rows), x_eval and y_eval. The recipe is NNCF's default int8 one:
openvino.convert_model(onnx) -> nncf.quantize(preset PERFORMANCE, model_type TRANSFORMER for the transformer,
subset_size = every calibration row) -> ov.save_model(compress_to_fp16=False). Two artifacts, each a folder with
model.xml + model.bin: "nncf-int8" keeps the dynamic batch of the ONNX input, "nncf-int8-static-shape" is the same
quantized model reshaped to batch 1 (OpenVINO's recommended latency setup).

Stdout carries one JSON line ({"peer", "version", "artifacts": [{"name", "path", "recipe"}], "failed"?}); all
logging, and anything the libraries print, goes to stderr. Nothing is downloaded; telemetry is switched off.
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

# openvino's converter and NNCF send usage telemetry unless told this is an automated run (NNCF_CI for NNCF,
# CI=true for openvino_telemetry); set before import, for this process only
os.environ["NNCF_CI"] = "1"
if os.environ.get("CI", "").lower() != "true":
    os.environ["CI"] = "true"

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/peers
from quiet import logger  # noqa: E402
from quiet import main as peer_main  # noqa: E402
from quiet import versions as package_versions  # noqa: E402

SEED = 0


log = logger("openvino-nncf")


def versions() -> str:
    return package_versions("openvino", "nncf", "numpy")


def input_spec(model: Any) -> tuple[Any, Any]:
    """The model's single input and its numpy dtype."""
    if len(model.inputs) != 1:
        raise ValueError(f"expected one input, the model has {len(model.inputs)}")
    inp = model.inputs[0]
    return inp, inp.get_element_type().to_dtype()


def static_batch1(partial_shape: Any, example: np.ndarray) -> list[int]:
    """[1, ...]: the batch dimension set to 1, any other dynamic dimension taken from a calibration row."""
    dims = []
    for i, d in enumerate(partial_shape):
        if i == 0:
            dims.append(1)
        elif d.is_static:
            dims.append(d.get_length())
        else:
            dims.append(int(example.shape[i - 1]))
    return dims


def run(onnx_path: Path, data_path: Path, kind: str, out: Path) -> dict[str, Any]:
    import nncf
    import openvino as ov

    random.seed(SEED)
    np.random.seed(SEED)
    data = np.load(data_path)
    x_calib = data["x_calib"]

    model = ov.convert_model(str(onnx_path))
    inp, dtype = input_spec(model)
    rows = [np.ascontiguousarray(x_calib[i:i + 1]).astype(dtype) for i in range(len(x_calib))]
    log(f"converted {onnx_path.name}: input {inp.get_any_name()} {inp.get_partial_shape()} {dtype}; "
        f"{len(rows)} calibration rows")

    settings: dict[str, Any] = {"preset": nncf.QuantizationPreset.PERFORMANCE, "subset_size": len(rows)}
    if kind == "transformer":
        settings["model_type"] = nncf.ModelType.TRANSFORMER
    quantized = nncf.quantize(model, nncf.Dataset(rows), **settings)
    described = (f"openvino.convert_model(onnx) -> nncf.quantize(int8, preset=PERFORMANCE, "
                 f"{'model_type=TRANSFORMER, ' if kind == 'transformer' else ''}subset_size={len(rows)} "
                 f"calibration rows at batch 1, defaults otherwise: target_device=ANY, fast_bias_correction=True)")

    artifacts = []
    dynamic_dir = out / "nncf-int8"
    dynamic_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(dynamic_dir / "model.xml"), compress_to_fp16=False)
    artifacts.append({"name": "nncf-int8", "path": str(dynamic_dir.resolve()),
                      "recipe": f"{described} -> ov.save_model(compress_to_fp16=False), input shape kept "
                                f"{inp.get_partial_shape()} (dynamic batch)"})

    shape = static_batch1(inp.get_partial_shape(), rows[0][0])
    quantized.reshape({inp.get_any_name(): shape})
    static_dir = out / "nncf-int8-static-shape"
    static_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(static_dir / "model.xml"), compress_to_fp16=False)
    artifacts.append({"name": "nncf-int8-static-shape", "path": str(static_dir.resolve()),
                      "recipe": f"{described} -> model.reshape({shape}) -> ov.save_model(compress_to_fp16=False)"})
    return {"artifacts": artifacts}


if __name__ == "__main__":
    sys.exit(peer_main("openvino-nncf", versions(), run, __doc__.splitlines()[0]))
