"""The quantize pass on tiny ONNX models: real int8 / fp16 graphs, calibration, auto's choice, fallbacks."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from deployc.errors import GateError, InputError
from deployc.passes.base import PassInput
from deployc.passes.quantize import QuantizePass, data_needed_for
from deployc.schema.passes import QuantizeConfig
from tests.quant_support import digits, digits_mlp, make_evaluate, tiny_cnn

X_TRAIN, Y_TRAIN, X_EVAL, Y_EVAL = digits()


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_mlp(tmp_path_factory.mktemp("mlp") / "fp32.onnx")


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cnn(tmp_path_factory.mktemp("cnn") / "fp32.onnx")


def run(model: Path, out: Path, gates: dict[str, float] | None = None, calibration: np.ndarray | None = None,
        **config: Any) -> Any:
    data = {"calibration": (X_TRAIN[:200] if calibration is None else calibration, None)}

    def get(split: str) -> tuple[Any, Any]:
        if split not in data or data[split][0] is None:
            raise ValueError(f"data.{split} is not in the spec")
        return data[split]

    inp = PassInput(model=model, out_dir=out, config=QuantizeConfig(**config), data=get,
                    evaluate=make_evaluate(model, X_EVAL, None, gates or {}), gates=None, log=lambda _: None)
    return QuantizePass().apply(inp)


def _cnn_x(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, 1, 8, 8)


def initializer_types(path: Path) -> dict[str, int]:
    return {t.name: t.data_type for t in onnx.load(str(path)).graph.initializer}


def op_types(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def agreement(a: Path, b: Path, x: np.ndarray) -> float:
    from deployc.ml.evaluate import predict_onnx

    return float(np.mean(predict_onnx(a, x).argmax(1) == predict_onnx(b, x).argmax(1)))


def test_pass_declares_itself() -> None:
    p = QuantizePass()
    assert (p.name, p.input_format, p.output_format, p.libs) == ("quantize", "onnx", "onnx", ("onnx", "onnxruntime"))
    assert data_needed_for(QuantizeConfig(mode="int8-dynamic")) == ()
    assert data_needed_for(QuantizeConfig(mode="int8-static")) == ("calibration",)
    assert data_needed_for(QuantizeConfig(mode="auto")) == ("calibration", "eval")
    assert data_needed_for(QuantizeConfig(mode="auto", candidates=["float16"])) == ("eval",)
    assert data_needed_for(QuantizeConfig(mode="openvino-int8")) == ("calibration",)
    assert p.libs_for(QuantizeConfig(mode="auto")) == ("onnx", "onnxruntime", "openvino", "nncf")
    assert p.libs_for(QuantizeConfig(mode="auto", candidates=["float16", "int8-static"])) == ("onnx", "onnxruntime")


def test_dynamic_is_int8_and_agrees(mlp: Path, tmp_path: Path) -> None:
    res = run(mlp, tmp_path, mode="int8-dynamic")
    assert res.model == tmp_path / "model.onnx"
    types = initializer_types(res.model)
    assert {types[f"w{i}_quantized"] for i in range(3)} == {TensorProto.INT8}
    assert not any(n in types for n in ("w0", "w1", "w2"))  # no float copy of the weights left
    ops = op_types(res.model)
    assert ops.count("MatMulInteger") == 3 and "DynamicQuantizeLinear" in ops
    assert res.details["mode"] == "int8-dynamic" and res.details["quant_ops"]["MatMulInteger"] == 3
    assert res.model.stat().st_size < 0.35 * mlp.stat().st_size  # 0.25 plus names and scales
    assert agreement(mlp, res.model, X_EVAL) >= 0.98


def _int8_weights(path: Path) -> dict[str, tuple[tuple[int, ...], np.ndarray]]:
    """Weights stored as int8 and dequantized in the graph: name -> (shape, scale)."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        w = inits.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if w is not None and w.data_type == TensorProto.INT8:
            out[w.name] = (tuple(w.dims), numpy_helper.to_array(inits[n.input[1]]))
    return out


def test_static_is_qdq_int8_per_channel(cnn: Path, tmp_path: Path) -> None:
    res = run(cnn, tmp_path / "all", calibration=_cnn_x(X_TRAIN[:64]), mode="int8-static", keep_edges_float=False)
    ops = op_types(res.model)
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 6
    weights = _int8_weights(res.model)
    assert sorted(shape for shape, _ in weights.values()) == [(16, 1, 3, 3), (32, 10), (32, 16, 3, 3)]
    scale = next(sc for shape, sc in weights.values() if shape == (32, 16, 3, 3))
    assert scale.shape == (32,) and scale[-1] > 10 * scale[0]  # one scale per output channel
    d = res.details
    assert (d["format"], d["activation_type"], d["per_channel"], d["calibration_rows"]) == ("QDQ", "int8", True, 64)
    assert d["preprocess"] == "full" and d["preprocess_errors"] == []

    default = run(cnn, tmp_path / "default", calibration=_cnn_x(X_TRAIN[:64]), mode="int8-static")
    assert [shape for shape, _ in _int8_weights(default.model).values()] == [(32, 16, 3, 3)]
    assert {t.name: t.data_type for t in onnx.load(str(default.model)).graph.initializer}["w1"] == TensorProto.FLOAT
    assert default.details["keep_edges_float"] is True and "conv1" in default.details["excluded_nodes"]


def test_static_agrees_on_digits(mlp: Path, tmp_path: Path) -> None:
    res = run(mlp, tmp_path, mode="int8-static")
    assert res.details["calibration_method"] == QuantizeConfig().calibration_method
    assert agreement(mlp, res.model, X_EVAL) >= 0.97


def _input_scale(path: Path) -> float:
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    return float(numpy_helper.to_array(inits[node.input[1]]))


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_scales_follow_calibration(mlp: Path, tmp_path: Path, method: str) -> None:
    full = run(mlp, tmp_path / "a", calibration=X_TRAIN[:100], mode="int8-static", calibration_method=method)
    dim = run(mlp, tmp_path / "b", calibration=X_TRAIN[:100] * 0.25, mode="int8-static", calibration_method=method)
    a, b = _input_scale(full.model), _input_scale(dim.model)
    assert b == pytest.approx(a * 0.25, rel=0.2)
    assert full.details["calibration_method"] == method


def test_float16_weights_fp32_io(mlp: Path, tmp_path: Path) -> None:
    res = run(mlp, tmp_path, mode="float16")
    model = onnx.load(str(res.model))
    assert {model.graph.initializer[i].data_type for i in range(len(model.graph.initializer))} == {TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    from deployc.ml.evaluate import predict_onnx

    assert np.max(np.abs(predict_onnx(mlp, X_EVAL) - predict_onnx(res.model, X_EVAL))) < 5e-3
    assert 0.45 < res.model.stat().st_size / mlp.stat().st_size < 0.55


@pytest.mark.parametrize("mode,method", [("int8-dynamic", "minmax"), ("float16", "minmax"),
                                         ("int8-static", "minmax"), ("int8-static", "entropy"),
                                         ("int8-static", "percentile")])
def test_output_is_deterministic(mlp: Path, tmp_path: Path, mode: str, method: str) -> None:
    a = run(mlp, tmp_path / "a", mode=mode, calibration_method=method).model.read_bytes()
    b = run(mlp, tmp_path / "b", mode=mode, calibration_method=method).model.read_bytes()
    assert a == b


def test_auto_keeps_smallest_passing(mlp: Path, tmp_path: Path) -> None:
    res = run(mlp, tmp_path, gates={"min_agreement": 0.9}, mode="auto", candidates=["float16", "int8-dynamic"],
              objective="size")
    d = res.details
    assert d["chosen"] == "int8-dynamic" and TensorProto.INT8 in initializer_types(res.model).values()
    rows = {r["mode"]: r for r in d["candidates"]}
    assert rows["int8-dynamic"]["kept"] is True and rows["float16"]["kept"] is False
    assert "larger than int8-dynamic" in rows["float16"]["why"]
    assert rows["float16"]["figures"]["size_bytes"] > rows["int8-dynamic"]["figures"]["size_bytes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # exactly one artifact


def test_auto_keeps_float16_when_only_it_passes(mlp: Path, tmp_path: Path) -> None:
    res = run(mlp, tmp_path, gates={"max_abs_error": 0.005}, mode="auto")
    d = res.details
    assert d["chosen"] == "float16"
    rows = {r["mode"]: r for r in d["candidates"]}
    assert set(rows) == {"int8-dynamic", "int8-static", "int8-static-per-tensor", "float16", "openvino-int8",
                         "openvino-int8-batch1"}
    assert {r["runtime"] for r in d["candidates"]} == {"onnxruntime", "openvino"}
    for mode in ("int8-dynamic", "int8-static", "int8-static-per-tensor", "openvino-int8", "openvino-int8-batch1"):
        assert rows[mode]["kept"] is False and rows[mode]["why"].startswith("gates failed: max_abs_error")
    assert {t for t in initializer_types(res.model).values()} == {TensorProto.FLOAT16}


def test_auto_without_passing_candidate_raises(mlp: Path, tmp_path: Path) -> None:
    with pytest.raises(GateError) as err:
        run(mlp, tmp_path, gates={"max_size_bytes": 1000}, mode="auto")
    assert ("int8-dynamic, int8-static, int8-static-per-tensor, float16, openvino-int8, openvino-int8-batch1"
            in str(err.value))
    table = err.value.table.splitlines()
    assert table[0].split()[:2] == ["candidate", "runtime"] and [line.split()[:2] for line in table[1:]] == [
        ["int8-dynamic", "onnxruntime"], ["int8-static", "onnxruntime"], ["int8-static-per-tensor", "onnxruntime"],
        ["float16", "onnxruntime"], ["openvino-int8", "openvino"], ["openvino-int8-batch1", "openvino"]]
    assert all("size" in line and "> 1000" in line for line in table[1:])
    assert not (tmp_path / "model.onnx").exists()


def test_auto_skips_static_without_calibration(mlp: Path, tmp_path: Path) -> None:
    inp_none = PassInput(model=mlp, out_dir=tmp_path, config=QuantizeConfig(mode="auto"),
                         data=_no_data, evaluate=make_evaluate(mlp, X_EVAL, None, {}), gates=None,
                         log=lambda _: None)
    res = QuantizePass().apply(inp_none)
    rows = {r["mode"]: r for r in res.details["candidates"]}
    assert rows["int8-static"]["why"].startswith("not built: quantize int8-static needs data.calibration")
    assert res.details["chosen"] == "int8-dynamic"


def _no_data(split: str) -> tuple[Any, Any]:
    raise ValueError(f"data.{split} is not in the spec")


def test_static_without_calibration_is_an_input_error(mlp: Path, tmp_path: Path) -> None:
    inp = PassInput(model=mlp, out_dir=tmp_path, config=QuantizeConfig(mode="int8-static"), data=_no_data,
                    evaluate=make_evaluate(mlp, X_EVAL, None, {}), gates=None, log=lambda _: None)
    with pytest.raises(InputError, match="data.calibration"):
        QuantizePass().apply(inp)


def test_preprocess_falls_back(mlp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime.quantization.shape_inference as si

    real = si.quant_pre_process
    calls: list[bool] = []

    def symbolic_fails(src: str, dst: str, skip_symbolic_shape: bool = False, **kw: Any) -> None:
        calls.append(skip_symbolic_shape)
        if not skip_symbolic_shape:
            raise RuntimeError("Incomplete symbolic shape inference")
        real(src, dst, skip_symbolic_shape=True, **kw)

    monkeypatch.setattr(si, "quant_pre_process", symbolic_fails)
    res = run(mlp, tmp_path / "a", mode="int8-static")
    assert calls == [False, True]
    assert res.details["preprocess"] == "skip_symbolic_shape"
    assert "Incomplete symbolic shape inference" in res.details["preprocess_errors"][0]

    def always_fails(src: str, dst: str, **kw: Any) -> None:
        raise ValueError("broken graph")

    monkeypatch.setattr(si, "quant_pre_process", always_fails)
    res = run(mlp, tmp_path / "b", mode="int8-static")
    assert res.details["preprocess"] == "none" and len(res.details["preprocess_errors"]) == 2
    assert "QuantizeLinear" in op_types(res.model)
    assert agreement(mlp, res.model, X_EVAL) >= 0.97


def test_failed_shape_inference_leaves_nothing_in_the_working_directory(mlp: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's symbolic shape inference saves sym_shape_infer_temp.onnx (and its external data) into the
    working directory when it gives up (tools/symbolic_shape_infer.py); a build must not litter the user's."""
    import onnxruntime.quantization.shape_inference as si
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    real = si.quant_pre_process

    def gives_up(src: str, dst: str, skip_symbolic_shape: bool = False, **kw: Any) -> None:
        if not skip_symbolic_shape:  # what infer_shapes does on an incomplete graph, then raises
            onnx.save_model(onnx.load(src), "sym_shape_infer_temp.onnx", save_as_external_data=True)
            raise RuntimeError("Incomplete symbolic shape inference")
        real(src, dst, skip_symbolic_shape=True, **kw)

    assert SymbolicShapeInference.infer_shapes.__code__.co_consts.count("sym_shape_infer_temp.onnx") == 1
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(si, "quant_pre_process", gives_up)
    res = run(mlp, tmp_path / "out", mode="int8-static")
    assert res.details["preprocess"] == "skip_symbolic_shape"
    assert list(work.iterdir()) == []


def test_auto_drops_candidate_the_evaluator_rejects(mlp: Path, tmp_path: Path) -> None:
    real = make_evaluate(mlp, X_EVAL, None, {})

    def evaluate(path: Path) -> dict[str, Any]:
        if "int8-dynamic" in path.name:
            raise InputError(f"{path.name}: onnxruntime cannot load it")
        return real(path)

    inp = PassInput(model=mlp, out_dir=tmp_path, config=QuantizeConfig(mode="auto", candidates=["int8-dynamic",
                                                                                                 "float16"]),
                    data=_no_data, evaluate=evaluate, gates=None, log=lambda _: None)
    res = QuantizePass().apply(inp)
    rows = {r["mode"]: r for r in res.details["candidates"]}
    assert rows["int8-dynamic"]["why"].startswith("not evaluated: ") and rows["int8-dynamic"]["kept"] is False
    assert res.details["chosen"] == "float16" and rows["float16"]["why"] == "fastest passing candidate"


def test_choose_breaks_near_size_ties_by_latency() -> None:
    from deployc.passes.quantize import choose

    def rows(size_b: int) -> list[dict[str, Any]]:
        return [{"mode": "int8-dynamic", "gate_failures": [], "figures": {"size_bytes": 100, "latency_p50_ms": 6.0}},
                {"mode": "int8-static", "gate_failures": [], "figures": {"size_bytes": size_b, "latency_p50_ms": 1.0}},
                {"mode": "float16", "gate_failures": ["agreement 0.5 < 0.99"],
                 "figures": {"size_bytes": 50, "latency_p50_ms": 0.5}}]

    near = rows(103)
    assert choose(near, ["int8-dynamic", "int8-static", "float16"], "size")["mode"] == "int8-static"
    assert near[0]["why"].startswith("size ties with int8-static, slower p50")
    assert near[2]["why"] == "gates failed: agreement 0.5 < 0.99"
    far = rows(110)
    assert choose(far, ["int8-dynamic", "int8-static", "float16"], "size")["mode"] == "int8-dynamic"
    assert far[1]["why"] == "passes, but larger than int8-dynamic (110 vs 100 bytes)"
