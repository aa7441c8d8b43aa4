"""`monitoring.capture` on the sagemaker target: DataCaptureConfig in the plan and the template, and the refusals
(SageMaker's own capture cannot mask)."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from aws_support import emit_context, spec_for, tiny_onnx
from conftest import run_deployc
from pydantic import ValidationError

from deployc.targets.sagemaker import SageMakerTarget

KMS = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
CAPTURE = {"sampling_percent": 25, "outputs": [], "s3": {"destination": "s3://capture-bucket/tiny", "kms_key": KMS}}


def emit(tmp_path: Path, capture: dict[str, Any], sm: dict[str, Any] | None = None) -> dict[str, bytes]:
    spec = spec_for(sm or {}, monitoring={"capture": capture})
    return SageMakerTarget().emit(emit_context(spec, tiny_onnx(tmp_path / "model.onnx"), alarms=None))


def test_capture_compiles_into_data_capture_config_in_plan_and_template(tmp_path: Path) -> None:
    from ruamel.yaml import YAML

    files = emit(tmp_path, CAPTURE)
    want = {"EnableCapture": True, "InitialSamplingPercentage": 25, "DestinationS3Uri": "s3://capture-bucket/tiny",
            "CaptureOptions": [{"CaptureMode": "Input"}], "KmsKeyId": KMS}
    plan = json.loads(files["sagemaker/deploy-plan.json"])
    config = next(c["parameters"] for c in plan["calls"] if c["operation"] == "create_endpoint_config")
    assert config["DataCaptureConfig"] == want
    doc = YAML(typ="safe", pure=True).load(files["sagemaker/cloudformation.yaml"].decode())
    assert doc["Resources"]["EndpointConfig"]["Properties"]["DataCaptureConfig"] == want
    with tarfile.open(fileobj=io.BytesIO(files["sagemaker/model.tar.gz"]), mode="r:gz") as tar:
        serving = json.loads(tar.extractfile("serving.json").read())  # type: ignore[union-attr]
    assert "capture" not in serving  # SageMaker captures; the container writes no files of its own
    # the KMS key of the target serves when the capture names none; a capture change renames the config
    other = emit(tmp_path, {**CAPTURE, "outputs": None, "s3": {"destination": "s3://capture-bucket/tiny"}},
                 {"kms_key": "alias/ml"})
    plan2 = json.loads(other["sagemaker/deploy-plan.json"])
    config2 = next(c["parameters"] for c in plan2["calls"] if c["operation"] == "create_endpoint_config")
    assert config2["DataCaptureConfig"]["KmsKeyId"] == "alias/ml"
    assert config2["DataCaptureConfig"]["CaptureOptions"] == [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]
    assert plan2["endpoint_config_name"] != plan["endpoint_config_name"]


def test_template_with_capture_passes_cfn_lint(tmp_path: Path) -> None:
    from cfnlint.api import lint

    matches = lint(emit(tmp_path, CAPTURE)["sagemaker/cloudformation.yaml"].decode(), regions=["us-east-1"])
    assert not [m for m in matches if m.rule.id[0] in "EW"], "\n".join(str(m) for m in matches)


@pytest.mark.parametrize(("capture", "sm", "message"), [
    ({**CAPTURE, "fields": {"x": {"mask": "round", "decimals": 1}}}, {}, "fields.x is masked (round), and "
     "SageMaker's DataCaptureConfig writes whole requests"),
    ({**CAPTURE, "fields": {"x": {"mask": "drop", "sensitive": True}}}, {}, "fields.x is marked sensitive"),
    ({**CAPTURE, "request_id": {"mask": "hash", "salt_env": "SALT"}}, {}, "request_id is masked (hash)"),
    ({**CAPTURE, "s3": {"destination": "s3://capture-bucket/tiny"}}, {}, "set monitoring.capture.s3.kms_key"),
    ({k: v for k, v in CAPTURE.items() if k != "s3"}, {}, "set monitoring.capture.s3"),
    ({**CAPTURE, "sampling_percent": 2.5}, {}, "whole percents"),
    ({**CAPTURE, "inputs": ["x"]}, {}, "SageMaker captures all inputs or none"),
    (CAPTURE, {"data_capture": {"sampling_percent": 5, "destination": "s3://capture-bucket/x"}},
     "capture is set twice"),
])
def test_sagemaker_refuses_what_its_capture_cannot_mask(capture: dict[str, Any], sm: dict[str, Any],
                                                        message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec_for(sm, monitoring={"capture": capture})


def test_the_refusal_is_a_located_validate_error(tmp_path: Path) -> None:
    tiny_onnx(tmp_path / "model.onnx")
    (tmp_path / "deploy.yaml").write_text(f"""apiVersion: deployc/v1
name: tiny
model: {{path: model.onnx}}
targets:
  sagemaker: {{region: us-east-1, role_arn: "arn:aws:iam::123456789012:role/r",
              image_uri: 123456789012.dkr.ecr.us-east-1.amazonaws.com/s:1, s3_prefix: s3://b-bucket/m}}
monitoring:
  capture:
    sampling_percent: 10
    fields:
      x: {{mask: drop, sensitive: true}}
    s3: {{destination: s3://capture-bucket/tiny, kms_key: "{KMS}"}}
""")
    r = run_deployc("validate", "deploy.yaml", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.startswith("deploy.yaml:11:7: monitoring.capture.fields.x: fields.x is marked sensitive, and "
                               "SageMaker's DataCaptureConfig writes whole requests"), r.stderr
