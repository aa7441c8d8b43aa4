"""The tfserving target: golden configs, version numbers, text-proto checks, and the export/verify steps."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from golden_support import assert_golden
from pydantic import ValidationError
from ruamel.yaml import YAML

from deployc.errors import InputError
from deployc.schema import DeploySpec
from deployc.targets import get_target
from deployc.targets.tfserving import EXPORT, VERIFY, config_files, version_number
from deployc.targets.tfserving_proto import ConfigError, check_batching_parameters, check_models_config

GOLDEN = Path(__file__).parent / "golden" / "tfserving"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "deploy.yaml").is_file())
BASE: dict[str, Any] = {"apiVersion": "deployc/v1", "name": "digits", "model": {"path": "model.keras"}}


def spec_of(version: str = "1.0.0", **tfserving: Any) -> DeploySpec:
    """A spec with the given version, also one validation refuses (to test `version_number` on its own)."""
    spec = DeploySpec.model_validate({**BASE, "version": "1.0.0", "targets": {"tfserving": tfserving}})
    return spec.model_copy(update={"version": version})


def case_spec(case: str) -> DeploySpec:
    return DeploySpec.model_validate(YAML(typ="safe", pure=True).load((GOLDEN / case / "deploy.yaml").read_text()))


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    assert_golden(config_files(case_spec(case), "deploy.yaml"), GOLDEN / case / "expected")


@pytest.mark.parametrize("case", CASES)
def test_models_config_loads_as_tensorflow_servings_own_proto(case: str) -> None:
    serving = pytest.importorskip("tensorflow_serving.config.model_server_config_pb2")
    from google.protobuf import text_format

    spec = case_spec(case)
    cfg = text_format.Parse(config_files(spec, "deploy.yaml")["tfserving/models.config"].decode(),
                            serving.ModelServerConfig())
    (model,) = cfg.model_config_list.config
    assert model.name == spec.name and model.model_platform == "tensorflow"
    assert model.base_path == f"{spec.targets.tfserving.base_path}/{spec.name}"
    policy = model.model_version_policy
    if spec.targets.tfserving.version_policy == "specific":
        assert list(policy.specific.versions) == [version_number(spec, spec.targets.tfserving)]
    else:
        assert policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions == 1


def test_batching_file_holds_the_spec_values() -> None:
    files = config_files(case_spec("specific-batching"), "deploy.yaml")
    text = files["tfserving/batching_parameters.txt"].decode()
    assert "max_batch_size { value: 64 }" in text and "batch_timeout_micros { value: 2000 }" in text
    assert "num_batch_threads { value: 8 }" in text and "max_enqueued_batches { value: 50 }" in text
    assert [ln for ln in text.splitlines() if ln.startswith("allowed")] == [
        f"allowed_batch_sizes: {n}" for n in (8, 16, 32, 64)]
    assert "tfserving/batching_parameters.txt" not in config_files(spec_of(), "deploy.yaml")


@pytest.mark.parametrize("version, expected", [("1.2.3", 1_002_003), ("0.1.0", 1_000), ("7", 7),
                                               ("10.999.999", 10_999_999)])
def test_version_number_keeps_release_order(version: str, expected: int) -> None:
    assert version_number(spec_of(version), spec_of(version).targets.tfserving) == expected


@pytest.mark.parametrize("version", ["0.0.0", "1.0.0-rc1", "1.1000.0", "v2", "0"])
def test_version_without_a_number_asks_for_model_version(version: str) -> None:
    with pytest.raises(InputError, match="set targets.tfserving.model_version"):
        version_number(spec_of(version), spec_of(version).targets.tfserving)
    assert version_number(spec_of(version, model_version=3), spec_of(version, model_version=3).targets.tfserving) == 3


def test_version_and_model_format_are_checked_by_validation() -> None:
    with pytest.raises(ValidationError, match="version '0.0.0' gives no version number.*model_version"):
        DeploySpec.model_validate({**BASE, "version": "0.0.0", "targets": {"tfserving": {}}})
    with pytest.raises(ValidationError, match="tfserving needs a Keras or SavedModel model, not ONNX"):
        DeploySpec.model_validate({**BASE, "model": {"path": "m.onnx"}, "targets": {"tfserving": {}}})
    assert get_target("tfserving").check(spec_of()) == []


def test_steps_depend_on_the_keras_stage_and_the_reference() -> None:
    spec = DeploySpec.model_validate({**BASE, "version": "1.0.0", "data": {"eval": {"path": "eval.npz"}},
                                      "targets": {"tfserving": {}}})
    export, verify = get_target("tfserving").steps(spec, Path("/x"), "convert", "optimize[0].prune")
    assert (export.id, verify.id) == (EXPORT, VERIFY)
    assert export.deps == ("optimize[0].prune",) and verify.deps == (EXPORT, "reference")
    assert verify.input_files == (Path("/x/eval.npz"),) and "tensorflow" in export.libs


def test_checks_catch_a_config_that_says_something_else() -> None:
    text = config_files(spec_of("1.0.0"), "deploy.yaml")["tfserving/models.config"].decode()
    check_models_config(text, name="digits", base_path="/models/digits", policy="specific", version=1_000_000)
    with pytest.raises(ConfigError, match="expected"):
        check_models_config(text, name="digits", base_path="/models/digits", policy="specific", version=1)
    with pytest.raises(ConfigError, match="does not parse"):
        check_models_config(text.replace("base_path:", "basepath:"), name="digits", base_path="/models/digits",
                            policy="specific", version=1_000_000)
    with pytest.raises(ConfigError, match="does not parse"):
        check_batching_parameters("max_batch_size: 3\n", {})


@pytest.mark.parametrize("tfserving, message", [
    ({"base_path": "models"}, "String should match pattern"),
    ({"base_path": "/models\"\n}"}, "String should match pattern"),
    ({"model_version": 0}, "greater than or equal to 1"),
    ({"batching": {"max_batch_size": 32, "allowed_batch_sizes": [8, 16]}}, "must equal max_batch_size"),
    ({"batching": {"max_batch_size": 32, "allowed_batch_sizes": [16, 8, 32]}}, "strictly increasing"),
    ({"version_policy": "all"}, "Input should be 'specific' or 'latest'"),
])
def test_schema_refuses_bad_configs(tfserving: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec_of(**tfserving)


def test_onnx_models_cannot_target_tfserving() -> None:
    with pytest.raises(ValidationError, match="tfserving needs a Keras or SavedModel model, not ONNX"):
        DeploySpec.model_validate({**BASE, "model": {"path": "m.onnx"}, "targets": {"tfserving": {}}})
