"""BentoML peer: a BentoML service whose API runs onnxruntime. Body (BentoML's natural JSON): {"x": [[64 floats]]}.

Run: MODEL_PATH=model.onnx bentoml serve service:Mlp --host 127.0.0.1 --port 8000 (from this folder; bench/serve.py
does that). BentoML's defaults otherwise: one worker, no adaptive batching (the API is not batchable); the access log
is off, as for every server in the benchmark.
"""
from __future__ import annotations

import sys
from pathlib import Path

import bentoml
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import session  # noqa: E402


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class Mlp:
    def __init__(self) -> None:
        self.sess = session()
        self.inp = self.sess.get_inputs()[0].name
        self.out = self.sess.get_outputs()[0].name

    @bentoml.api
    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run([self.out], {self.inp: x.astype(np.float32, copy=False)})[0]
