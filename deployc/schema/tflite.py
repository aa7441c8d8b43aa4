"""`targets.tflite`: a verified LiteRT bundle for phones and small devices."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from deployc.schema.base import SpecModel


class Normalization(SpecModel):
    mean: list[float] = Field(default_factory=list, description="Subtracted from the raw input, per channel.")
    std: list[float] = Field(default_factory=list, description="Divides the centred input, per channel.")

    @model_validator(mode="after")
    def _std(self) -> Normalization:
        if any(s == 0 for s in self.std):
            raise ValueError("std values must not be 0")
        if self.mean and self.std and len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise ValueError("mean and std need the same number of channels (or one value for all)")
        return self


class TFLiteTarget(SpecModel):
    quantization: Literal["none", "float16", "dynamic", "int8", "auto"] = Field(
        "dynamic", description="none (float32), float16, dynamic range, int8 (full integer; needs "
        "data.calibration), or auto (smallest that passes the gates).")
    io_type: Literal["float32", "int8", "uint8"] = Field("float32", description="Input/output type for int8 models.")
    per_channel: bool = Field(True, description="dynamic / int8: one weight scale per output channel (more "
                              "accurate) or, when false, one per tensor wherever the converter allows it "
                              "(convolutions and biases; smaller files).")
    allow_select_tf_ops: bool = Field(False, description="Allow TensorFlow ops the device runtime must include.")
    max_size_kb: float | None = Field(None, gt=0, description="Fail the build when model.tflite is larger.")
    threads: int = Field(1, ge=1, le=64, description="Interpreter threads for the measurement.")
    device: Literal["generic", "microcontroller"] | None = Field(
        None, description="microcontroller: full int8 with int8 I/O and builtins only.")
    normalization: Normalization | None = Field(None, description="What the device must do to raw input.")

    @model_validator(mode="after")
    def _consistent(self) -> TFLiteTarget:
        if self.io_type != "float32" and self.quantization not in ("int8", "auto"):
            raise ValueError(f"io_type {self.io_type} needs quantization int8 (or auto)")
        if self.device == "microcontroller":
            if "quantization" in self.model_fields_set and self.quantization not in ("int8", "auto"):
                raise ValueError(f"device microcontroller needs quantization int8, not {self.quantization}")
            if "io_type" in self.model_fields_set and self.io_type == "float32":
                raise ValueError("device microcontroller needs io_type int8 or uint8")
            if self.allow_select_tf_ops:
                raise ValueError("device microcontroller runs builtin ops only: remove allow_select_tf_ops")
        return self
