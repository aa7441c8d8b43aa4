"""The optional parts of an installation (the extras of `pip install 'deployc[...]'`) and the one-line error a
command gives when it needs a library its installation lacks.

The core install (pydantic, jinja2, ruamel.yaml, rich, jsonschema, numpy) runs `validate`, `plan`, `schema`,
`diff` and `init`. Everything heavier is an extra, and the package imports it only inside the functions that
use it, so a missing one surfaces as a `ModuleNotFoundError` at the first use; `missing_extra` turns that into
a `MissingExtra` naming what to install.
"""
from __future__ import annotations

from importlib.util import find_spec

from deployc.errors import DeploycError

# extra -> what it is for. Keep in step with [project.optional-dependencies] in pyproject.toml.
EXTRAS: dict[str, str] = {
    "build": "deployc build (TensorFlow, Keras, tf2onnx, onnx, ONNX Runtime, LiteRT, the passes, the report)",
    "serve": "deployc serve (ONNX Runtime, Starlette, uvicorn, gRPC, Prometheus client; no TensorFlow)",
    "openvino": "OpenVINO artifacts in deployc serve (the OpenVINO runtime; deployc[build] makes them, with NNCF)",
    "explain": "kernel-shap explanations at serving time (shap)",
    "sign": "signed builds: build --sign, verify, serve --require-signature (model-signing)",
    "aws": "deployc deploy to SageMaker, and the remote step cache on S3 (boto3)",
}

# top-level import name -> the extra that installs it
MODULE_EXTRA: dict[str, str] = {
    **dict.fromkeys(("tensorflow", "keras", "tf2onnx", "onnx", "ai_edge_litert", "kubernetes_validate",
                     "matplotlib", "tf_keras"), "build"),
    **dict.fromkeys(("onnxruntime", "starlette", "uvicorn", "orjson", "prometheus_client", "grpc",
                     "google.protobuf"), "serve"),
    "shap": "explain",
    "openvino": "openvino",
    "nncf": "build",
    **dict.fromkeys(("model_signing", "sigstore"), "sign"),
    **dict.fromkeys(("boto3", "botocore"), "aws"),
}

# what a command needs, beyond the core: the extra, and the modules that show it is installed
COMMAND_EXTRA: dict[str, tuple[str, tuple[str, ...]]] = {
    "build": ("build", ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "matplotlib")),
    "serve": ("serve", ("onnxruntime", "starlette", "uvicorn", "orjson", "prometheus_client", "grpc")),
    "deploy": ("aws", ("boto3",)),
}


class MissingExtra(DeploycError):
    """A command needs a library this installation lacks; names the extra that installs it."""

    def __init__(self, what: str, module: str, extra: str):
        self.module, self.extra = module, extra
        super().__init__(f"{what} needs {module}, which is not installed: pip install 'deployc[{extra}]'")


def extra_of(module: str) -> str | None:
    """The extra that installs the top-level module `module` (a dotted name is matched by its first part)."""
    return MODULE_EXTRA.get(module) or MODULE_EXTRA.get(module.split(".")[0])


def missing_extra(exc: ModuleNotFoundError, what: str) -> MissingExtra | None:
    """`exc` as a MissingExtra when the missing module belongs to an extra; None for any other import failure."""
    name = exc.name or ""
    extra = extra_of(name)
    return MissingExtra(what, name if name in MODULE_EXTRA else name.split(".")[0], extra) if extra else None


def require(command: str) -> None:
    """Raise MissingExtra before `deployc <command>` starts work it cannot finish in this installation."""
    if command not in COMMAND_EXTRA:
        return
    extra, modules = COMMAND_EXTRA[command]
    for module in modules:
        if find_spec(module) is None:
            raise MissingExtra(f"deployc {command}", module, extra)
