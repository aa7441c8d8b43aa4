"""`deployc serve` with models of several named inputs and outputs, and tasks beyond multi-class classification.

Two small ONNX models built here with onnx.helper: a "ranker" (int64 token ids and an attention mask in; softmax
`probs` and `logits` out, with `prediction: logits`) and a binary "recsys" model (user and item ids, float
features and a BOOL flag in; a sigmoid `click` [-1, 1] and its `score` out). Each is served as a real process and
compared with onnxruntime run directly; then the hostile bodies: missing inputs, float ids, npz archives with
unknown arrays, zip bombs.
"""
from __future__ import annotations

import io
import json
import re
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployc import conventions as C
from deployc.errors import InputError

try:  # tests/ may or may not be a package
    from tests.serve_support import (
        Server,
        _save,
        metric_samples,
        metric_value,
        rss_bytes,
        write_bundle,
        write_model_bundle,
    )
except ImportError:
    from serve_support import Server, _save, metric_samples, metric_value, rss_bytes, write_bundle, write_model_bundle

NPZ = "application/x-npz"
RANKER_LABELS = ["a", "b", "c", "d"]
RECSYS_LABELS = ["no_click", "clicked"]
THRESHOLD = 0.7
VOCAB, SEQ = 16, 8


# --- models ---

def make_ranker(path: Path) -> None:
    """input_ids, attention_mask INT64 [-1, 8] -> z = sum of the masked embeddings [-1, 4];
    probs = softmax(z), logits = z with its classes reversed (so the two outputs' argmax differ)."""
    from onnx import TensorProto, helper, numpy_helper

    emb = np.random.default_rng(1).standard_normal((VOCAB, 4)).astype(np.float32)
    reverse = np.eye(4, dtype=np.float32)[::-1].copy()
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["emb"], axis=0),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axis2"], ["m3"]),
        helper.make_node("Mul", ["emb", "m3"], ["w"]),
        helper.make_node("ReduceSum", ["w", "axis1"], ["z"], keepdims=0),
        helper.make_node("Softmax", ["z"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["z", "R"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "ranker",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", SEQ]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", SEQ])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(emb, "E"), numpy_helper.from_array(reverse, "R"),
         numpy_helper.from_array(np.array([2], np.int64), "axis2"),
         numpy_helper.from_array(np.array([1], np.int64), "axis1")])
    _save(graph, path)


def make_recsys(path: Path) -> None:
    """user_id, item_id INT64 [-1], dense FP32 [-1, 4], is_new BOOL [-1] -> score [-1, 1], click = sigmoid."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Gather", ["U", "user_id"], ["u"]),
        helper.make_node("Gather", ["I", "item_id"], ["i"]),
        helper.make_node("Add", ["u", "i"], ["ui"]),
        helper.make_node("Cast", ["is_new"], ["nf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["nf", "half"], ["nb"]),
        helper.make_node("Add", ["ui", "nb"], ["s1"]),
        helper.make_node("Unsqueeze", ["s1", "axis1"], ["s2"]),
        helper.make_node("MatMul", ["dense", "Wd"], ["d"]),
        helper.make_node("Add", ["s2", "d"], ["score"]),
        helper.make_node("Sigmoid", ["score"], ["click"]),
    ]
    graph = helper.make_graph(
        nodes, "recsys",
        [helper.make_tensor_value_info("user_id", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("item_id", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("is_new", TensorProto.BOOL, ["N"])],
        [helper.make_tensor_value_info("click", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "U"),
         numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "I"),
         numpy_helper.from_array(rng.standard_normal((4, 1)).astype(np.float32), "Wd"),
         numpy_helper.from_array(np.array(0.5, np.float32), "half"),
         numpy_helper.from_array(np.array([1], np.int64), "axis1")])
    _save(graph, path)


RANKER_INPUTS = [{"name": "input_ids", "datatype": "INT64", "shape": [-1, SEQ]},
                 {"name": "attention_mask", "datatype": "INT64", "shape": [-1, SEQ]}]
RANKER_OUTPUTS = [{"name": "probs", "datatype": "FP32", "shape": [-1, 4]},
                  {"name": "logits", "datatype": "FP32", "shape": [-1, 4]}]
RECSYS_INPUTS = [{"name": "user_id", "datatype": "INT64", "shape": [-1]},
                 {"name": "item_id", "datatype": "INT64", "shape": [-1]},
                 {"name": "dense", "datatype": "FP32", "shape": [-1, 4]},
                 {"name": "is_new", "datatype": "BOOL", "shape": [-1]}]
RECSYS_OUTPUTS = [{"name": "click", "datatype": "FP32", "shape": [-1, 1]},
                  {"name": "score", "datatype": "FP32", "shape": [-1, 1]}]


def ranker_bundle(root: Path, **top: Any) -> Path:
    local = root / "ranker" / "local"
    local.mkdir(parents=True)
    make_ranker(local / "model.onnx")
    top.setdefault("task", "classification")
    return write_model_bundle(local, "ranker", RANKER_INPUTS, RANKER_OUTPUTS, RANKER_LABELS, **top)


def recsys_bundle(root: Path, labels: list[str] | None = RECSYS_LABELS, **top: Any) -> Path:
    local = root / "recsys" / "local"
    local.mkdir(parents=True)
    make_recsys(local / "model.onnx")
    top.setdefault("task", "binary")
    return write_model_bundle(local, "recsys", RECSYS_INPUTS, RECSYS_OUTPUTS, labels, **top)


class Reference:
    """onnxruntime on the bundle's model file, outside the server."""

    def __init__(self, bundle: Path):
        import onnxruntime as ort

        self.sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])

    def __call__(self, **feed: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in self.sess.get_outputs()]
        return dict(zip(names, self.sess.run(names, feed), strict=True))


def ranker_rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = (rng.random((n, SEQ)) < 0.8).astype(np.int64)
    mask[:, 0] = 1
    return {"input_ids": rng.integers(0, VOCAB, (n, SEQ), dtype=np.int64), "attention_mask": mask}


def recsys_rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"user_id": rng.integers(0, 10, n, dtype=np.int64), "item_id": rng.integers(0, 10, n, dtype=np.int64),
            "dense": rng.standard_normal((n, 4)).astype(np.float32), "is_new": rng.random(n) < 0.5}


def npz_bytes(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def grpc_port(srv: Server) -> int:
    m = re.search(r"gRPC on 127\.0\.0\.1:(\d+)", srv.text())
    assert m, srv.text()
    return int(m.group(1))


def error_of(srv: Server, body: bytes | dict[str, Any], content_type: str = "application/json",
             path: str = "/invocations") -> tuple[int, str]:
    status, _, data = srv.request("POST", path, body, {"Content-Type": content_type})
    return status, json.loads(data)["error"] if status != 200 else ""


# --- servers ---

@pytest.fixture(scope="module")
def ranker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    local = ranker_bundle(tmp_path_factory.mktemp("r"), prediction="logits",
                          server={"max_body_bytes": 2 << 20, "auth_token_env": None})
    with Server(local, "--grpc-port", "0") as s:
        s.ref = Reference(local)  # type: ignore[attr-defined]
        yield s


@pytest.fixture(scope="module")
def recsys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    local = recsys_bundle(tmp_path_factory.mktemp("c"), threshold=THRESHOLD)
    with Server(local) as s:
        s.ref = Reference(local)  # type: ignore[attr-defined]
        yield s


def ref(srv: Server) -> Reference:
    return srv.ref  # type: ignore[attr-defined, no-any-return]


# --- serving.json ---

def test_old_serving_json_without_the_new_fields_loads(tmp_path: Path) -> None:
    from deployc.serve.config import load_config

    cfg = load_config(write_bundle(tmp_path / "old"))  # tests/serve_support's bundle: no prediction, threshold
    assert (cfg.task, cfg.prediction, cfg.threshold, cfg.prediction_index) == ("classification", "probabilities",
                                                                               0.5, 0)
    for task in ("regression", "other"):
        top: dict[str, Any] = {"task": task}
        assert load_config(write_bundle(tmp_path / task, **top)).task == task
    no_task = write_bundle(tmp_path / "none")
    raw = json.loads((no_task / "local" / "serving.json").read_text())
    del raw["task"]
    (no_task / "local" / "serving.json").write_text(json.dumps(raw))
    assert load_config(no_task).task == "other"
    cfg = load_config(ranker_bundle(tmp_path, prediction="logits"))
    assert (cfg.prediction, cfg.prediction_index) == ("logits", 1)


@pytest.mark.parametrize("top,message", [
    ({"prediction": "scores"}, "serving.json: prediction: 'scores' is not an output of the model (model.outputs: "
                               "probs, logits)"),
    ({"task": "ranking"}, "serving.json: task: 'ranking' is not one of classification, binary"),
    ({"task": "binary"}, "task binary needs one probability a row (shape [-1] or [-1, 1]); 'probs' has shape "
                         "[-1, 4]"),
    ({"threshold": 1.0}, "serving.json: threshold: expected a probability strictly between 0 and 1"),
    ({"threshold": "high"}, "serving.json: threshold: expected int or float"),
])
def test_bad_task_fields_are_refused_naming_the_field(tmp_path: Path, top: dict[str, Any], message: str) -> None:
    from deployc.serve.config import load_config

    with pytest.raises(InputError) as e:
        load_config(ranker_bundle(tmp_path, **top))
    assert message in str(e.value)


def test_binary_with_other_than_two_labels_is_refused(tmp_path: Path) -> None:
    from deployc.serve.config import load_config

    with pytest.raises(InputError, match="labels: task binary names 2 classes .* the labels file has 3"):
        load_config(recsys_bundle(tmp_path, labels=["x", "y", "z"]))


# --- KServe v2 and gRPC ---

def v2_inputs(feed: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    types = {"int64": "INT64", "float32": "FP32", "bool": "BOOL"}
    return [{"name": k, "shape": list(v.shape), "datatype": types[str(v.dtype)], "data": v.ravel().tolist()}
            for k, v in feed.items()]


def test_kserve_v2_json_two_inputs_all_and_a_subset_of_outputs(ranker: Server) -> None:
    feed = ranker_rows(5)
    want = ref(ranker)(**feed)
    status, resp = ranker.json("POST", "/v2/models/ranker/infer", {"id": "m", "inputs": v2_inputs(feed)})
    assert status == 200 and resp["id"] == "m"
    assert [o["name"] for o in resp["outputs"]] == ["probs", "logits"]
    for o in resp["outputs"]:
        assert o["shape"] == [5, 4] and o["datatype"] == "FP32"
        np.testing.assert_allclose(np.array(o["data"]).reshape(5, 4), want[o["name"]], rtol=1e-6, atol=1e-6)
    status, resp = ranker.json("POST", "/v2/models/ranker/infer",
                               {"inputs": v2_inputs(feed)[::-1], "outputs": [{"name": "logits"}]})
    assert status == 200 and [o["name"] for o in resp["outputs"]] == ["logits"]
    np.testing.assert_allclose(np.array(resp["outputs"][0]["data"]).reshape(5, 4), want["logits"], rtol=1e-6)


def test_kserve_v2_binary_extension_with_tritonclient(ranker: Server) -> None:
    th = pytest.importorskip("tritonclient.http")
    feed = ranker_rows(7, seed=4)
    want = ref(ranker)(**feed)
    client = th.InferenceServerClient(f"127.0.0.1:{ranker.port}", network_timeout=30)
    inputs = []
    for name, arr in feed.items():
        i = th.InferInput(name, list(arr.shape), "INT64")
        i.set_data_from_numpy(arr)  # binary by default
        inputs.append(i)
    result = client.infer("ranker", inputs)
    for name in ("probs", "logits"):
        assert "binary_data_size" in result.get_output(name)["parameters"]
        np.testing.assert_allclose(result.as_numpy(name), want[name], rtol=1e-6, atol=1e-6)
    result = client.infer("ranker", inputs, outputs=[th.InferRequestedOutput("logits")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["logits"]
    assert result.as_numpy("probs") is None
    np.testing.assert_allclose(result.as_numpy("logits"), want["logits"], rtol=1e-6, atol=1e-6)
    meta = client.get_model_metadata("ranker")
    assert [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask"]
    assert meta["parameters"]["prediction"] == "logits"


def test_grpc_model_infer_two_inputs_two_outputs(ranker: Server) -> None:
    grpcclient = pytest.importorskip("tritonclient.grpc")
    feed = ranker_rows(3, seed=9)
    want = ref(ranker)(**feed)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port(ranker)}")
    try:
        inputs = []
        for name, arr in feed.items():
            i = grpcclient.InferInput(name, list(arr.shape), "INT64")
            i.set_data_from_numpy(arr)
            inputs.append(i)
        result = client.infer("ranker", inputs)
        for name in ("probs", "logits"):
            got = result.as_numpy(name)
            assert got.shape == (3, 4)
            np.testing.assert_allclose(got, want[name], rtol=1e-6, atol=1e-6)
        only = client.infer("ranker", inputs, outputs=[grpcclient.InferRequestedOutput("probs")])
        assert only.as_numpy("logits") is None
        np.testing.assert_allclose(only.as_numpy("probs"), want["probs"], rtol=1e-6, atol=1e-6)
    finally:
        client.close()


# --- SageMaker /invocations ---

def test_invocations_rows_columns_and_v2_bodies(ranker: Server) -> None:
    feed = ranker_rows(4, seed=2)
    want = ref(ranker)(**feed)
    rows = [{k: v[i].tolist() for k, v in feed.items()} for i in range(4)]
    status, resp = ranker.json("POST", "/invocations", {"instances": rows})
    assert status == 200 and len(resp["predictions"]) == 4
    for name in ("probs", "logits"):  # one object a row, every output by name
        np.testing.assert_allclose(np.array([p[name] for p in resp["predictions"]]), want[name], rtol=1e-6)
    status, resp = ranker.json("POST", "/invocations", rows)  # a bare list of rows
    assert status == 200 and len(resp["predictions"]) == 4
    status, resp = ranker.json("POST", "/invocations", {"inputs": {k: v.tolist() for k, v in feed.items()}})
    assert status == 200 and sorted(resp["outputs"]) == ["logits", "probs"]  # columnar in, columnar out
    for name in ("probs", "logits"):
        np.testing.assert_allclose(np.array(resp["outputs"][name]), want[name], rtol=1e-6)
    status, resp = ranker.json("POST", "/invocations", {"inputs": v2_inputs(feed), "outputs": [{"name": "probs"}]})
    assert status == 200 and [o["name"] for o in resp["outputs"]] == ["probs"]
    # whole-number floats are integers; ids written 3.0 give the same answer as 3
    floats = {"instances": [{k: [float(x) for x in v[i]] for k, v in feed.items()} for i in range(4)]}
    status, resp = ranker.json("POST", "/invocations", floats)
    assert status == 200
    np.testing.assert_allclose(np.array([p["logits"] for p in resp["predictions"]]), want["logits"], rtol=1e-6)


def test_invocations_npz_in_json_npz_and_npy_out(ranker: Server) -> None:
    feed = ranker_rows(6, seed=3)
    want = ref(ranker)(**feed)
    body = npz_bytes(**{k: v.astype(np.int32) for k, v in feed.items()})  # int32 widens to INT64 (same_kind)
    status, resp = ranker.json("POST", "/invocations", body, {"Content-Type": NPZ})
    assert status == 200
    np.testing.assert_allclose(np.array([p["probs"] for p in resp["predictions"]]), want["probs"], rtol=1e-6)
    status, headers, data = ranker.request("POST", "/invocations", body, {"Content-Type": NPZ, "Accept": NPZ})
    assert status == 200 and headers["content-type"] == NPZ
    with np.load(io.BytesIO(data), allow_pickle=False) as got:
        assert sorted(got.files) == ["logits", "probs"]
        for name in ("probs", "logits"):
            assert got[name].dtype == np.float32
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6)
    compressed = io.BytesIO()
    arrays: dict[str, Any] = dict(feed)
    np.savez_compressed(compressed, **arrays)
    status, headers, data = ranker.request("POST", "/invocations", compressed.getvalue(),
                                           {"Content-Type": NPZ, "Accept": "application/x-npy"})
    assert status == 200 and headers["content-type"] == "application/x-npy"
    np.testing.assert_allclose(np.load(io.BytesIO(data), allow_pickle=False), want["probs"], rtol=1e-6)
    v2 = {"inputs": v2_inputs(feed), "outputs": [{"name": "logits"}]}
    status, headers, data = ranker.request("POST", "/invocations", v2, {"Accept": NPZ})
    with np.load(io.BytesIO(data), allow_pickle=False) as got:
        assert status == 200 and got.files == ["logits"]


def _bad_bodies() -> list[tuple[str, bytes | dict[str, Any], str, int, list[str]]]:
    feed = ranker_rows(2)
    rows = [{k: v[i].tolist() for k, v in feed.items()} for i in range(2)]
    fraction = [{**r, "input_ids": [0.5] + r["input_ids"][1:]} for r in rows]
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    pickled = io.BytesIO()
    with zipfile.ZipFile(pickled, "w") as zf:
        zf.writestr("input_ids.npy", obj.getvalue())
        zf.writestr("attention_mask.npy", npz_member(feed["attention_mask"]))
    return [  # (case, body, content type, status, texts in the error)
        ("instances missing input", {"instances": [{"input_ids": r["input_ids"]} for r in rows]}, "application/json",
         400, ["instances[0]: input 'attention_mask' is missing"]),
        ("instances unknown input", {"instances": [{**r, "token_type_ids": [0] * SEQ} for r in rows]},
         "application/json", 400, ["instances[0]: unknown input(s) ['token_type_ids']"]),
        ("columns missing input", {"inputs": {"input_ids": feed["input_ids"].tolist()}}, "application/json", 400,
         ["missing input(s) ['attention_mask']"]),
        ("float ids", {"instances": fraction}, "application/json", 400,
         ["input 'input_ids'", "must be integers for datatype INT64"]),
        ("float ids columns", {"inputs": {"input_ids": (feed["input_ids"] + 0.25).tolist(),
                                          "attention_mask": feed["attention_mask"].tolist()}}, "application/json",
         400, ["input 'input_ids'", "must be integers"]),
        ("huge float ids", {"inputs": {"input_ids": [[1e300] * SEQ], "attention_mask": [[1] * SEQ]}},
         "application/json", 400, ["input 'input_ids'", "2**53"]),
        ("id past the vocabulary", {"inputs": {"input_ids": [[99] * SEQ], "attention_mask": [[1] * SEQ]}},
         "application/json", 400, ["the model refused the inputs", "out of data bounds"]),
        ("v2 float ids", {"inputs": [{**v2_inputs(feed)[0], "data": [1.5] * 2 * SEQ}, v2_inputs(feed)[1]]},
         "application/json", 400, ["input 'input_ids'", "must be integers"]),
        ("npy for two inputs", npz_member(feed["input_ids"]), "application/x-npy", 400,
         ["only accepted for single-input models"]),
        ("npz unknown array", npz_bytes(**feed, extra=feed["input_ids"]), NPZ, 400,
         ["unknown array(s) ['extra']", "the model takes ['attention_mask', 'input_ids']"]),
        ("npz positional arrays", npz_bytes(arr_0=feed["input_ids"], attention_mask=feed["attention_mask"]), NPZ,
         400, ["unknown array(s) ['arr_0']", "missing input(s) ['input_ids']"]),
        ("npz float ids", npz_bytes(input_ids=feed["input_ids"] + 0.5, attention_mask=feed["attention_mask"]), NPZ,
         400, ["npy dtype float64 cannot be used for datatype INT64 (npz array 'input_ids')"]),
        ("npz pickle", pickled.getvalue(), NPZ, 400, ["npz array 'input_ids'", "pickles are not accepted"]),
        ("npz not a zip", b"PK\x03\x04 nonsense", NPZ, 400, ["not a valid .npz archive"]),
    ]


def npz_member(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


BAD = _bad_bodies()


@pytest.mark.parametrize("case,body,ctype,status,texts", BAD, ids=[b[0] for b in BAD])
def test_bad_multi_input_bodies_are_400_naming_the_input(ranker: Server, case: str, body: bytes | dict[str, Any],
                                                         ctype: str, status: int, texts: list[str]) -> None:
    got, error = error_of(ranker, body, ctype)
    assert got == status, error
    for text in texts:
        assert text in error
    assert ranker.ready()


def _bomb(declared: int | None) -> bytes:
    """An npz whose input_ids member inflates to 256 MiB of zeros (after an npy header for a [16, 8] INT64
    array); `declared`: the uncompressed size its central directory claims instead of the true one."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<i8", "fortran_order": False, "shape": (16, SEQ)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("input_ids.npy", "w") as f:
            f.write(header.getvalue())
            zeros = bytes(1 << 20)
            for _ in range(256):
                f.write(zeros)
        zf.writestr("attention_mask.npy", npz_member(np.ones((16, SEQ), np.int64)))
    data = bytearray(buf.getvalue())
    if declared is not None:
        at = data.find(b"PK\x01\x02")  # the first central directory entry: input_ids.npy
        assert data[at + 46:at + 46 + len("input_ids.npy")] == b"input_ids.npy"
        struct.pack_into("<I", data, at + 24, declared)
    return bytes(data)


def test_npz_zip_bombs_are_refused_without_inflating_them(ranker: Server) -> None:
    rss = rss_bytes(ranker.proc.pid)
    honest = _bomb(None)
    assert len(honest) < 2 << 20  # the body fits server.max_body_bytes; its arrays would not
    status, error = error_of(ranker, honest, NPZ)
    assert status == 413, error
    assert "npz array 'input_ids' declares 268435584 bytes uncompressed" in error
    assert "limit of 2097152 bytes" in error
    header_len = 128
    lying = _bomb(header_len + 16 * SEQ * 8)  # claims a [16, 8] array; zipfile stops there, the CRC fails
    status, error = error_of(ranker, lying, NPZ)
    assert status == 400 and "not a valid .npz archive" in error and "input_ids.npy" in error, error
    # a stored member whose npy header declares a huge shape: refused before numpy allocates it
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<i8", "fortran_order": False, "shape": (10**9, SEQ)})
    big = io.BytesIO()
    with zipfile.ZipFile(big, "w") as zf:
        zf.writestr("input_ids.npy", header.getvalue() + bytes(16 * SEQ * 8))
        zf.writestr("attention_mask.npy", npz_member(np.ones((16, SEQ), np.int64)))
    status, error = error_of(ranker, big.getvalue(), NPZ)
    assert status == 400 and "npz array 'input_ids': its header declares shape [1000000000, 8]" in error, error
    assert rss_bytes(ranker.proc.pid) - rss < 64 << 20  # nothing near 256 MiB (or 64 GB) was allocated
    assert ranker.ready()


def test_npy_header_and_dtype_checks_in_process() -> None:
    from deployc.serve.codec import ClientError
    from deployc.serve.config import TensorSpec
    from deployc.serve.npfiles import decode_npy, encode_npz

    spec = (TensorSpec("x", "FP32", (-1, 4)),)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 4)})
    with pytest.raises(ClientError, match=r"declares shape \[1000000000000, 4\] of float32 \(16000000000000 bytes\)"):
        decode_npy(header.getvalue() + bytes(16), spec)
    with pytest.raises(ClientError, match="pickles are not accepted"):
        decode_npy(npz_member_obj(), spec)
    fortran = np.asfortranarray(np.arange(8, dtype=np.float64).reshape(2, 4))
    (got,) = decode_npy(npz_member(fortran), spec).values()
    np.testing.assert_array_equal(got, fortran)
    assert got.dtype == np.float32
    odd = {"file": np.zeros(2), "allow_pickle": np.ones(3)}  # names np.savez could not take as keywords
    with np.load(io.BytesIO(encode_npz(odd))) as z:
        assert sorted(z.files) == ["allow_pickle", "file"] and z["allow_pickle"].tolist() == [1, 1, 1]


def npz_member_obj() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([None, 1], dtype=object), allow_pickle=True)
    return buf.getvalue()


# --- the predicted-class counter ---

def test_prediction_counter_counts_the_prediction_output(ranker: Server) -> None:
    """serving.json says `prediction: logits`, whose argmax is not that of the first output (probs)."""
    singles = [ranker_rows(1, seed=100 + i) for i in range(6)]
    batch = ranker_rows(9, seed=7)
    before = metric_samples(ranker)
    for feed in singles:
        assert ranker.json("POST", "/v2/models/ranker/infer", {"inputs": v2_inputs(feed)})[0] == 200
    assert ranker.json("POST", "/invocations", {"inputs": {k: v.tolist() for k, v in batch.items()}})[0] == 200
    after = metric_samples(ranker)
    classes = np.concatenate([ref(ranker)(**f)["logits"].argmax(1) for f in [*singles, batch]])
    first = np.concatenate([ref(ranker)(**f)["probs"].argmax(1) for f in [*singles, batch]])
    assert (classes != first).any()  # the test tells the two outputs apart
    expected = np.bincount(classes, minlength=4)
    for idx, label in enumerate(RANKER_LABELS):
        got = (metric_value(after, C.METRIC_PREDICTIONS, **{"class": label})
               - metric_value(before, C.METRIC_PREDICTIONS, **{"class": label}))
        assert got == expected[idx], label


def test_binary_counter_thresholds_and_bool_inputs(recsys: Server) -> None:
    feed = recsys_rows(40, seed=5)
    p = ref(recsys)(**feed)["click"][:, 0]
    assert ((p >= 0.5) & (p < THRESHOLD)).any()  # rows that 0.5 and the bundle's 0.7 classify differently
    before = metric_samples(recsys)
    rows = [{"user_id": int(feed["user_id"][i]), "item_id": int(feed["item_id"][i]),
             "dense": feed["dense"][i].tolist(), "is_new": bool(feed["is_new"][i]) if i % 2 else
             int(feed["is_new"][i])} for i in range(40)]  # BOOL as true/false and as 0/1
    status, resp = recsys.json("POST", "/invocations", {"instances": rows[:30]})
    assert status == 200
    np.testing.assert_allclose(np.array([r["click"][0] for r in resp["predictions"]]), p[:30], rtol=1e-6)
    for row in rows[30:]:  # single rows: the counter's fast path
        status, resp = recsys.json("POST", "/invocations", {"instances": [row]})
        assert status == 200
    after = metric_samples(recsys)
    ones = int((p >= THRESHOLD).sum())
    for label, n in (("clicked", ones), ("no_click", 40 - ones)):
        got = (metric_value(after, C.METRIC_PREDICTIONS, **{"class": label})
               - metric_value(before, C.METRIC_PREDICTIONS, **{"class": label}))
        assert got == n, label
    status, error = error_of(recsys, {"instances": [{**rows[0], "is_new": 2}]})
    assert status == 400 and "instances: input 'is_new': data must be booleans (true/false or 0/1)" in error
    status, meta = recsys.json("GET", "/v2/models/recsys")
    assert meta["parameters"]["task"] == "binary" and meta["parameters"]["threshold"] == THRESHOLD


@pytest.mark.parametrize("task,shape,outputs,expected", [
    ("binary", [-1], [np.array([0.2, 0.5, 0.9], np.float32)], {"0": 1, "1": 2}),  # unlabelled: "0" and "1"
    ("binary", [-1, 1], [np.array([[0.49]], np.float32)], {"0": 1}),
    ("classification", [-1, 3], [np.array([[0.1, 0.7, 0.2], [0.8, 0.1, 0.1]], np.float32)], {"1": 1, "0": 1}),
    ("regression", [-1, 1], [np.array([[3.5]], np.float32)], {}),
    ("multilabel", [-1, 3], [np.array([[0.9, 0.8, 0.1]], np.float32)], {}),
])
def test_counter_by_task_in_process(tmp_path: Path, task: str, shape: list[int], outputs: list[np.ndarray],
                                    expected: dict[str, int]) -> None:
    from deployc.serve.config import load_config
    from deployc.serve.metrics import ServerMetrics

    local = tmp_path / "local"
    local.mkdir()
    make_recsys(local / "model.onnx")  # load_config checks the file, not its outputs
    cfg = load_config(write_model_bundle(local, "m", RECSYS_INPUTS, [{"name": "y", "datatype": "FP32",
                                                                      "shape": shape}], task=task))
    m = ServerMetrics(cfg)
    m.observe_predictions(outputs)
    got = {s.labels["class"]: s.value for fam in m.registry.collect() for s in fam.samples
           if s.name == C.METRIC_PREDICTIONS}
    assert got == expected
