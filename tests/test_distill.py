"""The distill pass: the loss is the documented one, students are smaller and learn digits."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from keras_support import cnn, mlp, pass_input, save

from deployc.errors import InputError
from deployc.schema.passes import DistillConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(mlp(hidden=(128, 128)), tmp_path_factory.mktemp("teacher") / "model.keras")


def run(path: Path, out: Path, image: bool = False, spec_dir: Path | None = None, **cfg: Any) -> Any:
    from deployc.passes.distill import DistillPass

    return DistillPass().apply(pass_input(path, out, DistillConfig(**cfg), image=image, spec_dir=spec_dir))


def load(path: Path) -> Any:
    from deployc.ml.convert import load_keras

    return load_keras(path)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_loss_is_kl_at_temperature_times_t2_plus_cross_entropy(alpha: float) -> None:
    from deployc.ml.distill import distill_loss

    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(5, 4)).astype(np.float32) * 3, rng.normal(size=(5, 4)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 1])
    temp = 3.0
    lt, ls = _log_softmax(t / temp), _log_softmax(s / temp)
    kl = (np.exp(lt) * (lt - ls)).sum(axis=1) * temp ** 2
    ce = -_log_softmax(s)[np.arange(5), labels]
    want = alpha * kl + (1 - alpha) * ce
    y = np.concatenate([labels[:, None].astype(np.float32), t], axis=1)
    got_logits = np.asarray(distill_loss(False, temp, alpha)(y, s))
    probs = np.exp(_log_softmax(s)).astype(np.float32)  # a softmax student: logits recovered as log(p)
    got_probs = np.asarray(distill_loss(True, temp, alpha)(y, probs))
    np.testing.assert_allclose(got_logits, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_probs, want, rtol=1e-4, atol=1e-4)


def test_teacher_logits_from_softmax_are_log_probabilities(teacher_path: Path) -> None:
    from deployc.ml.distill import logits

    x = np.random.default_rng(1).random((6, 64), dtype=np.float32)
    teacher = load(teacher_path)
    z = logits(teacher, x)
    np.testing.assert_allclose(np.exp(_log_softmax(z)), teacher.predict(x, verbose=0), atol=1e-5)


def test_default_student_is_the_teacher_at_half_width_and_learns(teacher_path: Path, tmp_path: Path) -> None:
    res = run(teacher_path, tmp_path, epochs=15, learning_rate=3e-3, batch_size=32)
    student = load(res.model)
    assert student.get_layer("hidden0").kernel.shape == (64, 64)
    assert student.get_layer("hidden1").kernel.shape == (64, 64)
    assert student.get_layer("out").kernel.shape == (64, 10)
    assert res.details["params_student"] == student.count_params() == 64 * 65 + 64 * 65 + 65 * 10
    assert res.details["params_student"] < 0.35 * res.details["params_teacher"]
    assert res.details["eval_accuracy"] >= 0.93
    assert res.details["after"]["weights_gzip_bytes"] < 0.5 * res.details["before"]["weights_gzip_bytes"]


def test_cnn_student_is_narrower(tmp_path: Path) -> None:
    path = save(cnn(epochs=1), tmp_path / "cnn.keras")
    res = run(path, tmp_path / "out", image=True, width=0.25, epochs=1)
    assert res.details["widths_student"] == {"conv1": 4, "conv2": 4, "fc": 8, "out": 10}
    assert load(res.model).get_layer("fc").kernel.shape == (4 * 4 * 4, 8)


def test_student_from_a_file_relative_to_the_spec(teacher_path: Path, tmp_path: Path) -> None:
    import keras

    keras.utils.set_random_seed(3)
    spec_dir = tmp_path / "project"
    (spec_dir / "models").mkdir(parents=True)
    student = keras.Sequential([keras.Input((64,)), keras.layers.Dense(24, activation="relu", name="small"),
                                keras.layers.Dense(10, name="logits")], name="student")  # logits, no softmax
    save(student, spec_dir / "models" / "student.keras")
    res = run(teacher_path, tmp_path / "out", spec_dir=spec_dir, student="models/student.keras", epochs=12,
              learning_rate=3e-3, batch_size=32)
    out = load(res.model)
    assert out.name == "student" and [w.shape for w in out.get_layer("small").get_weights()] == [(64, 24), (24,)]
    assert res.details["student"] == "models/student.keras"
    assert res.details["params_student"] == 64 * 24 + 24 + 25 * 10
    assert res.details["eval_accuracy"] >= 0.9


def test_student_file_must_fit_the_teacher(teacher_path: Path, tmp_path: Path) -> None:
    import keras

    save(keras.Sequential([keras.Input((64,)), keras.layers.Dense(3)]), tmp_path / "three.keras")
    with pytest.raises(InputError, match="predicts 3 classes, the teacher 10"):
        run(teacher_path, tmp_path / "out", spec_dir=tmp_path, student="three.keras")
    with pytest.raises(InputError, match="leaves the folder"):
        run(teacher_path, tmp_path / "out", spec_dir=tmp_path / "sub", student="../three.keras")
    with pytest.raises(InputError, match="is not a file"):
        run(teacher_path, tmp_path / "out", spec_dir=tmp_path, student="missing.keras")


def test_branching_teacher_shrinks_and_an_unsupported_layer_is_named(tmp_path: Path) -> None:
    import keras

    inp = keras.Input((64,))
    a = keras.layers.Dense(16, name="a")(inp)
    b = keras.layers.Dense(16, name="b")(inp)
    out = keras.layers.Dense(10, activation="softmax", name="out")(keras.layers.Concatenate(name="join")([a, b]))
    res = run(save(keras.Model(inp, out), tmp_path / "branchy.keras"), tmp_path / "out", epochs=1)
    assert res.details["widths_student"] == {"a": 8, "b": 8, "out": 10}
    assert load(res.model).get_layer("out").kernel.shape == (16, 10)

    seq = keras.layers.Reshape((8, 8), name="rows")(inp)
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(keras.layers.Dense(4)(seq)))
    path = save(keras.Model(inp, out), tmp_path / "reshape.keras")
    with pytest.raises(InputError, match="distillation: layer 'rows' \\(Reshape\\) is not supported"):
        run(path, tmp_path / "out2")


def test_binary_loss_is_the_two_class_softmax_of_the_logit() -> None:
    """A sigmoid unit z is the softmax of logits (0, z): KL of Bernoulli(sigmoid(t/T)) to Bernoulli(sigmoid(s/T))
    times T^2, plus the binary cross-entropy, whether the student gives probabilities or logits."""
    from deployc.ml.distill import distill_loss

    rng = np.random.default_rng(2)
    t, s = rng.normal(size=6) * 3, rng.normal(size=6)
    labels = np.array([0, 1, 1, 0, 1, 0])
    temp, alpha = 2.0, 0.4
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    pt, ps = sig(t / temp), sig(s / temp)
    kl = (pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps))) * temp ** 2
    bce = -(labels * np.log(sig(s)) + (1 - labels) * np.log(1 - sig(s)))
    want = alpha * kl + (1 - alpha) * bce
    y = np.stack([labels, np.zeros(6), t], axis=1).astype(np.float32)  # what `logits` packs for a binary teacher
    got_logit = np.asarray(distill_loss(False, temp, alpha, binary=True)(y, s[:, None].astype(np.float32)))
    got_prob = np.asarray(distill_loss(True, temp, alpha, binary=True)(y, sig(s)[:, None].astype(np.float32)))
    np.testing.assert_allclose(got_logit, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_prob, want, rtol=1e-4, atol=1e-4)


def test_same_input_gives_the_same_student(teacher_path: Path, tmp_path: Path) -> None:
    a = run(teacher_path, tmp_path / "a", epochs=1)
    b = run(teacher_path, tmp_path / "b", epochs=1)
    assert a.model.read_bytes() == b.model.read_bytes()
