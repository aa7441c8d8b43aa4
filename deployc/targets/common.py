"""What several targets share: the serving image's base and user, its HEALTHCHECK, and the model folder a cloud
platform's container serves. Targets import it; it imports no target but `local`, whose bundle it reuses."""
from __future__ import annotations

from typing import Any

from deployc import __version__
from deployc import conventions as c
from deployc.targets.base import EmitContext
from deployc.targets.bundle import local_config, serving_files

BASE_IMAGE, BASE_TAG = "python", "3.12-slim"  # FROM BASE_IMAGE:BASE_TAG (build arguments, overridable)
# The user the serving Dockerfiles create (the kserve target's default runAsUser); 10000 and above stays clear of
# host users.
SERVING_UID = 10001

__all__ = ["BASE_IMAGE", "BASE_TAG", "SERVING_UID", "cloud_model_files", "healthcheck", "serving_requirement"]


def serving_requirement(spec: Any, model_format: str = "onnx") -> str:
    """What the serving image pip-installs: deployc's `serve` extra (ONNX Runtime and the server, no TensorFlow),
    with `openvino` (the OpenVINO runtime) only when the build ships an OpenVINO artifact, `explain` (shap) only
    when the bundle serves kernel-shap explanations, and `sign` (model-signing) when the build is signed, so that
    the server can verify the model folder at start (DEPLOYC_VERIFY_KEY)."""
    extras = ["serve"]
    if model_format == "openvino":
        extras.append("openvino")
    explain = getattr(spec, "explain", None)
    if explain is not None and explain.serve.enabled and explain.method == "kernel-shap":
        extras.append("explain")
    if getattr(spec, "signing", None) is not None:
        extras.append("sign")
    return f"deployc[{','.join(extras)}]=={__version__}"


def healthcheck(port: int, route: str) -> list[str]:
    """The image's HEALTHCHECK (for `docker run` and plain container hosts; SageMaker, Azure ML and Kubernetes
    probe the routes themselves): the image's Python asks the server on loopback, no curl needed."""
    url = f"http://127.0.0.1:{port}{route}"
    return ["python", "-c", f"import urllib.request; urllib.request.urlopen({url!r}, timeout=4)"]


def cloud_model_files(ctx: EmitContext) -> dict[str, bytes]:
    """The served folder of a managed cloud endpoint (Vertex AI, Azure ML): the local target's settings, but
    bound to 0.0.0.0:8080 and without bearer auth (the platform authenticates callers itself and sends no token
    to the container)."""
    local = local_config(ctx.spec).model_copy(update={"auth": None})
    return serving_files(ctx, local, host="0.0.0.0", port=c.CLOUD_SERVING_PORT)
