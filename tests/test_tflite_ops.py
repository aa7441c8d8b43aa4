"""The op set check: ops outside the builtins fail by name unless Select TF ops are allowed."""
from __future__ import annotations

from pathlib import Path

import pytest

from deployc.errors import InputError
from deployc.ml.convert import quiet_tensorflow
from deployc.ml.tflite import convert
from deployc.targets.tflite import TFLiteConfig as TFLiteTarget

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def det_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model whose one custom layer uses tf.linalg.det, which has no TFLite builtin."""
    quiet_tensorflow()
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="deployc_tests")
    class Determinant(keras.layers.Layer):
        def call(self, x):  # type: ignore[no-untyped-def]
            return x + tf.linalg.det(tf.reshape(x[:, :4], (-1, 2, 2)))[:, None]

    model = keras.Sequential([keras.Input((8,), name="features"), Determinant(), keras.layers.Dense(3)])
    path = tmp_path_factory.mktemp("det") / "det.keras"
    model.save(path)
    return path


def test_builtins_only_names_the_offending_op(det_model: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        convert(det_model, tmp_path / "m.tflite", TFLiteTarget(quantization="none"), None)
    assert "MatrixDeterminant" in str(err.value) and "allow_select_tf_ops" in str(err.value)
    assert err.value.exit_code == 1
    assert not (tmp_path / "m.tflite").exists()


def test_select_tf_ops_when_allowed_come_with_a_warning(det_model: Path, tmp_path: Path) -> None:
    info = convert(det_model, tmp_path / "m.tflite", TFLiteTarget(quantization="none", allow_select_tf_ops=True),
                   None)
    assert info["select_tf_ops"] == ["FlexMatrixDeterminant"]
    assert any("FlexMatrixDeterminant" in w and "runtime must include" in w for w in info["warnings"])


def _lstm(folder: Path, unroll: bool) -> Path:
    quiet_tensorflow()
    import keras

    inputs = keras.Input((5, 3), name="sequence")
    hidden = keras.layers.LSTM(4, unroll=unroll)(inputs)
    path = folder / f"lstm-{unroll}.keras"
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden), name="lstm").save(path)
    return path


def test_an_lstm_names_its_tensor_list_ops_and_both_fixes(tmp_path: Path) -> None:
    """A recurrent layer's loop lowers to TensorList ops; the converter's MLIR location text never said which op
    or what to do."""
    model = _lstm(tmp_path, unroll=False)
    with pytest.raises(InputError) as err:
        convert(model, tmp_path / "m.tflite", TFLiteTarget(quantization="dynamic"), None)
    text = str(err.value)
    assert "ops outside the TFLite builtin op set: TensorListReserve" in text
    assert "allow_select_tf_ops: true" in text and "unroll=True" in text and "loc(" not in text
    # the first fix: Select TF ops
    info = convert(model, tmp_path / "s.tflite", TFLiteTarget(quantization="none", allow_select_tf_ops=True), None)
    assert "FlexTensorListReserve" in info["select_tf_ops"]
    # the second: an unrolled layer over a fixed length converts to builtins only
    info = convert(_lstm(tmp_path, unroll=True), tmp_path / "u.tflite", TFLiteTarget(quantization="dynamic"), None)
    assert info["select_tf_ops"] == [] and "FULLY_CONNECTED" in info["ops"]


def _id_model(folder: Path, name: str, layer: str) -> Path:
    """int64 ids through an op TFLite has no builtin for: a floor division (FLOOR_DIV takes int32, not int64),
    or a Hashing layer (ids -> strings -> hash buckets)."""
    quiet_tensorflow()
    import keras
    from keras import ops

    ids = keras.Input((8,), dtype="int64", name="item_ids")
    if layer == "floordiv":
        hidden = ops.cast(ops.floor_divide(ids, 7), "float32")
    else:
        hidden = keras.layers.Flatten()(keras.layers.Embedding(64, 2)(keras.layers.Hashing(num_bins=64)(ids)))
    path = folder / f"{name}.keras"
    keras.Model(ids, keras.layers.Dense(1)(hidden)).save(path)
    return path


def test_int64_and_string_ops_name_the_ops_and_the_fixes(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        convert(_id_model(tmp_path, "div", "floordiv"), tmp_path / "m.tflite", TFLiteTarget(quantization="none"),
                None)
    text = str(err.value)
    assert "ops outside the TFLite builtin op set: FloorDiv (on int64)" in text
    assert "allow_select_tf_ops: true" in text and 'keras.ops.cast(ids, "int32")' in text and "loc(" not in text
    with pytest.raises(InputError) as err:
        convert(_id_model(tmp_path, "hash", "hashing"), tmp_path / "h.tflite", TFLiteTarget(quantization="dynamic"),
                None)
    text = str(err.value)
    assert "AsString (on strings)" in text and "StringToHashBucketFast (on strings)" in text
    assert "allow_select_tf_ops: true" in text and "strings into ids before the model" in text
    assert "int32" not in text  # a string op's fix is not the int64 one
    info = convert(tmp_path / "div.keras", tmp_path / "s.tflite",
                   TFLiteTarget(quantization="none", allow_select_tf_ops=True), None)
    assert info["select_tf_ops"] == ["FlexFloorDiv"] and info["inputs"][0]["dtype"] == "int64"
