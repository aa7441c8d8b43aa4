"""The baseline: a FastAPI + onnxruntime app written the way a user typically would (pydantic body, sync endpoint).

Run: MODEL_PATH=model.onnx uvicorn bench.plain_fastapi_app:app --port 8000
"""
from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferRequest(BaseModel):
    inputs: list[Tensor]


app = FastAPI()
session = ort.InferenceSession(os.environ["MODEL_PATH"], providers=["CPUExecutionProvider"])
output_name = session.get_outputs()[0].name


@app.get("/v2/health/ready")
def ready() -> dict[str, bool]:
    return {"ready": True}


@app.post("/v2/models/{name}/infer")
def infer(name: str, req: InferRequest) -> dict[str, object]:
    t = req.inputs[0]
    x = np.array(t.data, dtype=np.float32).reshape(t.shape)
    (y,) = session.run([output_name], {t.name: x})
    return {"model_name": name, "outputs": [{"name": output_name, "datatype": "FP32", "shape": list(y.shape),
                                             "data": y.ravel().tolist()}]}
