"""KServe peer: KServe's Python ModelServer with a kserve.Model whose predict runs onnxruntime (KServe v2 REST).

Run: MODEL_PATH=model.onnx PORT=8000 python bench/peers/kserve/app.py
KServe 0.21's ModelServer has no host option: RESTServer hard-codes uvicorn's host "0.0.0.0" and the gRPC server
"[::]". This app binds the REST server to 127.0.0.1 (it sets the uvicorn config's host before the socket opens)
and turns gRPC off, so nothing listens beyond loopback. Otherwise KServe's defaults: one worker, no batching
(KServe batches only in its Kubernetes agent sidecar), the binary tensor extension on; per-request latency and
access logs are off, as for every server in the benchmark.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import kserve
import kserve.model_server as model_server
from kserve import InferOutput, InferRequest, InferResponse
from kserve.protocol.rest.server import RESTServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import port, session  # noqa: E402

HOST = "127.0.0.1"


class LoopbackRESTServer(RESTServer):
    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.config.host = HOST  # read by uvicorn when it binds, after this


model_server.RESTServer = LoopbackRESTServer  # ModelServer.start() builds its RESTServer by this name


class OnnxModel(kserve.Model):
    def load(self) -> bool:
        self.sess = session()
        self.inp = self.sess.get_inputs()[0].name
        self.out = self.sess.get_outputs()[0].name
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:  # type: ignore[override]
        x = payload.inputs[0].as_numpy()
        (y,) = self.sess.run([self.out], {self.inp: x})
        out = InferOutput(name=self.out, shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y, binary_data=payload.use_binary_outputs)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=[out],
                             use_binary_outputs=payload.use_binary_outputs)


if __name__ == "__main__":
    model = OnnxModel("mlp")
    model.load()
    server = kserve.ModelServer(http_port=port(), enable_grpc=False, enable_latency_logging=False, workers=1)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True
    server.start([model])
