"""Models of several named inputs and the tasks beyond multi-class: the figures each task is judged by (checked
against scikit-learn), the feeds built from `data.<set>.x: {input: key}`, and what `deployc validate` says about
a spec whose data, prediction output, gates or SLOs do not fit the model (located, without TensorFlow)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import run_deployc
from sklearn.metrics import r2_score, roc_auc_score

from deployc.errors import InputError
from deployc.ml import feeds
from deployc.ml.evaluate import class_distribution, compare, predicted_classes


def test_binary_figures_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    ref = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1).astype(np.float32).reshape(-1, 1)
    pred = np.round(ref * 16) / 16  # ties, as a quantized model makes them
    figures = compare(ref, pred, y, "binary", threshold=0.6)
    assert figures["auc"] == pytest.approx(roc_auc_score(y, pred[:, 0]), abs=1e-6)
    assert figures["accuracy"] == pytest.approx(np.mean((pred[:, 0] >= 0.6) == y), abs=1e-6)
    assert figures["agreement"] == pytest.approx(np.mean((pred[:, 0] >= 0.6) == (ref[:, 0] >= 0.6)), abs=1e-6)
    rel = np.linalg.norm(ref - pred) / np.linalg.norm(ref)
    assert figures["relative_error"] == pytest.approx(rel, rel=1e-5)
    share = float(np.mean(ref[:, 0] >= 0.6))
    assert class_distribution(ref, "binary", 0.6) == pytest.approx([1 - share, share])


def test_regression_and_multilabel_figures() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(size=(300, 2))
    ref = y + rng.normal(scale=0.3, size=y.shape)
    pred = ref + rng.normal(scale=0.05, size=y.shape)
    figures = compare(ref.astype(np.float32), pred.astype(np.float32), y, "regression")
    assert figures["r2"] == pytest.approx(r2_score(y, pred, multioutput="variance_weighted"), abs=1e-5)
    assert "agreement" not in figures and "auc" not in figures
    probs = rng.random((200, 5)).astype(np.float32)
    labels = (probs > 0.5).astype(np.int64)
    moved = probs.copy()
    moved[:10, 0] = 1 - moved[:10, 0]  # ten decisions of 1,000 flip
    multi = compare(probs, moved, labels, "multilabel")
    assert multi["agreement"] == pytest.approx(1 - 10 / 1000)
    assert multi["accuracy"] == pytest.approx(1 - 10 / 1000)
    assert predicted_classes(probs, "regression") is None


def test_auc_with_one_class_is_not_measured() -> None:
    p = np.linspace(0, 1, 10, dtype=np.float32).reshape(-1, 1)
    assert compare(p, p, np.ones(10), "binary")["auc"] is None


def test_feeds_map_names_cast_and_refuse() -> None:
    one = np.ones((3, 2), dtype=np.float64)
    assert list(feeds.feed(one, ["pixels"], [np.float32])) == ["pixels"]
    assert feeds.feed(one, ["pixels"], [np.float32])["pixels"].dtype == np.float32
    mapped = {"ids": np.array([[1.0, 2.0]]), "mask": np.array([[1, 0]])}
    got = feeds.feed(mapped, ["mask", "ids"], [np.int64, np.int64])
    assert list(got) == ["mask", "ids"] and got["ids"].dtype == np.int64
    with pytest.raises(InputError, match="has 2 inputs"):
        feeds.feed(one, ["a", "b"], [np.float32, np.float32])
    with pytest.raises(InputError, match="needs inputs b"):
        feeds.feed({"a": one}, ["a", "b"], [np.float32, np.float32])
    with pytest.raises(InputError, match="'ids' is int64 in the model, and its data holds fractions"):
        feeds.feed({"ids": np.array([[1.5]])}, ["ids"], [np.int64])
    with pytest.raises(InputError, match="'ids' is int32 in the model, and its data holds values from 0 to "
                                         "2.14748e"):  # would wrap around to a negative id
        feeds.feed({"ids": np.array([[0, 2**31 + 5]])}, ["ids"], [np.int32])
    with pytest.raises(InputError, match="outside 0..1"):
        feeds.feed({"mask": np.array([[0, 2]])}, ["mask"], [np.bool_])
    assert feeds.rows(feeds.resize(mapped, 5)) == 5
    assert feeds.take(mapped, slice(0, 1))["mask"].tolist() == [[1, 0]]  # type: ignore[index]


def test_a_one_output_model_is_its_own_prediction() -> None:
    assert feeds.output_index(["output"], "click") == 0
    assert feeds.output_index(["click", "aux"], "aux") == 1
    with pytest.raises(InputError, match="model.prediction: m has no output named 'probs'"):
        feeds.output_index(["click", "aux"], "probs", "m")


# --- validate, from a .keras archive's config.json (no TensorFlow) ------------------------------------------

def _input(name: str, dtype: str, shape: list[int | None]) -> dict[str, object]:
    return {"class_name": "InputLayer", "name": name, "config": {"name": name, "dtype": dtype, "batch_shape": shape}}


def _dense(name: str, units: int) -> dict[str, object]:
    return {"class_name": "Dense", "name": name, "config": {"name": name, "units": units}}


RECSYS = {"class_name": "Functional", "config": {
    "name": "r", "input_layers": [["user_id", 0, 0], ["item_id", 0, 0], ["dense", 0, 0]],
    "output_layers": [["click", 0, 0], ["score", 0, 0]],
    "layers": [_input("user_id", "int64", [None]), _input("item_id", "int64", [None]),
               _input("dense", "float32", [None, 4]), _dense("click", 1), _dense("score", 3)]}}

GOOD = """apiVersion: deployc/v1
name: r
model: {path: m.keras, labels: labels.txt, task: binary, prediction: click}
data:
  eval: {path: eval.npz, x: {user_id: u, item_id: i, dense: d}, y: y}
gates: {max_auc_drop: 0.01, min_agreement: 0.9}
targets: {local: {}}
slos:
  - {kind: stability, metric: psi, max_drift: 0.2, window: 1h}
"""


@pytest.fixture
def recsys(tmp_path: Path) -> Path:
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as z:
        z.writestr("config.json", json.dumps(RECSYS))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "eval.npz", u=rng.integers(0, 9, 20), i=rng.integers(0, 9, 20),
             d=rng.random((20, 4)).astype(np.float32), y=rng.integers(0, 2, 20), short=np.zeros(19),
             ufloat=rng.integers(0, 9, 20) + 0.5, y12=rng.integers(1, 3, 20))
    (tmp_path / "labels.txt").write_text("no-click\nclick\n")
    (tmp_path / "deploy.yaml").write_text(GOOD)
    return tmp_path


def _validate(folder: Path, text: str) -> list[str]:
    (folder / "deploy.yaml").write_text(text)
    r = run_deployc("validate", "deploy.yaml", cwd=folder)
    assert "Traceback" not in r.stderr
    if r.returncode == 0:
        return []
    assert r.returncode == 1, r.stderr
    return [line for line in r.stderr.splitlines() if line.startswith("deploy.yaml:")]


def test_a_multi_input_binary_spec_validates(recsys: Path) -> None:
    assert _validate(recsys, GOOD) == []


@pytest.mark.parametrize(("change", "expected"), [
    (("x: {user_id: u, item_id: i, dense: d}", "x: u"),
     "deploy.yaml:5:29: data.eval.x: the model has 3 inputs (user_id, item_id, dense), and data.eval.x names one "
     "array: map each input to its array's key, x: {user_id: ..., item_id: ..., dense: ...}"),
    (("dense: d}", "features: d}"),
     "deploy.yaml:5:64: data.eval.x.features: the model has no input named 'features' (its inputs: user_id, "
     "item_id, dense)"),
    (("dense: d}", "dense: nope}"),
     "deploy.yaml:5:61: data.eval.x.dense: eval.npz has no array named 'nope' (it has: u, i, d, y, short, ufloat, "
     "y12)"),
    (("user_id: u,", "user_id: ufloat,"),
     "deploy.yaml:5:39: data.eval.x.user_id: eval.npz: array 'ufloat' holds fractions, and the model's input "
     "'user_id' is int64: ids and masks must be whole numbers"),
    (("dense: d}", "dense: short}"),
     "deploy.yaml:5:61: data.eval.x.dense: eval.npz: u has 20 rows but short has 19"),
    (("prediction: click", "prediction: probs"),
     "deploy.yaml:3:70: model.prediction: the model has no output named 'probs' (its outputs: click, score)"),
    (("max_auc_drop: 0.01", "max_r2_drop: 0.01"),
     "deploy.yaml:6:9: gates.max_r2_drop: max_r2_drop does not apply to model.task binary: use max_auc_drop, "
     "max_accuracy_drop or min_agreement"),
    (("task: binary", "task: multilabel"),
     "deploy.yaml:9:6: slos[0].kind: a stability SLO watches the share of each predicted class, and model.task "
     "is multilabel (a row has several labels, not one class)"),
    (("task: binary, prediction: click", "prediction: click, threshold: 0.7"),
     "deploy.yaml:3:63: model.threshold: a threshold applies to binary and multilabel models, and model.task is "
     "classification"),
    (("labels: labels.txt, task: binary, prediction: click", "labels: labels.txt, task: binary, prediction: score"),
     "deploy.yaml:3:32: model.labels: 'labels.txt' names 2 classes, but the model's output 'score' has 3 (model.task "
     "binary: one sigmoid column, two classes)"),
    ((", y: y}", "}"), "deploy.yaml:6:9: gates.max_auc_drop: max_auc_drop needs labels: set data.eval.y"),
    ((", y: y}", ", y: y12}"),
     "deploy.yaml:5:68: data.eval.y: eval.npz: array 'y12' holds 2: model.task binary takes labels 0 and 1"),
    (("prediction: click}", "prediction: click, inputs: [{name: uid, dtype: int64, shape: [-1]}]}"),
     "deploy.yaml:3:85: model.inputs: the model's inputs are named user_id, item_id, dense, and model.inputs "
     "names uid: use the model's names"),
    (("task: binary, prediction: click", "task: binary, prediction: score"),
     "deploy.yaml:3:50: model.task: model.task binary takes one sigmoid column, and the output 'score' has 3: a "
     "softmax over classes is model.task classification"),
])
def test_what_validate_says_about_a_multi_input_spec(recsys: Path, change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in GOOD
    assert expected in _validate(recsys, GOOD.replace(old, new))


# --- a build of an ONNX model of two int64 inputs and two outputs, judged on its second output --------------

RANKER_SPEC = """apiVersion: deployc/v1
name: ranker
model: {path: ranker.onnx, labels: labels.txt, prediction: logits}
data:
  eval: {path: eval.npz, x: {input_ids: ids, attention_mask: mask}, y: y}
  calibration: {path: eval.npz, x: {input_ids: ids, attention_mask: mask}}
optimize:
  - quantize: {mode: auto, candidates: [float16, int8-static]}
gates: {min_agreement: 0.9, max_accuracy_drop: 0.05}
measure: {min_seconds: 0.05}
targets:
  local: {}
  triton: {}
slos:
  - {kind: stability, metric: psi, max_drift: 0.2, window: 1h}
"""


def test_an_onnx_model_of_two_inputs_is_judged_on_its_named_output(tmp_path: Path, session_cache: Path) -> None:
    import onnxruntime as ort
    import yaml
    from test_serve_multi import SEQ, VOCAB, make_ranker

    make_ranker(tmp_path / "ranker.onnx")
    rng = np.random.default_rng(3)
    ids = rng.integers(0, VOCAB, (256, SEQ))
    mask = (np.arange(SEQ)[None, :] < rng.integers(2, SEQ + 1, (256, 1))).astype(np.int64)
    sess = ort.InferenceSession(str(tmp_path / "ranker.onnx"))
    probs, logits = sess.run(["probs", "logits"], {"input_ids": ids, "attention_mask": mask})
    assert np.mean(probs.argmax(1) == logits.argmax(1)) < 0.5  # the outputs disagree: which one is judged shows
    y = logits.argmax(1)
    np.savez(tmp_path / "eval.npz", ids=ids, mask=mask, y=y)
    (tmp_path / "labels.txt").write_text("a\nb\nc\nd\n")
    (tmp_path / "deploy.yaml").write_text(RANKER_SPEC)
    r = run_deployc("build", "deploy.yaml", "-q", cwd=tmp_path, cache_dir=session_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    build = tmp_path / "build" / "ranker"
    report = json.loads((build / "report.json").read_text())
    assert report["reference"]["accuracy"] == 1.0  # y is the argmax of logits, not of probs
    assert all(g["passed"] for g in report["gates"]) and report["passes"][0]["details"]["chosen"]
    cfg = json.loads((build / "local" / "serving.json").read_text())
    assert cfg["prediction"] == "logits" and [t["name"] for t in cfg["model"]["inputs"]] == ["input_ids",
                                                                                               "attention_mask"]
    assert {t["datatype"] for t in cfg["model"]["inputs"]} == {"INT64"}
    # the stability SLO's reference shares are those of the judged output's classes
    rules = yaml.safe_load((build / "monitoring" / "prometheus-rules.yaml").read_text())
    shares = {r["labels"]["class"]: float(r["expr"][len("vector("):-1]) for g in rules["groups"]
              for r in g["rules"] if r.get("record") == "deployc:slo_reference_class_share:ratio"}
    want = np.bincount(y, minlength=4) / len(y)
    assert shares == pytest.approx(dict(zip("abcd", want, strict=True)), abs=1e-3)
    request = json.loads((build / "triton" / "request.json").read_text())
    assert [(i["name"], i["datatype"], i["shape"]) for i in request["inputs"]] == [
        ("input_ids", "INT64", [2, SEQ]), ("attention_mask", "INT64", [2, SEQ])]
    assert request["inputs"][0]["data"] == ids[:2].ravel().tolist()


def test_a_sigmoid_output_judged_as_classes_is_a_validate_error(recsys: Path) -> None:
    text = GOOD.replace("task: binary, prediction: click}", "prediction: click}").replace("max_auc_drop: 0.01, ", "")
    assert _validate(recsys, text) == [
        "deploy.yaml:3:8: model.task: the output 'click' has one column, which has no argmax class for "
        "min_agreement or max_accuracy_drop: a sigmoid output is model.task binary"]


def test_the_reference_step_names_a_task_the_output_cannot_serve() -> None:
    """Where the model file's header does not say (a SavedModel), the reference step refuses class gates on an
    output without classes, rather than the gates failing as not measured after the build."""
    from types import SimpleNamespace

    from deployc.compiler.ops import _check_task_shape
    from deployc.compiler.resolved import GateLimits

    sigmoid = np.full((4, 1), 0.7, dtype=np.float32)
    r = SimpleNamespace(task="classification", threshold=0.5, gates=GateLimits(min_agreement=0.9))
    with pytest.raises(InputError, match="holds 1 per row, which has no predicted class for min_agreement: a "
                                         "single sigmoid column is model.task binary"):
        _check_task_shape(r, sigmoid)
    _check_task_shape(SimpleNamespace(task="binary", threshold=0.5, gates=r.gates), sigmoid)
    _check_task_shape(SimpleNamespace(task="classification", threshold=0.5, gates=GateLimits()), sigmoid)


def test_a_binary_task_on_two_columns_gets_no_auc_and_is_refused() -> None:
    """Column 0 of a two-column softmax is P(class 0): its AUC would read inverted, so none is computed, and the
    reference step refuses the spec whatever gates it sets."""
    from types import SimpleNamespace

    from deployc.compiler.ops import _check_task_shape
    from deployc.compiler.resolved import GateLimits

    two = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    assert "auc" not in compare(two, two, np.array([0, 1]), "binary")
    with pytest.raises(InputError, match="model.task is binary, and the prediction output holds 2 per row"):
        _check_task_shape(SimpleNamespace(task="binary", threshold=0.5, gates=GateLimits()), two)


def test_dict_outputs_are_read_in_the_models_output_order() -> None:
    from types import SimpleNamespace

    from deployc.ml.evaluate import keras_output

    model = SimpleNamespace(output_names=["alpha", "zeta"])  # Keras sorts a dict's outputs by name
    out = {"zeta": np.zeros((2, 3)), "alpha": np.ones((2, 3))}
    assert keras_output(model, out, None).tolist() == np.ones((2, 3)).tolist()
    assert keras_output(model, out, "zeta").tolist() == np.zeros((2, 3)).tolist()


def test_labels_are_matched_against_the_prediction_output() -> None:
    from deployc.compiler.plan import _labels_match
    from deployc.errors import SpecFieldError

    result = {"outputs": [{"name": "emb", "shape": [-1, 16]}, {"name": "click", "shape": [-1, 1]}]}
    _labels_match("labels.txt", 2, "click", "binary", "convert", result)
    with pytest.raises(SpecFieldError, match="lists 2 class names, but the model has 16"):
        _labels_match("labels.txt", 2, None, "classification", "convert", result)


def test_prune_refuses_a_regression_model(recsys: Path) -> None:
    np.savez(recsys / "train.npz", u=np.arange(8), i=np.arange(8), d=np.zeros((8, 4), np.float32), y=np.ones(8))
    text = (GOOD.replace("task: binary", "task: regression").replace("max_auc_drop: 0.01, min_agreement: 0.9",
                                                                     "max_abs_error: 0.1")
            .replace("slos:\n  - {kind: stability, metric: psi, max_drift: 0.2, window: 1h}\n", "")
            .replace("  eval:", "  train: {path: train.npz, x: {user_id: u, item_id: i, dense: d}, y: y}\n  eval:")
            + "optimize:\n  - prune: {sparsity: 0.5}\n")
    assert _validate(recsys, text) == [
        "deploy.yaml:10:5: optimize[0].prune: prune fine-tunes a classifier (cross-entropy on class labels), and "
        "model.task is regression"]
