"""MLServer peer: a custom MLServer runtime running onnxruntime (MLServer's own ONNX runtime is no longer shipped).

Run with `mlserver start DIR`, DIR holding settings.json (host 127.0.0.1, ports) and mlp/model-settings.json
naming `implementation: runtime.OnnxRuntime`, this folder on PYTHONPATH and MODEL_PATH set (bench/serve.py writes
them). MLServer's defaults otherwise: one parallel inference worker process, no adaptive batching
(max_batch_size 0); debug off (no access log), as for every server in the benchmark.
"""
from __future__ import annotations

import sys
from pathlib import Path

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import session  # noqa: E402


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        self.sess = session()
        self.inp = self.sess.get_inputs()[0].name
        self.out = self.sess.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        (y,) = self.sess.run([self.out], {self.inp: x})
        return InferenceResponse(model_name=self.name, id=payload.id,
                                 outputs=[NumpyCodec.encode_output(self.out, y)])
