"""`!ENV NAME` in targets.sagemaker.environment: never in the build, resolved by `deployc deploy` (moto, real HTTP).

The variable holds a recognisable value while the build runs; no byte of the build (nor of the packed model,
nor of the cache) may contain it. The deploy passes it to CreateModel, and refuses to start without it.
"""
from __future__ import annotations

import gzip
import json
import re
import tarfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_support import BUCKET, IMAGE, ROLE, moto_server, reset_moto, tiny_onnx
from botocore.exceptions import ClientError
from test_sagemaker_deploy import Recorder

from deployc.api import build
from deployc.deploy.cli import main as deploy_main
from deployc.deploy.sagemaker import deploy
from deployc.errors import DeployError, InputError
from deployc.schema.envref import parameter_names

__all__ = ["moto_server"]
SECRET = "sentinel-Zq8v-4471-secret"
SPEC = f"""\
apiVersion: deployc/v1
name: digits
model: {{path: model.onnx}}
targets:
  sagemaker:
    region: us-east-1
    role_arn: {ROLE}
    image_uri: {IMAGE}
    s3_prefix: s3://{BUCKET}/models
    instance_type: ml.m5.large
    environment:
      LOG_LEVEL: info
      API_KEY: !ENV DIGITS_API_KEY
      API_KEY_COPY: !ENV DIGITS_API_KEY
"""


@pytest.fixture
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real build of SPEC, made while $DIGITS_API_KEY holds SECRET; the variable is unset afterwards."""
    (tmp_path / "deploy.yaml").write_text(SPEC)
    tiny_onnx(tmp_path / "model.onnx")
    monkeypatch.setenv("DIGITS_API_KEY", SECRET)
    out = build(tmp_path / "deploy.yaml", tmp_path / "build", tmp_path / "cache").out_dir
    monkeypatch.delenv("DIGITS_API_KEY")
    return out


@pytest.fixture
def aws(moto_server: str) -> Iterator[str]:
    reset_moto(moto_server)
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield moto_server


def describe_model(url: str, name: str) -> dict[str, Any]:
    return boto3.client("sagemaker", endpoint_url=url, region_name="us-east-1").describe_model(ModelName=name)


def test_the_value_is_in_no_file_of_the_build_nor_the_cache(built: Path) -> None:
    files = [p for p in built.parent.rglob("*") if p.is_file() and p.name != "model.onnx"]
    assert any(p.name == "deploy-plan.json" for p in files)
    assert any("cache" in p.relative_to(built.parent).parts for p in files)
    for path in files:
        data = path.read_bytes()
        assert SECRET.encode() not in data, path
        if path.suffix == ".gz":
            assert SECRET.encode() not in gzip.decompress(data), path
            with tarfile.open(fileobj=BytesIO(data), mode="r:gz") as tar:
                for member in tar.getmembers():
                    assert SECRET.encode() not in tar.extractfile(member).read()  # type: ignore[union-attr]


def test_plan_and_template_carry_the_reference(built: Path) -> None:
    from cfnlint.api import lint
    from ruamel.yaml import YAML

    plan = json.loads((built / "sagemaker/deploy-plan.json").read_text())
    model = next(c["parameters"] for c in plan["calls"] if c["operation"] == "create_model")
    assert model["PrimaryContainer"]["Environment"] == {
        "API_KEY": {"$env": "DIGITS_API_KEY"}, "API_KEY_COPY": {"$env": "DIGITS_API_KEY"}, "LOG_LEVEL": "info"}
    text = (built / "sagemaker/cloudformation.yaml").read_text()
    doc = YAML(typ="safe", pure=True).load(text)
    assert doc["Parameters"]["EnvDIGITSAPIKEY"]["NoEcho"] is True
    param = doc["Parameters"]["EnvDIGITSAPIKEY"]
    assert param["Type"] == "String" and "Default" not in param
    assert doc["Resources"]["Model"]["Properties"]["PrimaryContainer"]["Environment"] == {
        "API_KEY": {"Ref": "EnvDIGITSAPIKEY"}, "API_KEY_COPY": {"Ref": "EnvDIGITSAPIKEY"}, "LOG_LEVEL": "info"}
    matches = lint(text, regions=["us-east-1"])
    assert not [m for m in matches if m.rule.id[0] in "EW"], "\n".join(map(str, matches))


def test_names_follow_the_reference_not_the_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "deploy.yaml").write_text(SPEC)
    tiny_onnx(tmp_path / "model.onnx")
    plans = []
    for i, value in enumerate(("one-value", "another-value")):
        monkeypatch.setenv("DIGITS_API_KEY", value)
        out = build(tmp_path / "deploy.yaml", tmp_path / f"b{i}", tmp_path / "cache").out_dir
        plans.append((out / "sagemaker/deploy-plan.json").read_bytes())
    assert plans[0] == plans[1]
    (tmp_path / "deploy.yaml").write_text(SPEC.replace("!ENV DIGITS_API_KEY\n", "!ENV DIGITS_API_KEY_V2\n", 1))
    out = build(tmp_path / "deploy.yaml", tmp_path / "b2", tmp_path / "cache").out_dir
    renamed = json.loads((out / "sagemaker/deploy-plan.json").read_bytes())
    assert renamed["model_name"] != json.loads(plans[0])["model_name"]  # rotation: a new reference, a new model


def test_parameter_names_are_distinct() -> None:
    names = parameter_names(["DIGITS_API_KEY", "DIGITSAPI_KEY", "TOKEN"], taken=["EnvTOKEN"])
    assert len(set(names.values())) == 3 and all(n.isalnum() and n.startswith("Env") for n in names.values())
    assert names["TOKEN"].startswith("EnvTOKENX")
    assert parameter_names(["DIGITS_API_KEY"]) == {"DIGITS_API_KEY": "EnvDIGITSAPIKEY"}


def test_deploy_passes_the_value_to_create_model(aws: str, built: Path, capsys: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITS_API_KEY", SECRET)
    assert deploy_main([str(built), "--target", "sagemaker", "--endpoint-url", aws]) == 0
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    plan = json.loads((built / "sagemaker/deploy-plan.json").read_text())
    env = describe_model(aws, plan["model_name"])["PrimaryContainer"]["Environment"]
    assert env == {"API_KEY": SECRET, "API_KEY_COPY": SECRET, "LOG_LEVEL": "info"}

    # a rotated value meets the immutable model: nothing is created, the deploy says so (without the values)
    monkeypatch.setenv("DIGITS_API_KEY", "rotated-" + SECRET)
    lines: list[str] = []
    rec = Recorder(aws)
    result = deploy(built, clients=rec, log=lines.append, poll_s=0.01)
    assert result["changed"] is False and rec.writes() == []
    assert any("NOT deployed" in line and "API_KEY ($DIGITS_API_KEY)" in line for line in lines)
    assert not any(SECRET in line for line in lines)
    assert describe_model(aws, plan["model_name"])["PrimaryContainer"]["Environment"]["API_KEY"] == SECRET


def test_unset_variable_stops_before_any_call(aws: str, built: Path, capsys: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIGITS_API_KEY", raising=False)
    rec = Recorder(aws)
    with pytest.raises(InputError, match=r"environment variable DIGITS_API_KEY is not set "
                                         r"\(targets.sagemaker.environment.API_KEY is !ENV DIGITS_API_KEY\)"):
        deploy(built, clients=rec, log=lambda _: None)
    assert rec.ops == []
    with pytest.raises(InputError, match="DIGITS_API_KEY is empty"):
        deploy(built, clients=rec, log=lambda _: None, environ={"DIGITS_API_KEY": ""})
    assert rec.ops == []
    assert deploy_main([str(built), "--target", "sagemaker", "--endpoint-url", aws]) == 1
    err = capsys.readouterr().err
    assert "error: environment variable DIGITS_API_KEY is not set" in err and "Traceback" not in err
    models = boto3.client("sagemaker", endpoint_url=aws, region_name="us-east-1").list_models()["Models"]
    assert models == []


def test_dry_run_prints_the_reference_never_the_value(built: Path, capsys: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITS_API_KEY", SECRET)
    assert deploy_main([str(built), "--target", "sagemaker", "--dry-run", "--endpoint-url", "http://127.0.0.1:9"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert '"API_KEY": {"$env": "DIGITS_API_KEY"}' in out
    assert "environment API_KEY would come from $DIGITS_API_KEY (set)" in out
    monkeypatch.delenv("DIGITS_API_KEY")
    assert deploy_main([str(built), "--target", "sagemaker", "--dry-run", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    deploy_main([str(built), "--target", "sagemaker", "--dry-run"])
    assert "$DIGITS_API_KEY (NOT SET: a deploy stops)" in capsys.readouterr().out


def test_aws_errors_quoting_the_value_are_scrubbed(aws: str, built: Path) -> None:
    def refuse(**_: Any) -> Any:  # AWS validation errors quote the parameters they refuse
        raise ClientError({"Error": {"Code": "ValidationException", "Message": f"Value '{{API_KEY={SECRET}}}' at "
                                     "'primaryContainer.environment' failed to satisfy constraint"}}, "CreateModel")

    rec = Recorder(aws, {"before-call.sagemaker.CreateModel": refuse})
    with pytest.raises(DeployError) as info:
        deploy(built, clients=rec, log=lambda _: None, environ={"DIGITS_API_KEY": SECRET})
    assert SECRET not in str(info.value)
    assert "sagemaker.create_model: ValidationException: Value '{API_KEY=***}'" in str(info.value)


@pytest.mark.parametrize("value, message", [
    ({"$env": "AWS_SECRET_ACCESS_KEY"}, "would hand the deployer's AWS credentials to the container"),
    ({"name": "X"}, "a value is a string (quote numbers and booleans) or an !ENV reference, not a mapping"),
    (8080, "not a number"),
])
def test_schema_refuses_bad_environment_values(value: Any, message: str) -> None:
    from aws_support import spec_for
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=re.escape(message)):
        spec_for({"environment": {"KEY": value}})
