"""Helpers for the SageMaker tests: a tiny ONNX model, an EmitContext, a written bundle, moto in server mode."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployc import conventions as c
from deployc.manifest import make_manifest, sha256_bytes
from deployc.schema.spec import DeploySpec
from deployc.targets.base import EmitContext, TensorInfo

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
ROLE = "arn:aws:iam::123456789012:role/deployc-sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/deployc-serve:0.1.0"
BUCKET = "deployc-models"


def tiny_onnx(path: Path, *, scale: float = 1.0) -> Path:
    """A 4-in, 3-out linear classifier with softmax; `scale` changes its weights (a "new model")."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = (np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0) * scale
    b = np.zeros(3, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def tiny_onnx_project(folder: Path, rows: int, spec: str) -> Path:
    """`folder` with tiny_onnx's model.onnx, eval.npz (`rows` fixed-seed rows of 4 values, labels 0-2) and
    deploy.yaml holding `spec`."""
    import numpy as np

    folder.mkdir(parents=True)
    tiny_onnx(folder / "model.onnx")
    x = np.random.default_rng(0).normal(size=(rows, 4)).astype(np.float32)
    np.savez(folder / "eval.npz", x=x, y=np.arange(rows) % 3)
    (folder / "deploy.yaml").write_text(spec)
    return folder


def spec_for(sagemaker: dict[str, Any], **extra: Any) -> DeploySpec:
    sm = {"region": "us-east-1", "role_arn": ROLE, "image_uri": IMAGE, "s3_prefix": f"s3://{BUCKET}/models",
          **sagemaker}
    doc = {"apiVersion": "deployc/v1", "name": "digits", "version": "1.0.0", "model": {"path": "model.onnx"},
           "targets": {"sagemaker": sm, **extra.pop("targets", {})}, **extra}
    return DeploySpec.model_validate(doc)


ALARMS = [
    {"logical_id": "AvailabilityPageAlarm", "properties": {
        "AlarmName": "digits-availability-page",
        "AlarmDescription": "digits availability: error budget burning 14.4x over 1h",
        "Metrics": [
            {"Id": "errors", "ReturnData": False, "MetricStat": {"Period": 60, "Stat": "Sum", "Metric": {
                "Namespace": c.CLOUDWATCH_NAMESPACE, "MetricName": "Invocation5XXErrors",
                "Dimensions": [{"Name": "EndpointName", "Value": "digits"},
                               {"Name": "VariantName", "Value": c.SAGEMAKER_VARIANT_NAME}]}}},
            {"Id": "total", "ReturnData": False, "MetricStat": {"Period": 60, "Stat": "Sum", "Metric": {
                "Namespace": c.CLOUDWATCH_NAMESPACE, "MetricName": "Invocations",
                "Dimensions": [{"Name": "EndpointName", "Value": "digits"},
                               {"Name": "VariantName", "Value": c.SAGEMAKER_VARIANT_NAME}]}}},
            {"Id": "ratio", "Expression": "errors / total", "Label": "error ratio", "ReturnData": True},
        ],
        "EvaluationPeriods": 5, "DatapointsToAlarm": 5, "Threshold": 0.0144,
        "ComparisonOperator": "GreaterThanThreshold", "TreatMissingData": "notBreaching",
        "AlarmActions": ["arn:aws:sns:us-east-1:123456789012:oncall"]}},
    {"logical_id": "LatencyTicketAlarm", "properties": {
        "AlarmName": "digits-latency-ticket",
        "AlarmDescription": "digits latency: p99 model latency above 250 ms",
        "Namespace": c.CLOUDWATCH_NAMESPACE, "MetricName": "ModelLatency",
        "Dimensions": [{"Name": "EndpointName", "Value": "digits"},
                       {"Name": "VariantName", "Value": c.SAGEMAKER_VARIANT_NAME}],
        "ExtendedStatistic": "p99", "Period": 300, "EvaluationPeriods": 3, "DatapointsToAlarm": 2,
        "Threshold": 250000.0, "ComparisonOperator": "GreaterThanThreshold", "TreatMissingData": "missing",
        "AlarmActions": []}},
]


class FixedAlarms:
    """Stands in for the monitoring model where a test gives the CloudWatch alarms by hand."""

    def __init__(self, alarms: list[dict[str, Any]]) -> None:
        self._alarms = alarms

    def alarms(self, endpoint_name: str, variant_name: str) -> list[dict[str, Any]]:
        return self._alarms

    def alarms_document(self, endpoint_name: str, variant_name: str) -> bytes:
        return json.dumps({"endpoint_name": endpoint_name, "variant_name": variant_name,
                           "alarms": self._alarms}).encode()


def emit_context(spec: DeploySpec, model: Path, *, alarms: list[dict[str, Any]] | None = None) -> EmitContext:
    return EmitContext(
        spec=spec, spec_file="deploy.yaml", onnx_model=model, onnx_sha256=sha256_bytes(model.read_bytes()),
        inputs=(TensorInfo("x", "FP32", (-1, 4)),), outputs=(TensorInfo("probs", "FP32", (-1, 3)),),
        labels=("zero", "one", "two"), reference_distribution=None, latency_buckets=c.DEFAULT_LATENCY_BUCKETS,
        monitoring=FixedAlarms(alarms) if alarms is not None else None,  # type: ignore[arg-type]
    )


def write_bundle(out: Path, files: dict[str, bytes]) -> Path:
    """What the writer does for a build: the files plus a manifest.json listing them."""
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    manifest = make_manifest(files, name="digits", version="1.0.0", spec_sha256="0" * 64, versions={})
    (out / c.MANIFEST).write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto in server mode on a free loopback port; yields its URL. Fake credentials for the whole session."""
    old = {k: os.environ.get(k) for k in FAKE_CREDENTIALS}
    os.environ.update(FAKE_CREDENTIALS)
    port = _free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def reset_moto(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=5).close()
