"""The azureml emitter: golden bundles, the YAML loaded by azure-ai-ml's own loaders, the image's entrypoint
serving Azure ML's routes from a mounted model folder, spec validation."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aws_support import emit_context, tiny_onnx
from golden_support import assert_golden
from pydantic import ValidationError
from serve_support import free_port, json_request

from deployc.errors import InputError
from deployc.schema.spec import DeploySpec
from deployc.targets.azureml import MODEL_MOUNT_PATH, AzureMLTarget

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "azureml"
CASES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())
MODEL_BYTES = b"stand-in for model.onnx: the emitter copies it and hashes it, nothing more\n"
IMAGE = "myregistry.azurecr.io/deployc-serve:0.1.0"
pytestmark = pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated")  # azure-ai-ml's marshmallow


def load_spec(path: Path) -> DeploySpec:
    from ruamel.yaml import YAML

    return DeploySpec.model_validate(YAML(typ="safe", pure=True).load(path.read_text()))


def spec_for(azureml: dict[str, Any], **extra: Any) -> DeploySpec:
    doc = {"apiVersion": "deployc/v1", "name": "digits", "version": "1.0.0", "model": {"path": "model.onnx"},
           "targets": {"azureml": {"image": IMAGE, **azureml}}, **extra}
    return DeploySpec.model_validate(doc)


def emit(spec: DeploySpec, tmp_path: Path, model: Path | None = None) -> dict[str, bytes]:
    if model is None:
        model = tmp_path / "model.onnx"
        model.write_bytes(MODEL_BYTES)
    return AzureMLTarget().emit(emit_context(spec, model))


def write(files: dict[str, bytes], out: Path) -> Path:
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    return out / "azureml"


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, tmp_path: Path) -> None:
    assert_golden(emit(load_spec(GOLDEN / case / "deploy.yaml"), tmp_path), GOLDEN / case / "expected")


@pytest.mark.parametrize("case", CASES)
def test_yaml_loads_with_azure_ai_ml(case: str, tmp_path: Path) -> None:
    """azure-ai-ml's loaders apply the CLI v2 schemas offline (unknown fields, types, names, scale settings)."""
    pytest.importorskip("azure.ai.ml")
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    spec = load_spec(GOLDEN / case / "deploy.yaml")
    cfg = spec.targets.azureml
    assert cfg is not None
    folder = write(emit(spec, tmp_path), tmp_path / "out")
    endpoint = load_online_endpoint(folder / "endpoint.yml")
    deployment = load_online_deployment(folder / "deployment.yml")
    assert endpoint.name == deployment.endpoint_name == (cfg.endpoint_name or "digits")
    assert endpoint.auth_mode == cfg.auth_mode
    assert deployment.name == cfg.deployment_name
    assert Path(deployment.model.path) == folder / "model"  # the local folder az ml uploads
    assert deployment.environment.image == cfg.image
    assert deployment.environment.inference_config == {
        "livenessRoute": {"port": 8080, "path": "/v2/health/live"},
        "readinessRoute": {"port": 8080, "path": "/v2/health/ready"},
        "scoringRoute": {"port": 8080, "path": "/invocations"}}
    assert deployment.model_mount_path == MODEL_MOUNT_PATH
    rest = deployment._to_rest_object(location="westeurope").as_dict()  # runs the SDK's deployment checks
    props = rest["properties"]
    assert rest["sku"] == {"name": "Default", "capacity": cfg.instance_count}
    assert props["instanceType"] == cfg.instance_type and props["scaleSettings"] == {"scaleType": "Default"}
    assert props["requestSettings"]["maxConcurrentRequestsPerInstance"] == \
        cfg.request_settings.max_concurrent_requests_per_instance
    assert props["livenessProbe"]["initialDelay"] == f"PT{cfg.liveness_probe.initial_delay}S"
    assert props["readinessProbe"]["period"] == f"PT{cfg.readiness_probe.period}S"
    assert props["environmentVariables"] == cfg.environment_variables


def test_target_utilization_scaling_is_what_azure_rejects_for_managed_endpoints(tmp_path: Path) -> None:
    """Why autoscaling goes to Azure Monitor commands: the SDK refuses target_utilization on managed endpoints."""
    pytest.importorskip("azure.ai.ml")
    from azure.ai.ml import load_online_deployment
    from azure.ai.ml.exceptions import ValidationException
    from ruamel.yaml import YAML

    folder = write(emit(spec_for({}), tmp_path), tmp_path / "out")
    yaml = YAML(typ="safe", pure=True)
    doc = yaml.load((folder / "deployment.yml").read_text())
    doc["scale_settings"] = {"type": "target_utilization", "min_instances": 1, "max_instances": 3}
    with (folder / "deployment.yml").open("w") as f:
        yaml.dump(doc, f)
    with pytest.raises(ValidationException, match="supports DefaultScaleSettings only"):
        load_online_deployment(folder / "deployment.yml")._to_rest_object(location="westeurope")


def test_readme_commands_follow_the_spec(tmp_path: Path) -> None:
    readme = emit(load_spec(GOLDEN / "autoscaling-traffic" / "deploy.yaml"), tmp_path)["azureml/README.md"].decode()
    assert 'az ml online-endpoint update --name "digits-prod" --traffic "green=20 OTHER=80"' in readme
    assert "--all-traffic" not in readme
    assert '--min-count 2 --max-count 6 --count 2' in readme
    assert '--condition "CpuUtilizationPercentage > 60 avg 5m" --scale out 1' in readme
    assert '--condition "CpuUtilizationPercentage < 30 avg 5m" --scale in 1' in readme
    plain = emit(spec_for({}), tmp_path)["azureml/README.md"].decode()
    assert "az ml online-deployment create -f deployment.yml --all-traffic" in plain
    assert "az monitor autoscale" not in plain and "get-credentials" in plain


def test_served_folder_keeps_local_settings_without_bearer_auth(tmp_path: Path) -> None:
    files = emit(load_spec(GOLDEN / "autoscaling-traffic" / "deploy.yaml"), tmp_path)
    serving = json.loads(files["azureml/model/serving.json"])
    assert (serving["server"]["host"], serving["server"]["port"], serving["server"]["auth_token_env"]) == \
        ("0.0.0.0", 8080, None)
    assert serving["batching"]["max_batch_size"] == 16


def test_image_entrypoint_serves_the_mounted_model_on_azure_routes(tmp_path: Path) -> None:
    """The Dockerfile's ENTRYPOINT, run as the container would, on the folder layout Azure ML mounts."""
    from ruamel.yaml import YAML

    files = emit(spec_for({}), tmp_path, tiny_onnx(tmp_path / "model.onnx"))
    mount = tmp_path / "mount"
    write({rel: data for rel, data in files.items() if rel.startswith("azureml/model/")}, mount)
    dockerfile = files["azureml/Dockerfile"].decode()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.*)$", dockerfile, re.M).group(1))  # type: ignore[union-attr]
    assert f'DEPLOYC_MODEL_DIR="{MODEL_MOUNT_PATH}"' in dockerfile
    port = free_port()
    script = entrypoint[2].replace("--port 8080", f"--port {port}")
    routes = YAML(typ="safe", pure=True).load(files["azureml/deployment.yml"].decode())["environment"][
        "inference_config"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # the image's python
    (bin_dir / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "DEPLOYC_MODEL_DIR": str(mount / "azureml")}
    proc = subprocess.Popen([entrypoint[0], entrypoint[1], script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if json_request(port, "GET", routes["readiness_route"]["path"])[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.1)
        assert json_request(port, "GET", routes["liveness_route"]["path"])[0] == 200
        x = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)
        status, body = json_request(port, "POST", routes["scoring_route"]["path"], {"instances": x.tolist()})
        assert status == 200, body
        z = x @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0)
        np.testing.assert_allclose(body["predictions"], np.exp(z) / np.exp(z).sum(), rtol=1e-5, atol=1e-6)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_entrypoint_fails_clearly_without_a_model(tmp_path: Path) -> None:
    files = emit(spec_for({}), tmp_path)
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.*)$", files["azureml/Dockerfile"].decode(), re.M).group(1))  # type: ignore[union-attr]
    proc = subprocess.run(entrypoint, env={**os.environ, "DEPLOYC_MODEL_DIR": str(tmp_path / "empty")},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and f"deployc: no serving.json under {tmp_path / 'empty'}" in proc.stderr


def test_spec_name_that_is_no_endpoint_name_needs_endpoint_name(tmp_path: Path) -> None:
    # validation refuses the name (spec_name_problems); the emitter still refuses a spec that skipped it
    with pytest.raises(InputError, match="not a valid endpoint name.*set endpoint_name"):
        emit(spec_for({}).model_copy(update={"name": "d1"}), tmp_path)
    files = emit(spec_for({"endpoint_name": "digits-one"}, name="d1"), tmp_path)
    assert b"name: digits-one\n" in files["azureml/endpoint.yml"]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("instance_type", "Standard_DS3", "not a managed online endpoint VM size; did you mean Standard_DS3_v2"),
    ("instance_type", "ml.m5.large", "not a managed online endpoint VM size"),
    ("endpoint_name", "1digits", "should match pattern"),
    ("endpoint_name", "digits-", "should match pattern"),
    ("deployment_name", "a" * 33, "should match pattern"),
    ("auth_mode", "none", "Input should be 'key', 'aml_token' or 'aad_token'"),
    ("image", "not an image", "should match pattern"),
    ("environment_variables", {"AZUREML_MODEL_DIR": "/x"}, "set by Azure ML"),
    ("environment_variables", {"1BAD": "x"}, "not an environment variable name"),
    ("autoscaling", {"min_instances": 2, "max_instances": 2}, "max_instances must be greater than min_instances"),
    ("autoscaling", {"min_instances": 2, "max_instances": 4}, "instance_count 1 is outside"),
    ("request_settings", {"request_timeout_ms": 200000}, "less than or equal to 180000"),
    ("liveness_probe", {"success_threshold": 2}, "less than or equal to 1"),
    ("traffic_percent", 101, "less than or equal to 100"),
    ("scale_settings", {"type": "default"}, "Extra inputs are not permitted"),
])
def test_spec_errors_name_the_problem(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec_for({field: value})


@pytest.mark.parametrize(("name", "refused"), [("d1", True), ("1digits", True), ("a" * 33, True),
                                               ("a" * 32, False), ("digits-azureml", False)])
def test_endpoint_name_derived_from_the_spec_name_follows_azure_rules(name: str, refused: bool) -> None:
    cfg = spec_for({}).targets.azureml
    assert cfg is not None
    problems = cfg.spec_name_problems(name)
    assert bool(problems) is refused
    if refused:
        assert problems == [(("targets", "azureml"), problems[0][1])] and "set endpoint_name" in problems[0][1]
    named = spec_for({"endpoint_name": "digits-one"}).targets.azureml
    assert named is not None and named.spec_name_problems(name) == []


def test_dockerfile_runs_as_a_non_root_user_with_a_healthcheck(tmp_path: Path) -> None:
    text = emit(spec_for({}), tmp_path)["azureml/Dockerfile"].decode()
    lines = text.splitlines()
    assert [line for line in lines if line.startswith("USER ")] == ["USER 10001:10001"]
    assert "useradd --system --uid 10001 --gid 10001" in text
    (check,) = [line for line in lines if line.startswith("HEALTHCHECK ")]
    cmd = json.loads(check.split(" CMD ", 1)[1])
    assert cmd[:2] == ["python", "-c"] and "http://127.0.0.1:8080/v2/health/live" in cmd[2]
    assert "FROM ${BASE_IMAGE}:${BASE_TAG}" in lines
