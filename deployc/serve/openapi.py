"""The server's OpenAPI 3.0 document (`GET /v2/openapi.json`), built as a dict from the serving config.

Clients and API tools (code generators, schemathesis) read the routes, request and response bodies and error
shapes from it. The model's own name, version, input names and datatypes are filled in, so the document
describes this server rather than the protocol in general.
"""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from deployc import __version__
from deployc.serve.bodies import json_response
from deployc.serve.config import DATATYPES, ServingConfig
from deployc.serve.state import ServerState

OPENAPI_PATH = "/v2/openapi.json"
OPENAPI_VERSION = "3.0.3"
_JSON = "application/json"
_NPY = "application/x-npy"
_NPZ = "application/x-npz"  # one .npy array per input (request) or output (response), by name
_OCTET = "application/octet-stream"  # a binary tensor extension body: JSON header, then raw tensors
_BINARY = {"type": "string", "format": "binary"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    why = {400: "the request is malformed (the message names the tensor and the problem)",
           401: "missing or wrong bearer token", 404: "unknown model, version or path",
           406: "Accept is none of JSON, npy, npz", 413: "the body is larger than server.max_body_bytes",
           415: "unsupported Content-Type or Content-Encoding", 503: "not ready (starting or draining)"}
    return {str(c): _json_body(_ref("Error"), why[c]) for c in codes}


def _header(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


HEADER_LENGTH = _header("Inference-Header-Content-Length", {"type": "integer", "minimum": 0},
                        "Binary tensor extension: the byte length of the JSON header at the start of the body.")
CONTENT_ENCODING = _header("Content-Encoding", {"type": "string", "enum": ["gzip", "deflate"]},
                           "A compressed body; its decompressed size counts against server.max_body_bytes.")
ACCEPT_ENCODING = _header("Accept-Encoding", {"type": "string"},
                          "gzip or deflate (q-values honoured): responses of 1 KiB and more are compressed.")


def _infer_bodies() -> tuple[dict[str, Any], dict[str, Any]]:
    """The request body and the 200 response of the infer routes: JSON, or the binary tensor extension."""
    binary = {**_BINARY, "description": "Inference-Header-Content-Length bytes of JSON InferenceRequest, then "
                                        "the raw little-endian tensors (BYTES: 4-byte length + bytes each)"}
    body = {"required": True, "content": {_JSON: {"schema": _ref("InferenceRequest")}, _OCTET: {"schema": binary}}}
    length = {"description": "Set when outputs are binary: the byte length of the JSON header",
              "schema": {"type": "integer", "minimum": 0}}
    encoding = {"description": "gzip or deflate, when Accept-Encoding asked for it", "schema": {"type": "string"}}
    ok = {"description": "outputs (application/octet-stream: JSON header, then the binary outputs' bytes)",
          "headers": {"Inference-Header-Content-Length": length, "Content-Encoding": encoding},
          "content": {_JSON: {"schema": _ref("InferenceResponse")},
                      _OCTET: {"schema": {**_BINARY, "description": "JSON InferenceResponse, then raw outputs"}}}}
    return body, ok


def _invocations_bodies() -> tuple[dict[str, Any], dict[str, Any]]:
    body = {"required": True, "content": {
        _JSON: {"schema": {"oneOf": [_ref("InstancesRequest"), _ref("ColumnsRequest"), _ref("InferenceRequest"),
                                     {"type": "array", "items": {}}]}},
        _NPY: {"schema": {**_BINARY, "description": "one .npy array (single-input models)"}},
        _NPZ: {"schema": {**_BINARY, "description": ".npz archive: one .npy array per input, named by input"}}}}
    ok = {"description": "predictions: JSON, .npy (the first output) or .npz (every output), whichever Accept "
                         "prefers (q-values); JSON by default",
          "content": {_JSON: {"schema": {"oneOf": [_ref("Predictions"), _ref("Columns"),
                                                   _ref("InferenceResponse")]}},
                      _NPY: {"schema": _BINARY}, _NPZ: {"schema": _BINARY}}}
    return body, ok


def _schemas(cfg: ServingConfig) -> dict[str, Any]:
    names = [t.name for t in cfg.inputs]
    number_data = {"type": "array", "description": "Row-major values, flat or nested to the shape.",
                   "items": {}}
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
        "Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
        "Ping": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
        "ModelReady": {"type": "object", "required": ["name", "ready"],
                       "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}}},
        "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}}}},
        "TensorMetadata": {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
            "name": {"type": "string"}, "datatype": {"type": "string", "enum": list(DATATYPES)},
            "shape": {"type": "array", "items": {"type": "integer"}, "description": "-1 marks a free axis"}}},
        "ModelMetadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                          "properties": {
                              "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
                              "platform": {"type": "string"}, "parameters": {"type": "object"},
                              "inputs": {"type": "array", "items": _ref("TensorMetadata")},
                              "outputs": {"type": "array", "items": _ref("TensorMetadata")}}},
        "RequestInput": {"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
            "name": {"type": "string", "enum": names},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": sorted({t.datatype for t in cfg.inputs})},
            "parameters": {"type": "object", "properties": {"binary_data_size": {
                "type": "integer", "minimum": 0, "description": "Binary tensor extension: the input's bytes "
                "follow the JSON header (in input order) instead of `data`; shape x datatype size."}}},
            "data": number_data}, "description": "`data`, or `parameters.binary_data_size` with the binary "
                                                 "tensor extension."},
        "RequestOutput": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "enum": [t.name for t in cfg.outputs]},
            "parameters": {"type": "object", "properties": {"binary_data": {
                "type": "boolean", "description": "Send this output as raw bytes after the JSON header."}}}}},
        "InferenceRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object", "properties": {"binary_data_output": {
                "type": "boolean", "description": "Send every output as raw bytes (an output's own binary_data "
                                                  "overrides it)."}}},
            "inputs": {"type": "array", "minItems": 1, "items": _ref("RequestInput")},
            "outputs": {"type": "array", "items": _ref("RequestOutput")}}},
        "ResponseOutput": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
            "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": {"type": "string", "enum": list(DATATYPES)}, "data": {"type": "array", "items": {}},
            "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}}},
            "description": "`data`, or for a binary output `parameters.binary_data_size`: its raw bytes follow the "
                           "JSON header, in the order of `outputs`."},
        "InferenceResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "outputs": {"type": "array", "items": _ref("ResponseOutput")}}},
        "InstancesRequest": {"type": "object", "required": ["instances"], "properties": {
            "instances": {"type": "array", "minItems": 1, "items": {},
                          "description": "One row per instance; an object keyed by input name for models with "
                                         "several inputs."}}},
        "ColumnsRequest": {"type": "object", "required": ["inputs"], "properties": {"inputs": {
            "type": "object", "required": names, "additionalProperties": False,
            "properties": {n: {"type": "array", "items": {}} for n in names},
            "description": "Each input's rows under its name (TF Serving's columnar format)."}}},
        "Predictions": {"type": "object", "required": ["predictions"], "properties": {"predictions": {
            "type": "array", "items": {}, "description": "One entry per row: the output's row, or with several "
                                                        "outputs an object of each output's row by name."}}},
        "Columns": {"type": "object", "required": ["outputs"], "properties": {"outputs": {
            "description": "The answer to ColumnsRequest: the output's rows, or with several outputs an object "
                           "of each output's rows by name."}}},
    }


class _Operations:
    """Builds the operation objects of one document: every protected one carries the bearer scheme and a 401."""

    def __init__(self, secured: list[dict[str, list[str]]]):
        self.secured = secured

    def __call__(self, summary: str, ok: dict[str, Any], errors: tuple[int, ...] = (),
                 params: list[Any] | None = None, body: dict[str, Any] | None = None,
                 protected: bool = False) -> dict[str, Any]:
        o: dict[str, Any] = {"summary": summary, "responses": {"200": ok, **_errors(*errors)}}
        if params:
            o["parameters"] = params
        if body:
            o["requestBody"] = body
        if protected and self.secured:
            o["security"] = self.secured
            o["responses"].update(_errors(401))
        return o


def _path_params(cfg: ServingConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `{name}` and `{version}` path parameters, each allowing only this server's model."""
    model_name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": [cfg.name]}}
    version = {"name": "version", "in": "path", "required": True,
               "schema": {"type": "string", "enum": [cfg.version]}}
    return model_name, version


def _inference_paths(cfg: ServingConfig, op: _Operations) -> dict[str, Any]:
    """The routes that run the model: Open Inference Protocol infer and SageMaker's /invocations."""
    model_name, version = _path_params(cfg)
    infer_body, infer_ok = _infer_bodies()
    infer = op("Run inference (Open Inference Protocol v2)", infer_ok, (400, 404, 413, 415), body=infer_body,
               protected=True)
    infer_headers = [HEADER_LENGTH, CONTENT_ENCODING, ACCEPT_ENCODING]
    invocations_body, invocations_ok = _invocations_bodies()
    explain: dict[str, Any] = {}
    if cfg.explain is not None:  # docs/serving.md, "Explanations"
        ok = _json_body({"type": "object", "required": ["model_name", "method", "outputs"], "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "method": {"type": "string", "enum": [cfg.explain.method]},
            "outputs": {"type": "array", "items": {"type": "object"}},
            "parameters": {"type": "object"}}}, "attributions per input (its shape), the explained output column "
            "(`target`) and value (`target_value`) per row, and each row's top features")
        op_ = op(f"Explain the rows ({cfg.explain.method}, at most {cfg.explain.max_rows} rows)", ok,
                 (400, 404, 413), body={"required": True, "content": {_JSON: {"schema": _ref("InferenceRequest")}}},
                 protected=True)
        explain = {"/v2/models/{name}/explain": {"post": {**op_, "parameters": [model_name]}},
                   "/v2/models/{name}/versions/{version}/explain": {"post": {**op_, "parameters": [model_name,
                                                                                                  version]}}}
    return {
        **explain,
        "/v2/models/{name}/infer": {"post": {**infer, "parameters": [model_name, *infer_headers]}},
        "/v2/models/{name}/versions/{version}/infer": {"post": {**infer, "parameters": [model_name, version,
                                                                                        *infer_headers]}},
        "/invocations": {"post": op("Run inference (SageMaker)", invocations_ok, (400, 406, 413, 415),
                                    [CONTENT_ENCODING, ACCEPT_ENCODING], body=invocations_body, protected=True)},
    }


def _paths(cfg: ServingConfig, op: _Operations) -> dict[str, Any]:
    """Every route, in the order the document lists them."""
    model_name, version = _path_params(cfg)
    ready_ok = _json_body(_ref("ModelReady"), "ready")
    meta_ok = _json_body(_ref("ModelMetadata"), "model metadata")
    inference = _inference_paths(cfg, op)
    return {
        "/v2/health/live": {"get": op("Liveness", _json_body(_ref("Live"), "alive"))},
        "/v2/health/ready": {"get": op("Readiness", _json_body(_ref("Ready"), "ready"), (503,))},
        "/ping": {"get": op("SageMaker health check", _json_body(_ref("Ping"), "ready"), (503,))},
        "/v2": {"get": op("Server metadata", _json_body(_ref("ServerMetadata"), "server metadata"),
                          protected=True)},
        "/v2/models/{name}": {"get": op("Model metadata", meta_ok, (404,), [model_name], protected=True)},
        "/v2/models/{name}/versions/{version}": {"get": op("Model metadata", meta_ok, (404,), [model_name, version],
                                                           protected=True)},
        "/v2/models/{name}/ready": {"get": op("Model readiness", ready_ok, (404, 503), [model_name])},
        "/v2/models/{name}/versions/{version}/ready": {"get": op("Model readiness", ready_ok, (404, 503),
                                                                 [model_name, version])},
        **inference,
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        OPENAPI_PATH: {"get": op("This document", {"description": "OpenAPI 3.0 document",
                                                   "content": {_JSON: {"schema": {"type": "object"}}}},
                                 protected=True)},
    }


def openapi_document(cfg: ServingConfig) -> dict[str, Any]:
    """The OpenAPI document of every route `deployc serve` answers, for the model in `cfg`."""
    secured: list[dict[str, list[str]]] = [{"bearer": []}] if cfg.auth_token_env else []
    doc: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": f"deployc serve: {cfg.name}", "version": cfg.version,
                 "description": f"Served by deployc {__version__}: Open Inference Protocol (KServe v2) REST, the "
                                "SageMaker container contract and Prometheus metrics. Every client error is a 4xx "
                                "with an Error body."},
        "paths": _paths(cfg, _Operations(secured)),
        "components": {"schemas": _schemas(cfg)},
    }
    if secured:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc


async def openapi(state: ServerState, request: Request) -> Response:
    return json_response(openapi_document(state.cfg))
