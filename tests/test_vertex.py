"""The vertex emitter: golden bundles, bodies parsed by Vertex AI's own protobuf types, spec validation."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aws_support import emit_context
from golden_support import assert_golden
from pydantic import ValidationError

from deployc.errors import InputError
from deployc.schema.spec import DeploySpec
from deployc.targets.vertex import CPU_METRIC, REQUESTS_METRIC, VertexTarget

GOLDEN = Path(__file__).parent / "golden" / "vertex"
CASES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())
MODEL_BYTES = b"stand-in for model.onnx: the emitter copies it and hashes it, nothing more\n"
IMAGE = "us-central1-docker.pkg.dev/my-project/serving/deployc-serve:0.1.0"
BASE = {"project": "my-project", "region": "us-central1", "image_uri": IMAGE, "artifact_uri": "gs://my-models"}


def load_spec(path: Path) -> DeploySpec:
    from ruamel.yaml import YAML

    return DeploySpec.model_validate(YAML(typ="safe", pure=True).load(path.read_text()))


def spec_for(vertex: dict[str, Any], **extra: Any) -> DeploySpec:
    doc = {"apiVersion": "deployc/v1", "name": "digits", "version": "1.0.0", "model": {"path": "model.onnx"},
           "targets": {"vertex": {**BASE, **vertex}, **extra.pop("targets", {})}, **extra}
    return DeploySpec.model_validate(doc)


def emit(spec: DeploySpec, tmp_path: Path, model: bytes = MODEL_BYTES) -> dict[str, bytes]:
    path = tmp_path / "model.onnx"
    path.write_bytes(model)
    return VertexTarget().emit(emit_context(spec, path))


def emit_case(case: str, tmp_path: Path) -> dict[str, bytes]:
    return emit(load_spec(GOLDEN / case / "deploy.yaml"), tmp_path)


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, tmp_path: Path) -> None:
    assert_golden(emit_case(case, tmp_path), GOLDEN / case / "expected")


@pytest.mark.parametrize("case", CASES)
def test_bodies_parse_as_vertex_ai_requests(case: str, tmp_path: Path) -> None:
    """google-cloud-aiplatform's protobuf types reject unknown fields and wrong value types."""
    pytest.importorskip("google.cloud.aiplatform_v1")
    from google.cloud.aiplatform_v1.types import DeployModelRequest, Endpoint, UploadModelRequest
    from google.protobuf import json_format

    files = emit_case(case, tmp_path)
    spec = load_spec(GOLDEN / case / "deploy.yaml")
    cfg = spec.targets.vertex
    assert cfg is not None
    upload = json_format.ParseDict(json.loads(files["vertex/model-upload.json"]), UploadModelRequest.pb()())
    deploy = json_format.ParseDict(json.loads(files["vertex/deploy-model.json"]), DeployModelRequest.pb()())
    endpoint = json_format.ParseDict(json.loads(files["vertex/endpoint.json"]), Endpoint.pb()())

    assert re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", upload.model_id)  # UploadModelRequest.model_id's rule
    container = upload.model.container_spec
    assert container.image_uri == cfg.image_uri
    assert [p.container_port for p in container.ports] == [8080]
    assert (container.predict_route, container.health_route) == ("/invocations", "/v2/health/ready")
    assert list(container.args[-4:]) == ["--host", "0.0.0.0", "--port", "8080"]
    assert upload.model.artifact_uri == f"{cfg.artifact_uri.rstrip('/')}/digits/{upload.model_id}"
    assert upload.model.labels["deployc-model"] == "digits"

    resources = deploy.deployed_model.dedicated_resources
    assert deploy.deployed_model.model == (f"projects/{cfg.project}/locations/{cfg.region}/models/"
                                           f"{upload.model_id}")
    assert resources.machine_spec.machine_type == cfg.machine_type
    assert (resources.min_replica_count, resources.max_replica_count) == (cfg.min_replicas,
                                                                         cfg.resolved_max_replicas())
    assert dict(deploy.traffic_split) == {"0": cfg.traffic_percent}
    assert deploy.deployed_model.service_account == (cfg.service_account or "")
    assert endpoint.display_name == "digits" and dict(endpoint.labels).items() >= cfg.labels.items()
    metrics = {m.metric_name: m.target for m in resources.autoscaling_metric_specs}
    if cfg.autoscaling:
        assert metrics == {CPU_METRIC: cfg.autoscaling.cpu_target_percent,
                           REQUESTS_METRIC: cfg.autoscaling.requests_per_minute}
    else:
        assert metrics == {}


def test_served_folder_drops_bearer_auth_and_binds_the_container_port(tmp_path: Path) -> None:
    files = emit_case("autoscaling-split", tmp_path)
    serving = json.loads(files["vertex/model/serving.json"])
    assert serving["server"] == {"host": "0.0.0.0", "port": 8080, "workers": 2, "max_body_bytes": 8 * 1024 * 1024,
                                 "auth_token_env": None, "grpc_port": None}  # Vertex AI sends no token and
    # routes only the HTTP port; local settings otherwise kept
    assert serving["batching"]["max_batch_size"] == 16
    assert files["vertex/model/model.onnx"] == MODEL_BYTES
    assert files["vertex/model/labels.txt"] == b"zero\none\ntwo\n"


def test_model_id_follows_the_model_folder(tmp_path: Path) -> None:
    def ids(spec: DeploySpec, model: bytes = MODEL_BYTES) -> tuple[str, str]:
        files = emit(spec, tmp_path, model)
        upload = json.loads(files["vertex/model-upload.json"])
        return upload["modelId"], json.loads(files["vertex/deploy-model.json"])["deployedModel"]["model"]

    first = ids(spec_for({}))
    assert first == ids(spec_for({}))  # same build, same id: deploy.sh uploads nothing the second time
    assert ids(spec_for({}), b"another model")[0] != first[0]
    assert ids(spec_for({}, targets={"local": {"batching": {"max_batch_size": 8}}}))[0] != first[0]
    assert ids(spec_for({"machine_type": "n1-standard-8"})) == first  # deployment settings: the same Model
    # validation refuses the name (spec_name_problems); the emitter still refuses a spec that skipped it
    with pytest.raises(InputError, match="starts with a digit.*endpoint_id"):
        emit(spec_for({}).model_copy(update={"name": "7segments"}), tmp_path)
    files = emit(spec_for({"endpoint_id": "seven"}, name="7segments"), tmp_path)
    assert json.loads(files["vertex/model-upload.json"])["modelId"].startswith("m7segments-")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("region", "europe-west5", "not a Vertex AI region; did you mean europe-west"),
    ("machine_type", "n1-standard-3", "did you mean n1-standard-"),
    ("artifact_uri", "s3://bucket/models", "should match pattern"),
    ("project", "My_Project", "should match pattern"),
    ("service_account", "someone@example.com", "should match pattern"),
    ("labels", {"Team": "ml"}, "label key 'Team'"),
    ("labels", {"team": "ML Ops"}, "is not a Vertex AI label value"),
    ("labels", {"deployc-model": "x"}, "set by deployc"),
    ("traffic_percent", 0, "greater than or equal to 1"),
    ("max_replicas", 0, "greater than or equal to 1"),
    ("autoscaling", {"cpu_target_percent": 60}, "autoscaling needs max_replicas greater than min_replicas"),
    ("autoscaling", {}, "set cpu_target_percent, requests_per_minute or both"),
    ("machine", "n1-standard-2", "Extra inputs are not permitted"),
])
def test_spec_errors_name_the_problem(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec_for({field: value})


def test_min_above_max_is_rejected() -> None:
    with pytest.raises(ValidationError, match="max_replicas must be at least min_replicas"):
        spec_for({"min_replicas": 3, "max_replicas": 2})


def test_labels_are_refused_each_at_its_key() -> None:
    from deployc.schema.spec import CrossFieldErrors

    with pytest.raises(ValidationError) as info:
        spec_for({"labels": {"team": "ml", "Cost": "x", "env": "prod.eu", "k" * 64: "v"}})
    (err,) = info.value.errors()
    cross = err["ctx"]["error"]
    assert isinstance(cross, CrossFieldErrors)
    assert [loc for loc, _ in cross.problems] == [("Cost",), ("env",), ("k" * 64,)]


@pytest.mark.parametrize(("name", "endpoint_id", "refused"), [
    ("7segments", None, True), ("7segments", "seven", False), ("digits", None, False)])
def test_endpoint_id_derived_from_the_name_must_start_with_a_letter(name: str, endpoint_id: str | None,
                                                                    refused: bool) -> None:
    cfg = spec_for({} if endpoint_id is None else {"endpoint_id": endpoint_id}).targets.vertex
    assert cfg is not None
    problems = cfg.spec_name_problems(name)
    assert bool(problems) is refused
    if refused:
        assert problems[0][0] == ("targets", "vertex") and "set endpoint_id" in problems[0][1]
