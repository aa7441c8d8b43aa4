"""The target registry: built-ins as one unit each (schema field, description, checks, metrics), the order
emitters run in, and what it refuses."""
from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

import deployc.targets as targets
from deployc.plugins import PluginError
from deployc.schema import DeploySpec
from deployc.schema.spec import Targets
from deployc.targets import Target, emit_order, get_target, serving_targets, target_names

BASE: dict[str, Any] = {"apiVersion": "deployc/v1", "name": "digits", "model": {"path": "model.keras"}}


def test_targets_schema_is_built_from_the_registry() -> None:
    assert tuple(Targets.model_fields) == target_names()
    for name, field in Targets.model_fields.items():
        cls = type(get_target(name))
        assert field.description == cls.description and field.default is None
        assert cls.config_model in field.annotation.__args__  # type: ignore[union-attr]


def test_serving_targets_and_kserves_runtime() -> None:
    assert serving_targets() == ("local", "sagemaker", "kserve", "vertex", "azureml")
    latency = [{"kind": "latency", "objective": 99, "threshold_ms": 50}]
    kserve = {"storage_uri": "gs://b/m", "runtime": "onnx"}
    with pytest.raises(ValidationError, match=r"a latency SLO needs a target that runs `deployc serve` \(local, "):
        DeploySpec.model_validate({**BASE, "targets": {"kserve": kserve}, "slos": latency})
    served = {"storage_uri": "gs://b/m", "image": "registry.example/deployc:1"}
    DeploySpec.model_validate({**BASE, "targets": {"kserve": served}, "slos": latency})


def test_target_checks_run_at_validation_with_their_locations() -> None:
    doc = {**BASE, "model": {"path": "m.onnx"}, "targets": {"tflite": {"quantization": "auto"}}}
    with pytest.raises(ValidationError) as info:
        DeploySpec.model_validate(doc)
    problems = info.value.errors()[0]["ctx"]["error"].problems
    assert (("targets", "tflite", "quantization"), "quantization auto evaluates candidates on data.eval: set it") \
        in problems
    assert (("targets", "tflite"), "tflite needs a Keras or SavedModel model, not ONNX") in problems


def test_vertex_artifact_uri_deploy_sh_cannot_quote_is_a_spec_error() -> None:
    vertex = {"project": "my-project-1", "region": "us-central1", "image_uri": "us-docker.pkg.dev/p/r/i:1",
              "artifact_uri": "gs://bucket/models/it's"}
    with pytest.raises(ValidationError, match="deploy.sh cannot quote"):
        DeploySpec.model_validate({**BASE, "targets": {"vertex": vertex}})


def _fake(name: str, after: tuple[str, ...]) -> type[Target]:
    return type(name, (Target,), {"name": name, "after": after})


def test_emit_order_follows_after_and_refuses_cycles(monkeypatch: pytest.MonkeyPatch) -> None:
    classes = {"a": _fake("a", ("c",)), "b": _fake("b", ()), "c": _fake("c", ("b", "absent"))}
    monkeypatch.setattr(targets, "target_class", classes.__getitem__)
    assert emit_order(("a", "b", "c")) == ("b", "c", "a")
    assert emit_order(("a", "c")) == ("c", "a")  # an `after` target the spec does not set is no constraint
    classes["b"] = _fake("b", ("a",))
    with pytest.raises(PluginError, match="cycle: a -> c -> b -> a"):
        emit_order(("a", "b", "c"))


def test_builtins_emit_in_registry_order() -> None:
    assert emit_order(target_names()) == target_names()


def test_a_registered_class_that_is_no_target_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from deployc.plugins import Entry

    fake = {"odd": Entry("odd", "deployc.conventions:LOCAL_DIR", "deployc-odd", "1.0")}
    monkeypatch.setattr(targets, "registry", lambda: fake)
    targets.target_class.cache_clear()
    try:
        with pytest.raises(PluginError, match="is not a deployc.targets.Target"):
            targets.target_class("odd")
    finally:
        targets.target_class.cache_clear()


@pytest.mark.parametrize("module", ["deployc.schema.spec", "deployc.compiler.steps", "deployc.compiler.plan",
                                    "deployc.targets.local", "deployc.targets.tflite", "deployc.monitoring"])
def test_each_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    """The schema loads every target module while it builds `targets:`, so no module those import may need the
    spec model at import time (a partially initialised deployc.schema.spec would fail here)."""
    proc = subprocess.run([sys.executable, "-c", f"import {module}; import deployc.schema.spec as s; "
                           "assert 'local' in s.Targets.model_fields"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
