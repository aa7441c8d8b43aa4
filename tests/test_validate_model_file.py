"""What the model file's own header tells `deployc validate`, without TensorFlow: the number of classes
against model.labels (ONNX output shape; a .keras archive's Dense output layer)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from conftest import run_deployc
from serve_support import make_mlp

SPEC = "apiVersion: deployc/v1\nname: m\nmodel: {path: MODEL, labels: labels.txt}\ntargets: {local: {}}\n"


def _project(folder: Path, model: str, labels: int) -> Path:
    (folder / "labels.txt").write_text("".join(f"class-{i}\n" for i in range(labels)))
    (folder / "deploy.yaml").write_text(SPEC.replace("MODEL", model))
    return folder


def _keras(path: Path, config: dict[str, object]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps(config))


def _dense(name: str, units: int) -> dict[str, object]:
    return {"class_name": "Dense", "name": name, "config": {"name": name, "units": units}}


FUNCTIONAL = {"class_name": "Functional", "config": {
    "name": "f", "input_layers": [["x", 0, 0]], "output_layers": [["probs", 0, 0]],
    "layers": [{"class_name": "InputLayer", "name": "x", "config": {"name": "x", "batch_shape": [None, 4]}},
               _dense("hidden", 8), _dense("probs", 3)]}}
SEQUENTIAL = {"class_name": "Sequential", "config": {"name": "s", "layers": [_dense("hidden", 8), _dense("out", 3)]}}


@pytest.mark.parametrize("labels", [3, 4])
def test_onnx_output_columns_against_labels(tmp_path: Path, labels: int) -> None:
    make_mlp(tmp_path / "m.onnx", dims=(4, 8, 3))
    r = run_deployc("validate", "deploy.yaml", cwd=_project(tmp_path, "m.onnx", labels))
    if labels == 3:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert "deploy.yaml:3:31: model.labels: 'labels.txt' names 4 classes, but the model's output" in r.stderr
        assert "has 3: one name per output column" in r.stderr


@pytest.mark.parametrize(("config", "output"), [(FUNCTIONAL, "probs"), (SEQUENTIAL, "out")])
def test_keras_dense_output_against_labels(tmp_path: Path, config: dict[str, object], output: str) -> None:
    _keras(tmp_path / "m.keras", config)
    r = run_deployc("validate", "deploy.yaml", cwd=_project(tmp_path, "m.keras", 5))
    assert r.returncode == 1, r.stderr
    assert f"model.labels: 'labels.txt' names 5 classes, but the model's output {output!r} has 3" in r.stderr
    r = run_deployc("validate", "deploy.yaml", cwd=_project(tmp_path, "m.keras", 3))
    assert r.returncode == 0, r.stderr


def test_an_output_the_header_does_not_size_is_left_to_the_build(tmp_path: Path) -> None:
    """A sigmoid unit (1 column, which two names may label) and a non-Dense output layer are not judged here."""
    one = {"class_name": "Sequential", "config": {"name": "s", "layers": [_dense("out", 1)]}}
    _keras(tmp_path / "m.keras", one)
    assert run_deployc("validate", "deploy.yaml", cwd=_project(tmp_path, "m.keras", 2)).returncode == 0
    act = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        _dense("out", 3), {"class_name": "Activation", "name": "a", "config": {"name": "a"}}]}}
    _keras(tmp_path / "m.keras", act)
    assert run_deployc("validate", "deploy.yaml", cwd=_project(tmp_path, "m.keras", 5)).returncode == 0


def _two_input_onnx(path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Add", ["ids", "mask"], ["out"])], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in ("ids", "mask")],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.write_bytes(model.SerializeToString())


TWO_INPUTS_KERAS = {"class_name": "Functional", "config": {
    "name": "f", "input_layers": [["ids", 0, 0], ["mask", 0, 0]], "output_layers": [["out", 0, 0]],
    "layers": [{"class_name": "InputLayer", "name": n, "config": {"name": n, "batch_shape": [None, 4]}}
               for n in ("ids", "mask")] + [_dense("out", 4)]}}


@pytest.mark.parametrize("model", ["m.onnx", "m.keras"])
def test_data_for_a_model_of_several_inputs_is_a_validate_error(tmp_path: Path, model: str) -> None:
    import numpy as np

    if model == "m.onnx":
        _two_input_onnx(tmp_path / model)
    else:
        _keras(tmp_path / model, TWO_INPUTS_KERAS)
    np.savez(tmp_path / "eval.npz", x=np.zeros((4, 4), np.float32))
    spec = f"apiVersion: deployc/v1\nname: m\nmodel: {{path: {model}}}\ntargets: {{local: {{}}}}\n"
    (tmp_path / "deploy.yaml").write_text(spec)
    assert run_deployc("validate", "deploy.yaml", cwd=tmp_path).returncode == 0, "no data: nothing to feed"
    (tmp_path / "deploy.yaml").write_text(spec + "data:\n  eval: {path: eval.npz, x: x}\n")
    r = run_deployc("validate", "deploy.yaml", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert ("deploy.yaml:6:29: data.eval.x: the model has 2 inputs (ids, mask), and data.eval.x names one array"
            in r.stderr), r.stderr
