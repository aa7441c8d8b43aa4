"""deployc.ml.explain on models whose attributions are known in closed form: integrated gradients, KernelSHAP and
occlusion of a linear model are W x (x - b); integrated gradients of a nonlinear model sum to f(x) - f(b). Then
the summary and agreement figures report.json records, and (slow) TensorFlow's exact gradients of a Keras model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deployc.ml import explain as E
from deployc.ml.explain import Settings


def linear(w: np.ndarray, names: list[str]) -> E.Predict:
    """f(x) = concat(flat inputs) @ w, in float64."""
    def predict(feed: dict[str, np.ndarray]) -> np.ndarray:
        n = len(feed[names[0]])
        return np.concatenate([feed[k].reshape(n, -1).astype(np.float64) for k in names], axis=1) @ w
    return predict


def flat(x: dict[str, np.ndarray]) -> np.ndarray:
    n = len(next(iter(x.values())))
    return np.concatenate([a.reshape(n, -1).astype(np.float64) for a in x.values()], axis=1)


@pytest.fixture
def two_inputs() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Two float inputs (5 rows of [2, 3] and [4]), the weights of a linear model of 3 outputs, targets."""
    rng = np.random.default_rng(1)
    x = {"image": rng.normal(size=(5, 2, 3)), "dense": rng.normal(size=(5, 4))}
    return x, rng.normal(size=(10, 3)), rng.integers(0, 3, size=5)


def test_features_name_each_element_of_each_input_in_order() -> None:
    features = E.feature_list([("user_id", (1,)), ("dense", (2, 2))])
    assert [f.name for f in features] == ["user_id[0]", "dense[0]", "dense[1]", "dense[2]", "dense[3]"]
    assert features[3] == E.Feature("dense[2]", "dense", 2)


def test_integrated_gradients_of_a_linear_model_are_x_times_w(two_inputs: tuple) -> None:
    x, w, targets = two_inputs
    base = E.baseline_rows(x, "zeros")
    expect = flat(x) * w[:, targets].T
    numeric = E.explain(linear(w, list(x)), x, base, Settings("integrated-gradients"), targets)
    assert numeric.shape == (5, 10) and numeric.dtype == np.float64
    assert np.allclose(numeric, expect, rtol=1e-9, atol=1e-12)

    def gradient(feed: dict[str, np.ndarray], t: np.ndarray) -> dict[str, np.ndarray]:
        g = w[:, t].T  # d (x @ w)[n, t[n]] / dx = w[:, t[n]]
        return {"image": g[:, :6].reshape(-1, 2, 3), "dense": g[:, 6:]}

    exact = E.explain(linear(w, list(x)), x, base, Settings("integrated-gradients", steps=4), targets, gradient)
    assert np.allclose(exact, expect, rtol=1e-12, atol=1e-12)


def test_integrated_gradients_of_float32_inputs() -> None:
    rng = np.random.default_rng(2)
    x = {"pixels": rng.uniform(0, 16, size=(3, 8)).astype(np.float32)}
    w = rng.normal(size=(8, 2))
    attr = E.explain(linear(w, ["pixels"]), x, E.baseline_rows(x, "zeros"), Settings("integrated-gradients"),
                     np.array([0, 1, 0]))
    assert np.allclose(attr, flat(x) * w[:, [0, 1, 0]].T, rtol=1e-5, atol=1e-5)


def mlp(seed: int = 0, f: int = 6, hidden: int = 16, c: int = 3) -> tuple[E.Predict, E.Gradient]:
    """y = tanh(x @ w1 + b1) @ w2: a prediction function and its exact gradient."""
    rng = np.random.default_rng(seed)
    w1, b1, w2 = rng.normal(size=(f, hidden)), rng.normal(size=hidden), rng.normal(size=(hidden, c))

    def predict(feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.tanh(feed["x"].astype(np.float64) @ w1 + b1) @ w2

    def gradient(feed: dict[str, np.ndarray], t: np.ndarray) -> dict[str, np.ndarray]:
        h = np.tanh(feed["x"] @ w1 + b1)
        return {"x": ((1 - h * h) * w2[:, t].T) @ w1.T}

    return predict, gradient


def test_integrated_gradients_are_complete_on_a_nonlinear_model() -> None:
    predict, gradient = mlp()
    rng = np.random.default_rng(3)
    x = {"x": rng.normal(size=(8, 6))}
    base = E.baseline_rows(x, "mean")
    targets = predict(x).argmax(axis=1)
    rows = np.arange(8)
    gap = predict(x)[rows, targets] - predict(base)[0, targets]
    numeric = E.explain(predict, x, base, Settings("integrated-gradients", steps=64), targets)
    exact = E.explain(predict, x, base, Settings("integrated-gradients", steps=64), targets, gradient)
    assert np.allclose(numeric.sum(axis=1), gap, atol=2e-3)
    assert np.allclose(exact.sum(axis=1), gap, atol=2e-3)
    assert np.allclose(numeric, exact, atol=1e-3)


def test_integrated_gradients_refuse_integer_inputs() -> None:
    x = {"user_id": np.array([[3], [5]], dtype=np.int64), "dense": np.zeros((2, 2), dtype=np.float32)}
    with pytest.raises(ValueError, match=r"'user_id'.*int64.*use kernel-shap or occlusion"):
        E.explain(linear(np.ones((3, 1)), list(x)), x, E.baseline_rows(x, "zeros"),
                  Settings("integrated-gradients"), np.zeros(2))


def ids_and_dense() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, E.Predict]:
    """A recsys-like feed (int64 ids [N, 1], float32 dense [N, 4]), a baseline, and a linear model that checks it
    is fed the inputs' dtypes."""
    rng = np.random.default_rng(4)
    x = {"user_id": rng.integers(0, 50, size=(6, 1)), "dense": rng.normal(size=(6, 4)).astype(np.float32)}
    w = rng.normal(size=(5, 2))
    inner = linear(w, list(x))

    def predict(feed: dict[str, np.ndarray]) -> np.ndarray:
        assert feed["user_id"].dtype == np.int64 and feed["dense"].dtype == np.float32
        return inner(feed)

    return x, {"user_id": np.array([[7]]), "dense": np.full((1, 4), 0.5, dtype=np.float32)}, w, predict


def test_kernel_shap_of_a_linear_model_is_w_times_x_minus_b() -> None:
    x, base, w, predict = ids_and_dense()
    targets = np.array([0, 1, 1, 0, 1, 0])
    attr = E.explain(predict, x, base, Settings("kernel-shap"), targets)
    expect = (flat(x) - flat(base)) * w[:, targets].T
    assert np.allclose(attr, expect, atol=1e-6)


def test_kernel_shap_is_deterministic_and_leaves_numpy_random_alone() -> None:
    rng = np.random.default_rng(5)
    x = {"x": rng.normal(size=(3, 12))}
    predict, _ = mlp(f=12)
    targets = np.array([0, 2, 0])
    settings = Settings("kernel-shap", samples=40)  # far fewer than 2**12 coalitions: shap samples them
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    first = E.explain(predict, x, E.baseline_rows(x, "zeros"), settings, targets)
    assert np.array_equal(np.random.get_state()[1], state)
    again = E.explain(predict, x, E.baseline_rows(x, "zeros"), settings, targets)
    assert np.array_equal(first, again)
    other = E.explain(predict, x, E.baseline_rows(x, "zeros"), Settings("kernel-shap", samples=40, seed=1), targets)
    assert not np.array_equal(first, other)


def test_occlusion_of_a_linear_model_is_w_times_x_minus_b() -> None:
    x, base, w, predict = ids_and_dense()
    x["user_id"][2, 0] = 7  # a feature at the baseline: 0, and no model row for it
    targets = np.array([1, 0, 1, 1, 0, 0])
    attr = E.explain(predict, x, base, Settings("occlusion"), targets)
    assert np.allclose(attr, (flat(x) - flat(base)) * w[:, targets].T, atol=1e-5)
    assert attr[2, 0] == 0


def test_model_calls_are_batched_and_bounded() -> None:
    predict, _ = mlp(f=64, c=10)
    sizes: list[int] = []

    def counted(feed: dict[str, np.ndarray]) -> np.ndarray:
        sizes.append(len(feed["x"]))
        return predict(feed)

    x = {"x": np.random.default_rng(6).normal(size=(10, 64))}
    targets = np.arange(10) % 10
    E.explain(counted, x, E.baseline_rows(x, "zeros"), Settings("integrated-gradients"), targets)
    assert sum(sizes) == 10 * 64 * 32 * 2 and max(sizes) <= E.CHUNK_ROWS and len(sizes) == 5
    sizes.clear()
    E.explain(counted, x, E.baseline_rows(x, "zeros"), Settings("occlusion"), targets)
    assert sizes == [10 * 65]


def test_explain_refuses_mismatched_arguments() -> None:
    x = {"x": np.zeros((2, 3))}
    predict = linear(np.ones((3, 2)), ["x"])
    with pytest.raises(ValueError, match="unknown explanation method 'lime'"):
        Settings("lime")
    with pytest.raises(ValueError, match="the baseline has no input 'x'"):
        E.explain(predict, x, {"y": np.zeros((1, 3))}, Settings("occlusion"), np.zeros(2))
    with pytest.raises(ValueError, match="one target column"):
        E.explain(predict, x, {"x": np.zeros((1, 3))}, Settings("occlusion"), np.zeros(3))
    with pytest.raises(ValueError, match="target column 2 is outside"):
        E.explain(predict, {"x": np.ones((2, 3))}, {"x": np.zeros((1, 3))}, Settings("occlusion"), np.array([0, 2]))
    assert E.explain(predict, {"x": np.zeros((0, 3))}, {"x": np.zeros((1, 3))}, Settings("kernel-shap"),
                     np.zeros(0)).shape == (0, 3)


def test_baseline_rows_keep_each_inputs_dtype() -> None:
    x = {"ids": np.array([[1, 4], [2, 4], [2, 5], [1, 5]], dtype=np.int32),
         "dense": np.array([[0.0, 1.0], [1.0, 3.0]] * 2, dtype=np.float32).reshape(4, 1, 2)}
    zeros = E.baseline_rows(x, "zeros")
    assert zeros["ids"].dtype == np.int32 and zeros["ids"].shape == (1, 2) and not zeros["ids"].any()
    assert zeros["dense"].dtype == np.float32 and zeros["dense"].shape == (1, 1, 2)
    mean = E.baseline_rows(x, "mean")
    assert mean["ids"].tolist() == [[1, 4]]  # the most frequent value; on a tie, the smallest
    assert mean["dense"].tolist() == [[[0.5, 2.0]]] and mean["dense"].dtype == np.float32
    number = E.baseline_rows(x, 2.6)
    assert number["ids"].tolist() == [[3, 3]] and np.allclose(number["dense"], 2.6)
    with pytest.raises(ValueError, match="'zeros', 'mean' or a number"):
        E.baseline_rows(x, "median")
    with pytest.raises(ValueError, match=r"baseline 300 is no value of input 'u' \(uint8: 0..255\)"):
        E.baseline_rows({"u": np.zeros((2, 1), dtype=np.uint8)}, 300)


def test_summary_records_global_per_class_examples_and_top() -> None:
    features = E.feature_list([("x", (12,))])
    attr = np.zeros((4, 12))
    attr[:, 3] = [1.23456789, -1.0, 2.0, 0.5]
    attr[0, 7] = 1 / 3
    attr[1, 0] = np.nan  # a non-finite attribution is recorded as 0 (report.json is strict JSON)
    targets = np.array([0, 0, 2, 2])
    s = E.summary(attr, targets, features, classes=3, examples=[1, 2])
    assert len(s["global"]) == 12 and s["global"][3] == 1.18364 and s["global"][7] == 0.0833333
    assert s["global"][0] == 0.0
    assert [len(row) for row in s["per_class"]] == [12, 12, 12]
    assert s["per_class"][0][3] == 0.117284 and s["per_class"][1] == [0.0] * 12 and s["per_class"][2][3] == 1.25
    assert s["examples"][0] == {"row": 1, "target": 0, "attributions": [0.0, 0, 0, -1.0] + [0.0] * 8}
    assert [t["feature"] for t in s["top"]] == ["x[3]", "x[7]"] + [f"x[{i}]" for i in (0, 1, 2, 4, 5, 6, 8, 9)]
    assert s["top"][0] == {"feature": "x[3]", "importance": 1.18364}
    with pytest.raises(ValueError, match=r"example row\(s\) \[4\]"):
        E.summary(attr, targets, features, 3, [4])


def test_agreement_of_identical_permuted_and_constant_attributions() -> None:
    rng = np.random.default_rng(7)
    ref = rng.normal(size=(20, 10)) * np.arange(1, 11)  # global importance grows with the feature index
    same = E.agreement(ref, ref.copy(), top_k=3)
    assert same == {"attribution_rank_correlation": 1.0, "attribution_top_k_overlap": 1.0,
                    "attribution_example_correlation": 1.0, "attribution_agreement": 1.0}
    shuffled = E.agreement(ref, ref[:, rng.permutation(10)], top_k=3)
    assert shuffled["attribution_rank_correlation"] < 0.9 and shuffled["attribution_example_correlation"] < 0.9
    assert shuffled["attribution_agreement"] == min(v for k, v in shuffled.items() if k != "attribution_agreement")
    zeros = np.zeros((3, 4))
    assert E.agreement(zeros, zeros, 2)["attribution_agreement"] == 1.0  # rows at the baseline: nothing differs
    one = E.agreement(zeros, np.ones((3, 4)), 2)  # constant global importance on both sides: same ranks
    assert one["attribution_rank_correlation"] == 1.0 and one["attribution_example_correlation"] == 0.0
    varying = E.agreement(zeros, rng.normal(size=(3, 4)), 2)
    assert varying["attribution_rank_correlation"] == 0.0 and varying["attribution_example_correlation"] == 0.0


def test_top_k_overlap_counts_shared_features() -> None:
    ref = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    art = np.array([[5.0, 0.0, 3.0, 2.0, 1.0, 4.0]])  # the top 3: {0, 1, 2} against {0, 5, 2}
    assert E.agreement(ref, art, 3)["attribution_top_k_overlap"] == round(2 / 3, 6)
    assert E.agreement(ref, art, 1)["attribution_top_k_overlap"] == 1.0
    assert E.agreement(ref, art, 2)["attribution_top_k_overlap"] == 0.5
    assert E.agreement(ref, art, 100)["attribution_top_k_overlap"] == 1.0  # k is at most the features


def test_agreement_has_no_nan() -> None:
    ref = np.arange(12.0).reshape(3, 4)
    art = ref.copy()
    art[0, 1] = np.nan
    figures = E.agreement(ref, art, 2)
    assert all(np.isfinite(v) for v in figures.values())
    assert figures["attribution_rank_correlation"] == 0.0 and figures["attribution_example_correlation"] == round(
        2 / 3, 6)
    with pytest.raises(ValueError, match="shape"):
        E.agreement(ref, ref[:, :3], 2)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # Keras' own, in model.save
def test_keras_gradient_matches_central_differences(tmp_path: Path) -> None:
    """TensorFlow's gradients of a small Keras model give the attributions central differences give on it, and
    they sum to f(x) - f(b)."""
    from deployc.ml.convert import quiet_tensorflow

    quiet_tensorflow()
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((6,), name="features")
    hidden = keras.layers.Dense(16, activation="tanh")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(hidden))
    path = tmp_path / "m.keras"
    model.save(path)
    gradient = E.keras_gradient(path, "keras", None)

    def predict(feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(model(feed["x"], training=False), dtype=np.float64)

    rng = np.random.default_rng(8)
    x = {"x": rng.normal(size=(300, 6)).astype(np.float32)}  # more rows than one GradientTape pass
    base = E.baseline_rows(x, "zeros")
    targets = predict(x).argmax(axis=1)
    settings = Settings("integrated-gradients", steps=32)
    exact = E.explain(predict, x, base, settings, targets, gradient)
    numeric = E.explain(predict, x, base, settings, targets)
    assert np.corrcoef(exact.ravel(), numeric.ravel())[0, 1] >= 0.99
    gap = predict(x)[np.arange(300), targets] - predict(base)[0, targets]
    assert np.allclose(exact.sum(axis=1), gap, atol=5e-3)
    grads = gradient({"x": x["x"][:2]}, targets[:2])
    assert set(grads) == {"x"} and grads["x"].shape == (2, 6)  # under the feed's name, not the model's
    model.export(tmp_path / "saved", verbose=False)  # the same model as a SavedModel: the same gradients
    saved = E.keras_gradient(tmp_path / "saved", "savedmodel", None)({"x": x["x"][:2]}, targets[:2])
    assert np.allclose(saved["x"], grads["x"], atol=1e-6)
