"""OpenVINO artifacts (quantize openvino-int8, NNCF int8): the pass, the session, a whole build of an ONNX model
that ships one, `deployc serve` running it (JSON, tritonclient's binary default, gRPC), the images that install the
runtime, auto's choice across runtimes, and what `validate` refuses (docs/optimize.md)."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_deployc

try:  # tests/ may or may not be a package
    from tests.quant_support import digits, digits_mlp, onnx_project
    from tests.serve_support import Server
except ImportError:
    from quant_support import digits, digits_mlp, onnx_project
    from serve_support import Server

pytest.importorskip("openvino")
pytest.importorskip("nncf")

@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = onnx_project(tmp_path_factory.mktemp("ov") / "digits")
    r = run_deployc("build", "deploy.yaml", "--out", "out", "-q", cwd=d, cache_dir=d / ".cache")
    assert r.returncode == 0, r.stderr
    return d


@pytest.fixture(scope="module")
def server(built: Path) -> Iterator[Server]:
    with Server(built / "out", "--grpc-port", "0") as s:
        yield s


def ov_predict(folder: Path, x: np.ndarray) -> np.ndarray:
    """The shipped artifact run by OpenVINO directly (no deployc code)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(folder / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled([x])[0])


def quantize(src: Path, out: Path, rows: int, evaluate: Any = None, **config: Any) -> Any:
    """The quantize pass on `src` with `config`, calibrated on the first `rows` digits rows."""
    from deployc.passes.base import PassInput
    from deployc.passes.quantize import QuantizeConfig, QuantizePass

    x = digits()[0][:rows]
    return QuantizePass().apply(PassInput(model=src, out_dir=out, config=QuantizeConfig(**config),
                                          data=lambda which: (x, None), evaluate=evaluate or (lambda p: {}),
                                          gates=None, log=lambda s: None))


def test_pass_writes_an_int8_openvino_model(tmp_path: Path) -> None:
    import openvino as ov

    src = digits_mlp(tmp_path / "m.onnx")
    res = quantize(src, tmp_path / "out", 200, mode="openvino-int8")
    assert res.format == "openvino" and res.model == tmp_path / "out" / "openvino"
    assert sorted(p.name for p in res.model.iterdir()) == ["model.bin", "model.xml"]
    model = ov.Core().read_model(str(res.model / "model.xml"))
    fq = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    assert len(fq) == res.details["quant_ops"]["FakeQuantize"] >= 3  # every MatMul's input and weights
    assert res.details["runtime"] == "openvino" and res.details["model_type"] == "default"
    assert res.details["calibration_rows"] == 200 and res.details["static_batch"] is None
    # int8 weights: the file holds about a quarter of the fp32 weights' bytes
    fp32_bytes = sum(a.nbytes for a in _onnx_weights(src))
    assert (res.model / "model.bin").stat().st_size < 0.4 * fp32_bytes


def _onnx_weights(path: Path) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]


def test_session_matches_openvino_and_runs_rows_alone(tmp_path: Path) -> None:
    """The session's answers are OpenVINO's own, and a row's answer does not depend on its batch."""
    from deployc.ml.evaluate import model_session, predict_onnx

    src = digits_mlp(tmp_path / "m.onnx")
    xe = digits()[2]
    res = quantize(src, tmp_path / "out", 200, mode="openvino-int8")
    sess = model_session(res.model)
    assert sess.fixed_batch is None
    assert [(i.name, i.type, i.shape[1]) for i in sess.get_inputs()] == [("x", "tensor(float)", 64)]
    assert [o.name for o in sess.get_outputs()] == ["output"]
    batch = sess.run(None, {"x": xe[:50]})[0]
    np.testing.assert_allclose(batch, ov_predict(res.model, xe[:50]), rtol=1e-5, atol=1e-6)
    alone = np.concatenate([sess.run(["output"], {"x": xe[i:i + 1]})[0] for i in range(50)])
    np.testing.assert_allclose(alone, batch, rtol=1e-4, atol=1e-6)
    ref = predict_onnx(src, xe)
    assert np.mean(predict_onnx(res.model, xe).argmax(1) == ref.argmax(1)) >= 0.95


@pytest.mark.parametrize("mode, settings", [("openvino-int8-batch1", {}),
                                            ("openvino-int8", {"shapes": {"x": [1, 64]}})])
def test_static_batch_runs_batches_a_row_at_a_time(tmp_path: Path, mode: str, settings: dict[str, Any]) -> None:
    """A static batch of 1 (the batch1 mode, or declared shapes): the evaluation, which runs data.eval through
    the same session, checks the one path that serves."""
    from deployc.ml.evaluate import model_session, predict_onnx
    from deployc.ml.openvino import settings_of

    src = digits_mlp(tmp_path / "m.onnx")
    xe = digits()[2]
    res = quantize(src, tmp_path / "out", 100, mode=mode, openvino=settings)
    assert res.format == "openvino"
    sess = model_session(res.model)
    assert sess.get_inputs()[0].shape == [1, 64] and sess.fixed_batch == 1
    assert settings_of(res.model) == {"input_shapes": {"x": [1, 64]}, "static_batch": 1}
    out = sess.run(None, {"x": xe[:7]})[0]
    assert out.shape == (7, 10)
    np.testing.assert_array_equal(out[3:4], sess.run(None, {"x": xe[3:4]})[0])
    np.testing.assert_array_equal(predict_onnx(res.model, xe[:20])[:7], out)


def test_unknown_static_shape_input_is_an_input_error(tmp_path: Path) -> None:
    from deployc.errors import InputError
    from deployc.ml.openvino import convert_and_quantize

    src = digits_mlp(tmp_path / "m.onnx")
    x, _, _, _ = digits()
    with pytest.raises(InputError, match="openvino.shapes names pixels; the model's inputs are x"):
        convert_and_quantize(src, tmp_path / "ov", x[:10], shapes={"pixels": [1, 64]}, log=lambda s: None)


# --- the whole build and the real server ---------------------------------------------------------------------

def test_build_ships_the_openvino_model_and_records_its_runtime(built: Path) -> None:
    local = built / "out" / "local"
    assert sorted(p.name for p in local.iterdir()) == ["labels.txt", "model.bin", "model.xml", "serving.json"]
    cfg = json.loads((local / "serving.json").read_text())
    import hashlib

    model = cfg["model"]
    assert model["runtime"] == "openvino" and model["path"] == "model.xml"
    assert model["sha256"] == hashlib.sha256((local / "model.xml").read_bytes()).hexdigest()
    assert model["weights"] == {"path": "model.bin",
                                "sha256": hashlib.sha256((local / "model.bin").read_bytes()).hexdigest()}
    assert model["openvino"] == {"input_shapes": {"x": [-1, 64]}, "static_batch": None}
    assert cfg["batching"]["batch_invariant"]["invariant"] is True  # static int8: no batch-dependent scales
    report = json.loads((built / "out" / "report.json").read_text())
    assert report["runtime"] == "openvino"
    shipped = next(a for a in report["artifacts"] if a["shipped"])
    assert shipped["artifact"] == "quantize-openvino-int8" and shipped["evaluation"]["agreement"] >= 0.95
    assert shipped["evaluation"]["size_ratio"] < 0.5
    md = (built / "out" / "report.md").read_text()
    assert "The shipped artifact (`model.xml` + `model.bin`) runs on OpenVINO in `deployc serve`." in md


def test_serving_image_installs_the_openvino_runtime(built: Path) -> None:
    from deployc import __version__

    docker = (built / "out" / "sagemaker" / "Dockerfile").read_text()
    assert f"deployc[serve,openvino]=={__version__}" in docker
    import tarfile

    with tarfile.open(built / "out" / "sagemaker" / "model.tar.gz") as tar:
        assert {"model.xml", "model.bin", "serving.json"} <= {Path(n).name for n in tar.getnames()}


def test_server_answers_with_openvino(built: Path, server: Server) -> None:
    x = digits()[2][:9].astype(np.float32)
    status, meta = server.json("GET", "/v2/models/digits-ov")
    assert status == 200 and meta["platform"] == "openvino"
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    status, out = server.json("POST", "/v2/models/digits-ov/infer", body)
    assert status == 200, out
    got = np.asarray(out["outputs"][0]["data"], dtype=np.float32).reshape(out["outputs"][0]["shape"])
    np.testing.assert_allclose(got, ov_predict(built / "out" / "local", x), rtol=1e-4, atol=1e-6)


def test_tritonclient_binary_and_grpc_defaults(built: Path, server: Server) -> None:
    import re

    http = pytest.importorskip("tritonclient.http")
    grpc = pytest.importorskip("tritonclient.grpc")
    x = digits()[2][:5].astype(np.float32)
    want = ov_predict(built / "out" / "local", x)
    inp = http.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # binary by default
    got = http.InferenceServerClient(f"127.0.0.1:{server.port}").infer("digits-ov", [inp]).as_numpy("output")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    port = int(re.search(r"gRPC on 127\.0\.0\.1:(\d+)", server.text()).group(1))  # type: ignore[union-attr]
    gin = grpc.InferInput("x", list(x.shape), "FP32")
    gin.set_data_from_numpy(x)
    gout = grpc.InferenceServerClient(f"127.0.0.1:{port}").infer("digits-ov", [gin]).as_numpy("output")
    np.testing.assert_allclose(gout, want, rtol=1e-4, atol=1e-6)


def test_server_refuses_changed_weights(built: Path, tmp_path: Path) -> None:
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(built / "out" / "local", bundle)
    data = bytearray((bundle / "model.bin").read_bytes())
    data[100] ^= 0xFF
    (bundle / "model.bin").write_bytes(bytes(data))
    r = run_deployc("serve", str(bundle), "--port", "0")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "model.bin: sha256 does not match serving.json (the weights changed after the build)" in r.stderr


def test_serving_json_weights_must_sit_beside_the_graph(built: Path, tmp_path: Path) -> None:
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(built / "out" / "local", bundle)
    cfg = json.loads((bundle / "serving.json").read_text())
    cfg["model"]["weights"]["path"] = "../model.bin"
    (bundle / "serving.json").write_text(json.dumps(cfg))
    r = run_deployc("serve", str(bundle), "--port", "0")
    assert r.returncode != 0 and "model.weights.path: '../model.bin' leaves the bundle folder" in r.stderr


# --- auto across runtimes, and what validate says --------------------------------------------------------------

def test_auto_measures_every_runtime_and_says_why(tmp_path: Path) -> None:
    src = digits_mlp(tmp_path / "m.onnx")
    p50 = {"int8-dynamic": 0.05, "int8-static": 0.04, "int8-static-per-tensor": 0.041, "float16": 0.09,
           "openvino-int8-batch1": 0.03}

    def evaluate(path: Path) -> dict[str, Any]:  # figures as the build's evaluation gives them; openvino fastest
        mode = path.name.split("-", 1)[1].removesuffix(".onnx")
        assert (path / "model.xml").is_file() if mode.startswith("openvino") else path.suffix == ".onnx"
        return {"size_bytes": 1000 if mode != "int8-static" else 900, "latency_p50_ms": p50.get(mode, 0.02),
                "agreement": 1.0, "gate_failures": []}

    res = quantize(src, tmp_path / "out", 100, evaluate=evaluate, mode="auto")
    assert res.details["chosen"] == "openvino-int8" and res.details["runtime"] == "openvino"
    assert res.format == "openvino" and (res.model / "model.xml").is_file()
    why = {r["mode"]: (r["runtime"], r["kept"], r["why"]) for r in res.details["candidates"]}
    assert why["openvino-int8"] == ("openvino", True, "fastest passing candidate")
    assert why["int8-static"] == ("onnxruntime", False,
                                  "passes, but slower than openvino-int8 (p50 0.04 ms vs 0.02 ms)")


def test_choose_latency_ties_go_to_the_smaller() -> None:
    from deployc.passes.quantize import choose

    rows = [{"mode": m, "gate_failures": [], "figures": {"size_bytes": s, "latency_p50_ms": t}}
            for m, s, t in (("int8-dynamic", 1000, 0.100), ("int8-static", 800, 0.103), ("float16", 500, 0.5))]
    best = choose(rows, ["int8-dynamic", "int8-static", "float16"])
    assert best is not None and best["mode"] == "int8-static"
    assert rows[0]["why"] == "p50 ties with int8-static, larger (1000 vs 800 bytes)"
    best = choose(rows, ["int8-dynamic", "int8-static", "float16"], objective="size")
    assert best is not None and best["mode"] == "float16"
    for r, rows_s in zip(rows, (9000.0, 8700.0, 3000.0), strict=True):
        r["figures"]["throughput_rows_s"] = rows_s
    best = choose(rows, ["int8-dynamic", "int8-static", "float16"], objective="throughput")
    assert best is not None and best["mode"] == "int8-static"  # within 5% of the most, and smaller
    assert rows[2]["why"] == "passes, but fewer rows a second than int8-static (3000.0 vs 8700.0)"


def _validate(d: Path) -> Any:
    return run_deployc("validate", "deploy.yaml", cwd=d)


TRITON = """\
  triton: {}
"""


def test_validate_refuses_openvino_for_a_target_that_loads_onnx(tmp_path: Path) -> None:
    d = onnx_project(tmp_path / "p", extra=TRITON)
    r = _validate(d)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert ("deploy.yaml:9:16: optimize[0].quantize.mode: openvino-int8 makes an OpenVINO model, but "
            "targets.triton loads model.onnx with a runtime of its own: leave openvino-int8 out of this pass"
            ) in r.stderr


def test_validate_refuses_openvino_before_another_pass(tmp_path: Path) -> None:
    d = onnx_project(tmp_path / "p", quantize="{mode: openvino-int8}\n  - quantize: {mode: float16}")
    r = _validate(d)
    assert r.returncode != 0
    assert "openvino-int8 makes an OpenVINO model, which no later optimize item can read" in r.stderr


def test_auto_leaves_openvino_out_where_it_could_not_ship(tmp_path: Path) -> None:
    from deployc.api import validate
    from deployc.compiler.resolved import resolve

    d = onnx_project(tmp_path / "p", quantize="{mode: auto}", extra=TRITON)
    assert _validate(d).returncode == 0
    (use,) = resolve(validate(d / "deploy.yaml"), d).passes
    assert use.config.candidates == ["int8-dynamic", "int8-static", "int8-static-per-tensor", "float16"]
    plain = onnx_project(tmp_path / "q", quantize="{mode: auto}")
    (use,) = resolve(validate(plain / "deploy.yaml"), plain).passes
    assert use.config.candidates[-2:] == ["openvino-int8", "openvino-int8-batch1"]


@pytest.mark.parametrize("shapes, message", [
    ("{pixels: [1, 64]}", "optimize[0].quantize.openvino.shapes.pixels: the model has no input named 'pixels' "
                          "(its inputs: x)"),
    ("{x: [1, 8, 8]}", "optimize[0].quantize.openvino.shapes.x: [1, 8, 8] has 3 axes; input x has 2 (shape [-1, 64])"),
    ("{x: [1, 32]}", "optimize[0].quantize.openvino.shapes.x: [1, 32] changes an axis the model fixes (input x has "
                     "shape [-1, 64])"),
    ("{x: [4, 64]}", "optimize[0].quantize.openvino.shapes.x: [4, 64]: axes are positive or -1 (free), and the batch "
                     "axis (the first) is 1 or -1"),
])
def test_validate_checks_static_shapes_against_the_model(tmp_path: Path, shapes: str, message: str) -> None:
    d = onnx_project(tmp_path / "p", quantize="{mode: openvino-int8, openvino: {shapes: " + shapes + "}}")
    r = _validate(d)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert message in r.stderr, r.stderr


def _graph(path: Path, attention: bool, mask_chain: int = 10) -> Path:
    """Softmax over masked attention scores (a select written as mask * s + (1 - mask) * -1e9, the mask through
    `mask_chain` Identity nodes, as exported Keras graphs have casts and reshapes), or over a Dense head."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.array(0.35, np.float32), "scale"),
             numpy_helper.from_array(np.array(-1e9, np.float32), "neg"),
             numpy_helper.from_array(np.ones((8, 4), np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["q", "k" if attention else "w"], ["s"])]
    prev = "mask"
    for i in range(mask_chain):
        nodes.append(helper.make_node("Identity", [prev], [f"m{i}"]))
        prev = f"m{i}"
    nodes += [helper.make_node("Mul", ["s", "scale"], ["ss"]), helper.make_node("Cast", [prev], ["mf"], to=f),
              helper.make_node("Not", [prev], ["nm"]), helper.make_node("Cast", ["nm"], ["nmf"], to=f),
              helper.make_node("Mul", ["ss", "mf"], ["a"]), helper.make_node("Mul", ["nmf", "neg"], ["b"]),
              helper.make_node("Add", ["a", "b"], ["z"]), helper.make_node("Softmax", ["z"], ["out"], axis=-1)]
    ins = [helper.make_tensor_value_info("q", f, ["N", 4, 8]), helper.make_tensor_value_info("k", f, ["N", 8, 4]),
           helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 4, 4])]
    graph = helper.make_graph(nodes, "g", ins if attention else [ins[0], ins[2]],
                              [helper.make_tensor_value_info("out", f, ["N", 4, 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_attention_is_found_behind_a_long_mask_path(tmp_path: Path) -> None:
    """NNCF's transformer model type is what keeps a masked attention accurate (examples/nlp: agreement 0.82
    without it, 1.0 with it); the search must reach the scores' MatMul past the mask's casts."""
    from deployc.ml.openvino import has_attention

    assert has_attention(_graph(tmp_path / "a.onnx", attention=True))
    assert not has_attention(_graph(tmp_path / "d.onnx", attention=False))


def test_building_an_openvino_model_reports_nothing_to_intel(tmp_path: Path) -> None:
    """NNCF's telemetry (openvino_telemetry) writes a client id under ~/intel and sends usage events unless it is
    kept out; a build in a real process (no pytest, which NNCF exempts itself in) leaves HOME untouched."""
    import subprocess
    import sys

    src = digits_mlp(tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", digits()[0][:50])
    code = ("import sys, numpy as np; from pathlib import Path; from deployc.ml.openvino import convert_and_quantize; "
            f"convert_and_quantize(Path({str(src)!r}), Path({str(tmp_path / 'ov')!r}), "
            f"np.load({str(tmp_path / 'x.npy')!r}), log=lambda s: None); "
            "print(sys.modules.get('openvino_telemetry', 'absent'))")
    home = tmp_path / "home"
    home.mkdir()
    from conftest import deployc_env

    r = subprocess.run([sys.executable, "-c", code], env={**deployc_env(), "HOME": str(home)}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "None"
    assert (tmp_path / "ov" / "model.xml").is_file() and list(home.iterdir()) == []


def test_batch1_artifact_serves_multi_row_requests_a_row_at_a_time(tmp_path: Path) -> None:
    d = onnx_project(tmp_path / "b1", quantize="{mode: openvino-int8-batch1}")
    (d / "deploy.yaml").write_text((d / "deploy.yaml").read_text().split("  sagemaker:")[0])
    r = run_deployc("build", "deploy.yaml", "--out", "out", "-q", cwd=d, cache_dir=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((d / "out" / "local" / "serving.json").read_text())
    assert cfg["model"]["openvino"] == {"input_shapes": {"x": [1, 64]}, "static_batch": 1}
    assert cfg["batching"]["enabled"] is False  # nothing to merge requests into
    x = digits()[2][:6].astype(np.float32)
    import openvino as ov

    compiled = ov.Core().compile_model(str(d / "out" / "local" / "model.xml"), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    want = np.concatenate([compiled([x[i:i + 1]])[0] for i in range(len(x))])
    with Server(d / "out") as srv:
        body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        status, out = srv.json("POST", "/v2/models/digits-ov/infer", body)
    assert status == 200, out
    got = np.asarray(out["outputs"][0]["data"], dtype=np.float32).reshape(out["outputs"][0]["shape"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
