"""The session behind the server: built from serving.json (onnxruntime for model.onnx, OpenVINO for an OpenVINO
artifact; model.runtime says which), checked against it, warmed up."""
from __future__ import annotations

import re
import time
from typing import Any

import numpy as np

from deployc.errors import InputError
from deployc.serve.codec import ClientError
from deployc.serve.config import DATATYPES, ServingConfig, TensorSpec

# onnxruntime's type strings for the datatypes serving.json may name.
_ORT_TYPES = {f"tensor({t})": dt for dt, t in {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float", "FP64": "double"}.items()}


# the Open Inference Protocol's model metadata `platform`, by runtime
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "openvino": "openvino"}


class _NoSuchError(Exception):
    """Stands for a runtime's invalid-argument error where the runtime has none (OpenVINO)."""


def _session(cfg: ServingConfig) -> tuple[Any, type[Exception]]:
    """The runtime's session (onnxruntime's interface) and the exception type it raises for inputs it refuses."""
    if cfg.runtime == "openvino":
        from deployc.ml.openvino import OpenVINOSession

        return OpenVINOSession(cfg.model_path, threads=cfg.intra_op_threads), _NoSuchError
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cfg.intra_op_threads
    opts.inter_op_num_threads = cfg.inter_op_threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(cfg.model_path), sess_options=opts,
                                    providers=["CPUExecutionProvider"]), InvalidArgument
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        first = str(e).splitlines()[0]
        raise InputError(f"{cfg.model_path}: onnxruntime cannot load the model ({first})") from None


class ModelRunner:
    """Owns the session. `run` is called from a worker thread: onnxruntime and OpenVINO release the GIL while
    they compute."""

    def __init__(self, cfg: ServingConfig):
        self.cfg = cfg
        self.session, self._invalid_argument = _session(cfg)
        self._check("inputs", cfg.inputs, self.session.get_inputs())
        self._check("outputs", cfg.outputs, self.session.get_outputs())
        self.input_dtypes = {t.name: np.dtype(DATATYPES[t.datatype]) for t in cfg.inputs}
        self.output_names = [t.name for t in cfg.outputs]
        # Batching needs every input and output to carry the batch axis first.
        self.batchable = all(t.batched for t in cfg.inputs + cfg.outputs)
        self.batch1_s: float | None = None  # the fastest of the warm-up's batch-1 runs, in seconds

    def _check(self, kind: str, declared: tuple[TensorSpec, ...], actual: list[Any]) -> None:
        where = f"{self.cfg.config_path}: model.{kind}"
        got = {a.name: a for a in actual}
        if set(got) != {t.name for t in declared}:
            raise InputError(f"{where}: names {sorted(t.name for t in declared)} do not match the model's "
                             f"{sorted(got)}")
        for t in declared:
            a = got[t.name]
            if _ORT_TYPES.get(a.type) != t.datatype:
                raise InputError(f"{where}: {t.name!r} is {t.datatype} in serving.json but {a.type} in the model")
            if len(a.shape) != len(t.shape):
                raise InputError(f"{where}: {t.name!r} has rank {len(t.shape)} in serving.json but "
                                 f"{len(a.shape)} in the model")

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """All outputs, in serving.json order. Inputs of the right datatype and shape can still be values the model
        refuses (a token id past the vocabulary in a Gather): onnxruntime's INVALID_ARGUMENT is the client's
        mistake, a 400 with onnxruntime's reason."""
        try:
            return self.session.run(self.output_names, feed)
        except self._invalid_argument as e:
            raise ClientError(400, f"the model refused the inputs: {_reason(str(e))}") from None

    def warm_up(self) -> None:
        """Inferences at batch 1 (timed: `batch1_s`) and at the largest batch when batching, so the first request
        is not slow."""
        sizes = [1, 1, 1] + ([self.cfg.max_batch_size] if self.batchable and self.cfg.batching else [])
        for k, n in enumerate(sizes):
            feed = {t.name: np.zeros([n if i == 0 and s == -1 else (1 if s == -1 else s)
                                      for i, s in enumerate(t.shape)], dtype=self.input_dtypes[t.name])
                    for t in self.cfg.inputs}
            try:
                t0 = time.perf_counter()
                self.run(feed)
                if k in (1, 2):  # the first run pays one-time set-up
                    took = time.perf_counter() - t0
                    self.batch1_s = took if self.batch1_s is None else min(self.batch1_s, took)
            except Exception as e:
                first = str(e).splitlines()[0]
                raise InputError(f"{self.cfg.model_path}: warm-up inference failed ({first})") from None


def _reason(message: str) -> str:
    """onnxruntime's status message without its prefix and log noise: `indices element out of data bounds, ...`."""
    first = message.splitlines()[0] if message else "invalid argument"
    m = re.search(r"Status Message: (.*)", first)
    reason = (m.group(1) if m else first.rpartition(" : ")[2]).strip()
    return re.sub(r"\x1b\[[0-9;]*m.*", "", reason)[:300] or "invalid argument"
