"""What every peer app shares: the onnxruntime session, built the way the deployc bundle builds its own.

MODEL_PATH: the .onnx file; ORT_THREADS: intra-op threads (1, as the deployc bundle's serving.json says; inter-op
is 1 too). Only numpy and onnxruntime: each peer's venv installs these next to its server package.
"""
from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort


def session() -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("ORT_THREADS", "1"))
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.environ["MODEL_PATH"], opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    sess.run(None, {inp.name: np.zeros((1, inp.shape[1]), np.float32)})  # warm-up, like deployc serve
    return sess


def port() -> int:
    return int(os.environ["PORT"])
