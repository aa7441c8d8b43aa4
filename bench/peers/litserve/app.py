"""LitServe peer: a LitAPI running onnxruntime. Body (LitServe's natural JSON): {"x": [[64 floats]]}.

Run: MODEL_PATH=model.onnx PORT=8000 python bench/peers/litserve/app.py (binds 127.0.0.1; LitServe's own default
is 0.0.0.0). Defaults otherwise: one inference worker (workers_per_device=1), no batching (max_batch_size=1).
"""
from __future__ import annotations

import sys
from pathlib import Path

import litserve as ls
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import port, session  # noqa: E402


class OnnxAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.sess = session()
        self.inp = self.sess.get_inputs()[0].name
        self.out = self.sess.get_outputs()[0].name

    def decode_request(self, request: dict) -> np.ndarray:
        return np.asarray(request["x"], dtype=np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run([self.out], {self.inp: x})[0]

    def encode_response(self, y: np.ndarray) -> dict:
        return {"probabilities": y.tolist()}


if __name__ == "__main__":
    server = ls.LitServer(OnnxAPI(), accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port(), log_level="warning", generate_client_file=False)
