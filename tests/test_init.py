"""`deployc init`: a starting deploy.yaml read from the model file and its .npz data, checked by `deployc validate`
(and, for digits, by a build), never replacing a file and never importing TensorFlow."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import ROOT, deployc_env, run_deployc
from example_support import trained

from deployc.compiler.model_header import Output, read_model
from deployc.init import guess_task

DATA = ("data/eval.npz", "data/calib.npz", "data/train.npz")
HEAVY = ("tensorflow", "keras", "onnx", "onnxruntime", "tf2onnx")


def _project(src: Path, dst: Path) -> Path:
    """The trained model, labels and data of an example (not its deploy.yaml) in a folder of one test's own."""
    dst.mkdir()
    shutil.copyfile(src / "model.keras", dst / "model.keras")
    shutil.copyfile(src / "labels.txt", dst / "labels.txt")
    shutil.copytree(src / "data", dst / "data")
    return dst


def _init(folder: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    r = run_deployc("init", *args, cwd=folder)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    out = folder / next((args[i + 1] for i, a in enumerate(args) if a == "-o"), "deploy.yaml")
    return r, yaml.safe_load(out.read_text())


def _fails(folder: Path, *args: str) -> str:
    """The one error line of a refused `deployc init` (exit 1, no traceback)."""
    r = run_deployc("init", *args, cwd=folder)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


# the example, its inputs as the model file says them, and what init must write for it
EXAMPLES = {
    "digits": ("pixels float32 [-1, 64]", "classification", "x", "int8-dynamic",
               {"max_accuracy_drop", "min_agreement", "max_size_mb"}),
    "cv": ("image float32 [-1, 16, 16, 1]", "classification", "image", "int8-static",
           {"max_accuracy_drop", "min_agreement", "max_size_mb"}),
    "nlp": ("input_ids int64 [-1, 32], attention_mask int64 [-1, 32]", "classification",
            {"input_ids": "input_ids", "attention_mask": "attention_mask"}, "int8-dynamic",
            {"max_accuracy_drop", "min_agreement", "max_size_mb"}),
    "recsys": ("user_id int64 [-1], item_id int64 [-1], dense float32 [-1, 8]", "binary",
               {"user_id": "user_id", "item_id": "item_id", "dense": "dense"}, "int8-dynamic",
               {"max_auc_drop", "max_size_mb"}),
}


@pytest.fixture
def example(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    name = request.param
    src = request.getfixturevalue("trained_digits") if name == "digits" else trained(tmp_path_factory, name)
    return _project(src, tmp_path / name)


@pytest.mark.parametrize("example", list(EXAMPLES), indirect=True)
def test_init_reads_each_example(example: Path) -> None:
    inputs, task, x, mode, gates = EXAMPLES[example.name]
    r, spec = _init(example, "model.keras", "--data", *DATA)
    text = (example / "deploy.yaml").read_text()
    schema_line = text.splitlines()[0]
    assert schema_line.startswith("# yaml-language-server: $schema=")
    assert (example / schema_line.split("=", 1)[1]).resolve() == ROOT / "deployc" / "schema" / "deploy.schema.json"
    assert spec["apiVersion"] == "deployc/v1" and spec["name"] == example.name
    assert spec["model"] == {"path": "model.keras", "labels": "labels.txt", "task": task}
    assert f"# inputs: {inputs}" in text
    assert spec["data"] == {"eval": {"path": "data/eval.npz", "x": x, "y": "y"},
                            "calibration": {"path": "data/calib.npz", "x": x},
                            "train": {"path": "data/train.npz", "x": x, "y": "y"}}
    assert spec["optimize"] == [{"quantize": {"mode": mode}}]
    assert set(spec["gates"]) == gates
    assert spec["targets"] == {"local": {"port": 8080}}
    assert [s["kind"] for s in spec["slos"]] == ["availability", "latency", "stability"]
    assert r.stdout.startswith("wrote deploy.yaml: ")
    v = run_deployc("validate", "deploy.yaml", cwd=example)
    assert v.returncode == 0 and v.stdout == f"deploy.yaml: valid ({example.name} 0.1.0)\n", v.stderr


def test_an_initialised_digits_spec_builds(trained_digits: Path, tmp_path: Path, session_cache: Path) -> None:
    project = _project(trained_digits, tmp_path / "digits")
    _init(project, "model.keras", "--data", *DATA)
    r = run_deployc("build", "deploy.yaml", cwd=project, cache_dir=session_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((project / "build" / "digits" / "report.json").read_text())
    assert {g["gate"] for g in report["gates"]} == {"max_accuracy_drop", "min_agreement", "max_size_mb"}
    assert all(g["passed"] for g in report["gates"]), report["gates"]
    assert (project / "build" / "digits" / "local" / "serving.json").is_file()


def test_data_roles_from_names_order_and_role_prefix(trained_digits: Path, tmp_path: Path) -> None:
    """Named files take their role; others fill eval, calibration, train in order; ROLE=FILE says it."""
    project = _project(trained_digits, tmp_path / "digits")
    data = project / "data"
    for src, dst in (("eval.npz", "a.npz"), ("calib.npz", "b.npz"), ("train.npz", "held.npz")):
        shutil.copyfile(data / src, data / dst)
    _, spec = _init(project, "model.keras", "--data", "data/a.npz", "data/b.npz", "-o", "one.yaml")
    assert {k: v["path"] for k, v in spec["data"].items()} == {"eval": "data/a.npz", "calibration": "data/b.npz"}
    assert spec["data"]["eval"]["y"] == "y" and "y" not in spec["data"]["calibration"]
    _, spec = _init(project, "model.keras", "--data", "data/train.npz", "eval=data/held.npz", "-o", "two.yaml")
    assert {k: v["path"] for k, v in spec["data"].items()} == {"eval": "data/held.npz", "train": "data/train.npz"}
    r, spec = _init(project, "model.keras", "--data", "data/train.npz", "-o", "three.yaml")
    assert spec["data"]["eval"] == {"path": "data/train.npz", "x": "x", "y": "y", "limit": 1000}
    assert run_deployc("validate", "three.yaml", cwd=project).returncode == 0


def test_keys_matched_loosely_and_a_cnn_calibrates_on_train_rows(tmp_path: Path) -> None:
    _keras(tmp_path / "m.keras", _functional([_input("image", "float32", [None, 4, 4, 1]),
                                              _layer("conv", "Conv2D", filters=2, activation="relu"),
                                              _layer("flat", "Flatten"), _dense("probs", 3, "softmax")]))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "x_train.npz", Image_train=rng.random((300, 4, 4, 1)).astype(np.float32),
             labels_train=rng.integers(0, 3, 300))
    _, spec = _init(tmp_path, "m.keras", "--data", "x_train.npz")
    assert spec["data"] == {"eval": {"path": "x_train.npz", "x": "Image_train", "y": "labels_train"},
                            "calibration": {"path": "x_train.npz", "x": "Image_train", "limit": 256},
                            "train": {"path": "x_train.npz", "x": "Image_train", "y": "labels_train"}}
    assert spec["optimize"] == [{"quantize": {"mode": "int8-static"}}]
    assert spec["name"] == "m"


def test_without_data_the_spec_validates_and_says_what_is_missing(trained_digits: Path, tmp_path: Path) -> None:
    project = _project(trained_digits, tmp_path / "digits")
    r, spec = _init(project, "model.keras")
    assert "data" not in spec and set(spec["gates"]) == {"max_size_mb"}
    assert spec["optimize"] == [{"quantize": {"mode": "int8-dynamic"}}]
    assert [s["kind"] for s in spec["slos"]] == ["availability", "latency"]  # stability needs data.eval
    assert "note: no --data" in r.stderr and "data/eval.npz" in r.stderr
    assert run_deployc("validate", "deploy.yaml", cwd=project).returncode == 0


# --- the model file's own header: tasks guessed without TensorFlow ------------------------------------------


def _input(name: str, dtype: str, shape: list[int | None]) -> dict[str, Any]:
    return {"class_name": "InputLayer", "name": name, "config": {"name": name, "dtype": dtype, "batch_shape": shape},
            "inbound_nodes": []}


def _layer(name: str, kind: str, **config: Any) -> dict[str, Any]:
    return {"class_name": kind, "name": name, "config": {"name": name, **config}}


def _dense(name: str, units: int, activation: str) -> dict[str, Any]:
    return _layer(name, "Dense", units=units, activation=activation)


def _functional(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """A functional config of a chain of layers (each fed by the one before), output the last one."""
    for prev, layer in zip(layers, layers[1:], strict=False):
        layer["inbound_nodes"] = [{"args": [{"class_name": "__keras_tensor__",
                                             "config": {"keras_history": [prev["name"], 0, 0]}}], "kwargs": {}}]
    return {"class_name": "Functional", "config": {"name": "f", "layers": layers,
                                                   "input_layers": [[layers[0]["name"], 0, 0]],
                                                   "output_layers": [[layers[-1]["name"], 0, 0]]}}


def _keras(path: Path, config: dict[str, Any]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps(config))
    return path


@pytest.mark.parametrize(("head", "task", "columns"), [
    ([_dense("out", 10, "softmax")], "classification", 10),
    ([_dense("out", 1, "sigmoid")], "binary", 1),
    ([_dense("out", 5, "sigmoid")], "multilabel", 5),
    ([_dense("out", 2, "linear")], "regression", 2),
    ([_dense("logits", 4, "linear"), _layer("out", "Softmax")], "classification", 4),
    ([_dense("logits", 3, "linear"), _layer("act", "Activation", activation="sigmoid"), _layer("out", "Dropout")],
     "multilabel", 3),
])
def test_keras_task_from_the_output_layer(tmp_path: Path, head: list[dict[str, Any]], task: str, columns: int) -> None:
    model = read_model(_keras(tmp_path / "m.keras", _functional([_input("x", "float32", [None, 6]), *head])))
    assert [(t.name, t.dtype, t.shape) for t in model.inputs] == [("x", "float32", (-1, 6))]
    assert model.outputs[0].columns == columns and guess_task(model.outputs[0])[0] == task


def test_sequential_keras_model(tmp_path: Path) -> None:
    layers = [_input("feat", "float32", [None, 5]), _dense("d", 3, "linear"),
              _layer("a", "Activation", activation="sigmoid")]
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": layers}}
    _keras(tmp_path / "classifier.keras", config)
    np.savez(tmp_path / "eval.npz", features=np.zeros((4, 5), np.float32), y=np.ones((4, 3), np.int64))
    r, spec = _init(tmp_path, "classifier.keras", "--data", "eval.npz")
    assert spec["model"]["task"] == "multilabel" and spec["name"] == "classifier"
    assert spec["data"] == {"eval": {"path": "eval.npz", "x": "features", "y": "y"}}
    assert set(spec["gates"]) == {"max_accuracy_drop", "min_agreement", "max_size_mb"}


def test_lambda_layers_need_the_flag(tmp_path: Path) -> None:
    _keras(tmp_path / "m.keras", _functional([_input("x", "float32", [None, 3]), _layer("code", "Lambda"),
                                              _dense("out", 2, "softmax")]))
    r = run_deployc("init", "m.keras", cwd=tmp_path)
    assert r.returncode == 1 and "Lambda layer 'code'" in r.stderr and "--allow-python-code" in r.stderr
    assert not (tmp_path / "deploy.yaml").exists()
    _, spec = _init(tmp_path, "m.keras", "--allow-python-code")
    assert spec["model"]["allow_python_code"] is True


def _onnx(path: Path, last: str | None, columns: int, inputs: tuple[str, ...] = ("features",)) -> Path:
    from onnx import TensorProto, helper, numpy_helper, save

    weights = [numpy_helper.from_array(np.ones((6, columns), np.float32), f"W{i}") for i in range(len(inputs))]
    nodes = [helper.make_node("MatMul", [n, f"W{i}"], [f"h{i}"]) for i, n in enumerate(inputs)]
    nodes.append(helper.make_node("Sum", [f"h{i}" for i in range(len(inputs))], ["h"]))
    nodes.append(helper.make_node(last or "Identity", ["h"], ["pre"]))
    nodes.append(helper.make_node("Identity", ["pre"], ["score"]))
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 6]) for n in inputs]
    outs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", columns])]
    graph = helper.make_graph(nodes, "g", ins, outs, weights)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize(("last", "columns", "task", "gates"), [
    ("Softmax", 3, "classification", {"max_accuracy_drop", "min_agreement", "max_size_mb"}),
    ("Sigmoid", 1, "binary", {"max_auc_drop", "max_size_mb"}),
    ("Sigmoid", 4, "multilabel", {"max_accuracy_drop", "min_agreement", "max_size_mb"}),
    (None, 2, "regression", {"max_r2_drop", "max_size_mb"}),
])
def test_onnx_task_from_the_op_producing_the_output(tmp_path: Path, last: str | None, columns: int, task: str,
                                                    gates: set[str]) -> None:
    _onnx(tmp_path / "scorer.onnx", last, columns, ("a", "b"))
    rng = np.random.default_rng(0)
    y = {"classification": rng.integers(0, 3, 20), "binary": rng.integers(0, 2, 20),
         "multilabel": rng.integers(0, 2, (20, columns)), "regression": rng.random((20, columns))}[task]
    np.savez(tmp_path / "test.npz", A=rng.random((20, 6)).astype(np.float32), b=rng.random((20, 6)).astype(np.float32),
             target=y)
    _, spec = _init(tmp_path, "scorer.onnx", "--data", "test.npz")
    assert spec["model"] == {"path": "scorer.onnx", "task": task}
    assert spec["data"] == {"eval": {"path": "test.npz", "x": {"a": "A", "b": "b"}, "y": "target"}}
    assert set(spec["gates"]) == gates
    assert run_deployc("validate", "deploy.yaml", cwd=tmp_path).returncode == 0


def test_an_int8_onnx_model_gets_no_quantize_pass(tmp_path: Path) -> None:
    _onnx(tmp_path / "q.onnx", "DynamicQuantizeLinear", 2)
    assert read_model(tmp_path / "q.onnx").quantized
    _, spec = _init(tmp_path, "q.onnx")
    assert spec["optimize"] == []


@pytest.mark.slow
def test_savedmodel_signature_read_from_saved_model_pb(trained_digits: Path, tmp_path: Path) -> None:
    project = _project(trained_digits, tmp_path / "digits")
    code = ("import sys, keras; keras.models.load_model(sys.argv[1]).export(sys.argv[2], verbose=False)")
    r = subprocess.run([sys.executable, "-c", code, str(project / "model.keras"), str(project / "export")],
                       env=deployc_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    _, spec = _init(project, "export", "--data", "data/eval.npz")
    text = (project / "deploy.yaml").read_text()
    assert "# inputs: pixels float32 [-1, 64]" in text and "output_0 is a softmax over 10 columns" in text
    assert spec["model"] == {"path": "export", "labels": "labels.txt", "task": "classification"}
    assert spec["name"] == "digits" and spec["data"]["eval"] == {"path": "data/eval.npz", "x": "x", "y": "y"}
    assert run_deployc("validate", "deploy.yaml", cwd=project).returncode == 0


def test_guess_without_a_known_op() -> None:
    assert guess_task(Output("o", 3, None))[0] == "classification"
    assert guess_task(Output("o", 1, None))[0] == "regression"
    assert guess_task(Output("o", 1, "relu"))[0] == "regression"


# --- refusals: one line, exit 1, nothing written --------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    _onnx(tmp_path / "m.onnx", "Softmax", 3)
    np.savez(tmp_path / "eval.npz", x=np.zeros((4, 6), np.float32), y=np.zeros(4, np.int64))
    return tmp_path


def test_an_existing_file_is_never_replaced(folder: Path) -> None:
    (folder / "deploy.yaml").write_bytes(b"mine: 1\n")
    assert _fails(folder, "m.onnx") == ("deploy.yaml: already exists (a file); deployc init never replaces a file: "
                                        "remove it or choose another path with -o")
    assert (folder / "deploy.yaml").read_bytes() == b"mine: 1\n"
    os.symlink("nowhere.yaml", folder / "link.yaml")
    assert "already exists (a symbolic link)" in _fails(folder, "m.onnx", "-o", "link.yaml")
    assert not (folder / "nowhere.yaml").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["deploy.yaml", "eval.npz", "link.yaml", "m.onnx"]


@pytest.mark.parametrize(("args", "message"), [
    (["nothere.keras"], "nothere.keras: no such file or folder"),
    (["m.onnx", "--data", "nothere.npz"], "nothere.npz: no such file or folder"),
    (["m.onnx", "--data", "bad.npz"], "bad.npz: not a readable .npz file, as np.savez writes"),
    (["m.onnx", "--data", "one.npz"], "one.npz: holds one array, not named arrays"),
    (["m.onnx", "--data", "sub"], "sub: is a folder, not a .npz file"),
    (["sub"], "sub: a folder without saved_model.pb, so not a SavedModel folder"),
    (["loop"], "loop: Too many levels of symbolic links"),
    (["m.onnx", "--data", "loop"], "loop: Too many levels of symbolic links"),
    (["bad.keras"], "bad.keras: not a .keras archive (not a zip file)"),
    (["bad.onnx"], "bad.onnx: cannot read the model"),
    (["m.h5"], "m.h5: an HDF5 Keras file, which deployc cannot read without TensorFlow"),
    (["m.pt"], "m.pt: not a model deployc reads"),
    (["m.onnx", "-o", "sub"], "sub: already exists (a folder)"),
    (["m.onnx", "-o", "none/deploy.yaml"], "none/deploy.yaml: the folder none does not exist"),
    (["m.onnx", "-o", "sub/deploy.yaml"], "m.onnx: outside "),
    (["m.onnx", "--data", "eval.npz", "eval.npz"], "eval.npz: given twice"),
    (["m.onnx", "--data", "eval.npz", "eval=other.npz"], "eval.npz and other.npz are both data.eval"),
    (["m.onnx", "--data", "wrong.npz"], "wrong.npz: cannot tell which array is the input 'features' (it has: a, b)"),
    (["m.onnx", "--data", "shape.npz"], "shape.npz: array 'features' has shape [4, 5], and the model's input "
                                        "'features' takes [-1, 6]"),
])
def test_bad_input_is_one_line_and_nothing_is_written(folder: Path, args: list[str], message: str) -> None:
    (folder / "bad.npz").write_text("not an archive\n")
    np.save(folder / "one.npy", np.zeros(3))
    (folder / "one.npy").rename(folder / "one.npz")
    (folder / "sub").mkdir()
    os.symlink("loop", folder / "loop")
    (folder / "bad.keras").write_text("not a zip")
    (folder / "bad.onnx").write_bytes(bytes(range(3, 200)))
    (folder / "m.h5").write_bytes(b"\x89HDF\r\n")
    (folder / "m.pt").write_bytes(b"\0")
    shutil.copyfile(folder / "eval.npz", folder / "other.npz")
    np.savez(folder / "wrong.npz", a=np.zeros((4, 6)), b=np.zeros((4, 6)))
    np.savez(folder / "shape.npz", features=np.zeros((4, 5)))
    before = sorted(p.name for p in folder.rglob("*"))
    assert _fails(folder, *args).startswith(message)
    assert sorted(p.name for p in folder.rglob("*")) == before


def test_a_spec_that_does_not_validate_is_not_written(folder: Path) -> None:
    np.savez(folder / "nan.npz", x=np.full((4, 6), np.nan, np.float32), y=np.zeros(4, np.int64))
    r = run_deployc("init", "m.onnx", "--data", "nan.npz", cwd=folder)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[0].startswith("deploy.yaml: data.eval.x: nan.npz: array 'x' holds 24 NaN")
    assert "deploy.yaml: not written" in r.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["eval.npz", "m.onnx", "nan.npz"]


def test_usage_and_help() -> None:
    r = run_deployc("init", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: deployc init ")
    for flag in ("--data", "-o", "--name", "--task"):
        assert flag in r.stdout
    r = run_deployc("init")
    assert r.returncode == 2 and "the following arguments are required: MODEL" in r.stderr
    r = run_deployc("init", "m.onnx", "--name", "Not_A_Name")
    assert r.returncode == 2 and "--name" in r.stderr


def test_init_imports_no_heavy_library(folder: Path) -> None:
    argv = ["init", "m.onnx", "--data", "eval.npz", "-o", "spec.yaml"]
    code = (f"import sys, runpy\nsys.argv = ['deployc'] + {argv!r}\n"
            "try:\n    runpy.run_module('deployc', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\nprint('HEAVY', heavy, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=folder, env=deployc_env(folder / "cache"),
                       capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in r.stderr, r.stderr[-2000:]
    assert (folder / "spec.yaml").is_file()
