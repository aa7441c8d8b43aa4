"""Tiny deterministic ONNX models and an evaluate callable for the quantize tests (built in well under a second)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deployc.ml.evaluate import compare, measure_onnx, predict_onnx, sizes

IR_VERSION = 8  # readable by every onnxruntime deployc supports
OPSET = 17


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    return x[:1200], y[:1200], x[1200:], y[1200:]


def _save(nodes: list[Any], inits: list[Any], in_shape: list[Any], n_out: int, path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", n_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def digits_mlp(path: Path, hidden: int = 128) -> Path:
    """A digits classifier 64 -> hidden -> hidden -> 10 written as ONNX MatMul/Add/Relu/Softmax.

    The hidden layers are fixed random projections and the last layer is a ridge fit (closed form, fast and
    deterministic): about 95% accurate, a real model for agreement checks without a training loop.
    """
    from onnx import helper, numpy_helper

    x, y, _, _ = digits()
    rng = np.random.default_rng(0)
    coefs = [rng.standard_normal((64, hidden)) / 4, rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)]
    intercepts = [rng.standard_normal(hidden) * 0.5, rng.standard_normal(hidden) * 0.1]
    h = x.astype(np.float64)
    for w, b in zip(coefs, intercepts, strict=True):
        h = np.maximum(h @ w + b, 0)
    target = np.eye(10)[y] * 10.0  # logits scaled so the softmax is confident
    hb = np.hstack([h, np.ones((len(h), 1))])
    sol = np.linalg.solve(hb.T @ hb + 1.0 * np.eye(hidden + 1), hb.T @ target)
    coefs.append(sol[:-1])
    intercepts.append(sol[-1])
    nodes, inits, prev = [], [], "x"
    for i, (w, b) in enumerate(zip(coefs, intercepts, strict=True)):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"mm{i}"], name=f"dense{i}/MatMul"),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"a{i}"], name=f"dense{i}/Add")]
        prev = f"a{i}"
        if i < len(coefs) - 1:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"], name=f"dense{i}/Relu"))
            prev = f"r{i}"
    nodes.append(helper.make_node("Softmax", [prev], ["output"], name="softmax", axis=-1))
    return _save(nodes, inits, ["N", 64], 10, path)


def tiny_cnn(path: Path, seed: int = 0) -> Path:
    """Conv(16, 3x3) -> Relu -> Conv(32) -> Relu -> global pool -> MatMul: random but fixed weights, 8x8 input."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((16, 1, 3, 3)) * 0.5).astype(np.float32)
    w2 = (rng.standard_normal((32, 16, 3, 3)) * 0.1 * (1 + np.arange(32)[:, None, None, None])).astype(np.float32)
    wd = rng.standard_normal((32, 10)).astype(np.float32) * 0.1
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (wd, "wd"),
                                                        (np.zeros(16, np.float32), "b1"),
                                                        (np.zeros(32, np.float32), "b2"))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "wd"], ["output"], name="dense")]
    return _save(nodes, inits, ["N", 1, 8, 8], 10, path)


def gate_failures(figures: dict[str, Any], gates: dict[str, float]) -> list[str]:
    """The same checks the build applies, keyed like deployc.schema.spec.Gates."""
    out = []
    if "min_agreement" in gates and figures.get("agreement", 1.0) < gates["min_agreement"]:
        out.append(f"agreement {figures['agreement']} < {gates['min_agreement']}")
    if "max_abs_error" in gates and figures["max_abs_error"] > gates["max_abs_error"]:
        out.append(f"max_abs_error {figures['max_abs_error']} > {gates['max_abs_error']}")
    if "max_size_bytes" in gates and figures["size_bytes"] > gates["max_size_bytes"]:
        out.append(f"size {figures['size_bytes']} > {gates['max_size_bytes']}")
    return out


def make_evaluate(reference: Path, x: np.ndarray, y: np.ndarray | None,
                  gates: dict[str, float]) -> Callable[[Path], dict[str, Any]]:
    """An evaluate callable like the build's: figures of a candidate vs `reference` on (x, y), gates applied."""
    ref: list[np.ndarray] = []  # computed on first use: a pass that never evaluates never runs the reference

    def evaluate(candidate: Path) -> dict[str, Any]:
        if not ref:
            ref.append(predict_onnx(reference, x))
        figures = compare(ref[0], predict_onnx(candidate, x), y, "classification")
        figures.update(sizes(candidate))
        figures.update(measure_onnx(candidate, x, min_seconds=0.02))
        figures["gate_failures"] = gate_failures(figures, gates)
        return figures

    return evaluate


ONNX_SPEC = """\
apiVersion: deployc/v1
name: digits-ov
version: 1.0.0
model: {path: model.onnx, labels: labels.txt}
data:
  eval: {path: data.npz, x: x_eval, y: y_eval}
  calibration: {path: data.npz, x: x_calib}
optimize:
  - quantize: QUANTIZE
gates: {min_agreement: 0.95, max_accuracy_drop: 0.03}
measure: {min_seconds: 0.05}
targets:
  local: {}
  sagemaker:
    region: eu-west-1
    role_arn: arn:aws:iam::123456789012:role/sagemaker-exec
    image_uri: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/deployc-serve:0.1.0
    s3_prefix: s3://my-models/deployc
"""


def onnx_project(root: Path, quantize: str = "{mode: openvino-int8}", extra: str = "") -> Path:
    """A project of the digits MLP as an ONNX input, calibration and eval data, one quantize item (`quantize`:
    its settings as YAML flow), targets local and sagemaker (`extra`: more target lines)."""
    root.mkdir(parents=True, exist_ok=True)
    digits_mlp(root / "model.onnx")
    x, _, xe, ye = digits()
    np.savez(root / "data.npz", x_eval=xe, y_eval=ye, x_calib=x[:300])
    (root / "labels.txt").write_text("".join(f"digit-{i}\n" for i in range(10)))
    (root / "deploy.yaml").write_text(ONNX_SPEC.replace("QUANTIZE", quantize) + extra)
    return root
