"""`targets.tfserving`: a versioned SavedModel and the model server's config for TensorFlow Serving."""
from __future__ import annotations

import itertools
from typing import Literal

from pydantic import Field, model_validator

from deployc.schema.base import SpecModel

MAX_VERSION = 2**63 - 1  # version folders are int64 in TensorFlow Serving


class TFServingBatching(SpecModel):
    enabled: bool = Field(False, description="Write batching_parameters.txt (start the server with "
                          "--enable_batching --batching_parameters_file=...).")
    max_batch_size: int = Field(32, ge=1, le=65536, description="Largest batch the server forms.")
    batch_timeout_micros: int = Field(1000, ge=0, le=10_000_000, description="Longest a request waits for "
                                      "companions before a smaller batch runs.")
    num_batch_threads: int = Field(4, ge=1, le=256, description="Threads that run batches (about the cores).")
    max_enqueued_batches: int = Field(100, ge=1, le=1_000_000, description="Queue length in batches; past it "
                                      "requests are refused (UNAVAILABLE) instead of waiting.")
    allowed_batch_sizes: list[int] = Field(default_factory=list, max_length=32, description="Pad batches up to "
                                           "one of these sizes (increasing; the last equals max_batch_size).")

    @model_validator(mode="after")
    def _sizes(self) -> TFServingBatching:
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in itertools.pairwise(sizes)) or sizes[0] < 1:
                raise ValueError("allowed_batch_sizes must be positive and strictly increasing")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(f"the last of allowed_batch_sizes ({sizes[-1]}) must equal max_batch_size "
                                 f"({self.max_batch_size})")
        return self


class TFServingTarget(SpecModel):
    model_version: int | None = Field(None, ge=1, le=MAX_VERSION, description="The version folder number "
                                      "(default: from the spec version, MAJOR*1000000 + MINOR*1000 + PATCH).")
    version_policy: Literal["specific", "latest"] = Field("specific", description="specific: serve exactly "
                                                          "this version; latest: the highest version folder found.")
    base_path: str = Field("/models", pattern=r"^/[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$|^/$", max_length=512,
                           description="Folder inside the server holding the model folder (the model's "
                           "base_path is <base_path>/<name>).")
    batching: TFServingBatching = Field(default_factory=TFServingBatching, description="Server-side batching.")
