"""`targets.tflite`: a verified LiteRT bundle for phones and small devices."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from deployc.schema.base import SpecModel


class Normalization(SpecModel):
    mean: list[float] = Field(default_factory=list, description="Subtracted from the raw input, per channel.")
    std: list[float] = Field(default_factory=list, description="Divides the centred input, per channel.")


class TFLiteTarget(SpecModel):
    quantization: Literal["none", "float16", "dynamic", "int8", "auto"] = Field(
        "dynamic", description="none (float32), float16, dynamic range, int8 (full integer; needs "
        "data.calibration), or auto (smallest that passes the gates).")
    io_type: Literal["float32", "int8", "uint8"] = Field("float32", description="Input/output type for int8 models.")
    allow_select_tf_ops: bool = Field(False, description="Allow TensorFlow ops the device runtime must include.")
    max_size_kb: float | None = Field(None, gt=0, description="Fail the build when model.tflite is larger.")
    threads: int = Field(1, ge=1, le=64, description="Interpreter threads for the measurement.")
    device: Literal["generic", "microcontroller"] | None = Field(
        None, description="microcontroller: full int8 with int8 I/O and builtins only.")
    normalization: Normalization | None = Field(None, description="What the device must do to raw input.")
