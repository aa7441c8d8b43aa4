"""Built-in targets, registered in one table. Modules are imported lazily, in the order emitters must run."""
from __future__ import annotations

from importlib import import_module

from deployc.targets.base import EmitContext, Target, TensorInfo

REGISTRY: dict[str, str] = {
    "local": "deployc.targets.local:LocalTarget",
    "tflite": "deployc.targets.tflite:TFLiteTarget",
    "sagemaker": "deployc.targets.sagemaker:SageMakerTarget",
    "kserve": "deployc.targets.kserve:KServeTarget",
    "tfserving": "deployc.targets.tfserving:TFServingTarget",
    "vertex": "deployc.targets.vertex:VertexTarget",
    "azureml": "deployc.targets.azureml:AzureMLTarget",
}


def get_target(name: str) -> Target:
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(import_module(module), attr)()


__all__ = ["REGISTRY", "EmitContext", "Target", "TensorInfo", "get_target"]
