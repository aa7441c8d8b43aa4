"""One Open Inference Protocol REST infer through the kserve SDK (`kserve.InferenceRESTClient`), as a user runs it.

Run by tests/test_serve_binary.py with the Python of the kserve tool venv (kserve pins protobuf < 7 and psutil < 6,
which the project's venv does not satisfy):

    python kserve_rest_client.py BASE_URL MODEL IN.npy OUT.npz [--json-inputs] [--binary-outputs]

Writes every output to OUT.npz and prints the response's JSON header fields on stdout.
"""
from __future__ import annotations

import argparse
import asyncio
import json

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base_url")
    ap.add_argument("model")
    ap.add_argument("inputs")
    ap.add_argument("out")
    ap.add_argument("--json-inputs", action="store_true", help="send `data` lists instead of the binary extension")
    ap.add_argument("--binary-outputs", action="store_true", help="ask for raw output bytes (binary_data)")
    args = ap.parse_args()
    x = np.load(args.inputs)
    inp = InferInput(name="x", shape=list(x.shape), datatype="FP32")
    inp.set_data_from_numpy(x, binary_data=not args.json_inputs)
    outputs = [RequestedOutput("probabilities", {"binary_data": True})] if args.binary_outputs else None
    request = InferRequest(model_name=args.model, infer_inputs=[inp], request_id="kserve-1",
                           request_outputs=outputs)
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    sent_binary = "binary_data_size" in (inp.parameters or {})
    headers: dict[str, str] = {}
    response = await client.infer(args.base_url, request, model_name=args.model, response_headers=headers)
    np.savez(args.out, **{o.name: o.as_numpy() for o in response.outputs})
    print(json.dumps({"id": response.id, "model_name": response.model_name,
                      "outputs": [{"name": o.name, "datatype": o.datatype, "shape": o.shape,
                                   "parameters": o.parameters} for o in response.outputs],
                      "sent_binary": sent_binary, "content-type": headers.get("content-type"),
                      "header-length": headers.get("inference-header-content-length")}))


if __name__ == "__main__":
    asyncio.run(main())
