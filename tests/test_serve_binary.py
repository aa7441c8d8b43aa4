"""The binary tensor extension of the Open Inference Protocol, driven by the clients people use: tritonclient.http
and the kserve SDK in their default (binary) modes, compared with onnxruntime on the same rows; and hostile bodies:
header lengths past the body, bad binary_data_size values, sizes that do not add up, truncated BYTES framing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

try:  # tests/ may or may not be a package
    from tests.serve_support import ROOT, Server, write_bundle
except ImportError:
    from serve_support import ROOT, Server, write_bundle

NAME = "digits"
INFER = f"/v2/models/{NAME}/infer"
TOOL_VENV = ROOT / ".venv-tools" / "kserve"
KSERVE_SPEC = "kserve==0.21.*"


def digits_rows(n: int) -> np.ndarray:
    """Rows of the digits example's evaluation set (64 pixels each) when it is trained, random rows otherwise."""
    data = ROOT / "examples" / "digits" / "data" / "eval.npz"
    if data.is_file():
        x = np.load(data)["x"].astype(np.float32)
        return np.resize(x, (n, x.shape[1]))
    return np.random.default_rng(5).standard_normal((n, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    bundle = write_bundle(tmp_path_factory.mktemp("b") / NAME, model="mlp", name=NAME, labels=None,
                          server={"max_body_bytes": 1 << 20})
    with Server(bundle) as s:
        yield s


@pytest.fixture(scope="module")
def reference(server: Server) -> Any:
    import onnxruntime as ort

    model = Path(server.proc.args[3]) / "local" / "model.onnx"
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def tritonhttp() -> Any:
    return pytest.importorskip("tritonclient.http")


def client(tritonhttp: Any, server: Server) -> Any:
    return tritonhttp.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=30)


def test_metadata_through_tritonclient(tritonhttp: Any, server: Server) -> None:
    c = client(tritonhttp, server)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(NAME)
    assert "binary_tensor_data" in c.get_server_metadata()["extensions"]
    meta = c.get_model_metadata(NAME)
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]


@pytest.mark.parametrize("version", ["", "1"])
def test_tritonclient_default_binary_matches_onnxruntime(tritonhttp: Any, server: Server, reference: Any,
                                                         version: str) -> None:
    x = digits_rows(37)
    inp = tritonhttp.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # binary by default
    assert inp._get_binary_data() is not None
    result = client(tritonhttp, server).infer(NAME, [inp], model_version=version, request_id="t-1")
    out = result.get_output("probabilities")
    assert out["parameters"] == {"binary_data_size": 37 * 10 * 4} and "data" not in out
    assert result.get_response()["id"] == "t-1"
    got = result.as_numpy("probabilities")
    assert got.dtype == np.float32 and got.shape == (37, 10)
    np.testing.assert_allclose(got, reference(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("binary_in,binary_out", [(True, False), (False, True), (False, False)])
def test_tritonclient_mixed_modes(tritonhttp: Any, server: Server, reference: Any, binary_in: bool,
                                  binary_out: bool) -> None:
    x = digits_rows(5)
    inp = tritonhttp.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    wanted = [tritonhttp.InferRequestedOutput("probabilities", binary_data=binary_out)]
    result = client(tritonhttp, server).infer(NAME, [inp], outputs=wanted)
    out = result.get_output("probabilities")
    assert ("binary_data_size" in (out.get("parameters") or {})) == binary_out
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference(x), rtol=1e-5, atol=1e-6)


def _binary_request(x: np.ndarray, pad: int = 0, **params: Any) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}], **params}).encode() + b" " * pad
    return head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head)),
                                "Content-Type": "application/octet-stream"}


@pytest.mark.parametrize("pad", [0, 1, 3])  # odd header lengths put the floats at unaligned offsets
def test_binary_response_layout(server: Server, reference: Any, pad: int) -> None:
    x = digits_rows(3)
    body, headers = _binary_request(x, pad, id="raw", parameters={"binary_data_output": True})
    status, resp_headers, data = server.request("POST", INFER, body, headers)
    assert status == 200, data
    assert resp_headers["content-type"] == "application/octet-stream"
    n = int(resp_headers["inference-header-content-length"])
    head = json.loads(data[:n])
    (out,) = head["outputs"]
    assert head["id"] == "raw" and out["shape"] == [3, 10] and out["parameters"] == {"binary_data_size": 120}
    assert len(data) == n + 120
    np.testing.assert_allclose(np.frombuffer(data[n:], "<f4").reshape(3, 10), reference(x), rtol=1e-5, atol=1e-6)
    # the output's own binary_data: false overrides the request-level binary_data_output
    body, headers = _binary_request(x, pad, parameters={"binary_data_output": True},
                                    outputs=[{"name": "probabilities", "parameters": {"binary_data": False}}])
    status, resp_headers, data = server.request("POST", INFER, body, headers)
    assert status == 200 and resp_headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in resp_headers
    np.testing.assert_allclose(np.reshape(json.loads(data)["outputs"][0]["data"], (3, 10)), reference(x),
                               rtol=1e-5, atol=1e-6)


def kserve_python() -> Path:
    """The Python of a venv with the kserve SDK: $DEPLOYC_KSERVE_PYTHON or `.venv-tools/kserve/` (created on first
    use; kserve pins protobuf < 7 and psutil < 6, which conflict with the project's venv)."""
    given = os.environ.get("DEPLOYC_KSERVE_PYTHON")
    py = Path(given) if given else TOOL_VENV / "bin" / "python"
    if py.is_file() and subprocess.run([str(py), "-c", "import kserve"], capture_output=True).returncode == 0:
        return py
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(TOOL_VENV)], check=True, capture_output=True,
                       text=True, timeout=300)
        subprocess.run([str(TOOL_VENV / "bin" / "python"), "-m", "pip", "install", "-q", KSERVE_SPEC], check=True,
                       capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = (getattr(exc, "stderr", None) or str(exc)).strip()
        pytest.skip(f"the kserve SDK is not installed and {TOOL_VENV} could not be created: "
                    f"{detail.splitlines()[-1] if detail else exc}")
    return TOOL_VENV / "bin" / "python"


@pytest.mark.parametrize("flags", [[], ["--binary-outputs"], ["--json-inputs"], ["--json-inputs", "--binary-outputs"]],
                         ids=["default", "binary-outputs", "json-inputs", "json-in-binary-out"])
def test_kserve_sdk_rest_client(server: Server, reference: Any, tmp_path: Path, flags: list[str]) -> None:
    x = digits_rows(9)
    np.save(tmp_path / "x.npy", x)
    r = subprocess.run([str(kserve_python()), str(ROOT / "tests" / "kserve_rest_client.py"),
                        f"http://127.0.0.1:{server.port}", NAME, str(tmp_path / "x.npy"), str(tmp_path / "out.npz"),
                        *flags], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout)
    assert info["id"] == "kserve-1" and info["model_name"] == NAME
    assert info["sent_binary"] == ("--json-inputs" not in flags)
    binary_out = "--binary-outputs" in flags
    assert info["content-type"] == ("application/octet-stream" if binary_out else "application/json")
    assert (info["header-length"] is not None) == binary_out
    got = np.load(tmp_path / "out.npz")["probabilities"]
    assert got.shape == (9, 10)
    np.testing.assert_allclose(got, reference(x), rtol=1e-5, atol=1e-6)


X = np.full((1, 64), 0.5, np.float32)
T = {"name": "x", "shape": [1, 64], "datatype": "FP32"}


def _body(inputs: list[dict[str, Any]], tail: bytes, header: int | str | None = "auto", **extra: Any
          ) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": inputs, **extra}).encode()
    headers = {"Content-Type": "application/octet-stream"}
    if header is not None:
        headers["Inference-Header-Content-Length"] = str(len(head) if header == "auto" else header)
    return head + tail, headers


def _sized(size: Any, **changes: Any) -> dict[str, Any]:
    return {**T, "parameters": {"binary_data_size": size}, **changes}


def _bytes_tensor(count: int, framing: bytes) -> tuple[list[dict[str, Any]], bytes]:
    return [_sized(len(framing), datatype="BYTES", shape=[count])], framing


RAW = X.tobytes()
HOSTILE = [  # (what, inputs, tail, header, extra, text in the error)
    ("header past the body", [_sized(256)], RAW, 10**6, {}, "Inference-Header-Content-Length 1000000 is larger"),
    ("header one past", [_sized(256)], RAW, "past", {}, "is larger than the body"),
    ("negative header", [_sized(256)], RAW, "-5", {}, "invalid Inference-Header-Content-Length '-5'"),
    ("header not a number", [_sized(256)], RAW, "0x10", {}, "invalid Inference-Header-Content-Length"),
    ("header of 30 digits", [_sized(256)], RAW, "9" * 30, {}, "invalid Inference-Header-Content-Length"),
    ("header cuts the JSON", [_sized(256)], RAW, 20, {}, "malformed JSON"),
    ("negative size", [_sized(-4)], RAW, "auto", {}, "binary_data_size must be a non-negative integer, got -4"),
    ("huge size", [_sized(2**62)], RAW, "auto", {}, f"binary_data_size {2**62} runs past the end of the body"),
    ("size as a string", [_sized("256")], RAW, "auto", {}, "must be a non-negative integer, got '256'"),
    ("size as a bool", [_sized(True)], RAW, "auto", {}, "must be a non-negative integer, got True"),
    ("size as a float", [_sized(256.0)], RAW, "auto", {}, "must be a non-negative integer, got 256.0"),
    ("size off by one", [_sized(255)], RAW[:255], "auto", {}, "binary_data_size 255 does not match shape [1, 64]"),
    ("size for another shape", [_sized(256, shape=[2, 64])], RAW, "auto", {}, "(128 x 4 = 512 bytes)"),
    ("huge shape", [_sized(256, shape=[2**40, 64])], RAW, "auto", {}, "does not match shape"),
    ("bytes after the tensors", [_sized(256)], RAW + b"xxxx", "auto", {}, "4 bytes follow the last binary input"),
    ("tail without binary inputs", [{**T, "data": X.ravel().tolist()}], b"zz", "auto", {}, "2 bytes follow"),
    ("size past the body", [_sized(256)], RAW[:100], "auto", {}, "binary_data_size 256 runs past the end of the "
                                                                  "body (100 bytes left)"),
    ("size without the header", [_sized(256)], b"", None, {}, "needs the Inference-Header-Content-Length header"),
    ("tensor without the header", [_sized(256)], RAW, None, {}, "malformed JSON body: unexpected content"),
    ("data and size", [_sized(256, data=[0.0] * 64)], RAW, "auto", {}, "either data or binary_data_size"),
    ("parameters not an object", [{**T, "parameters": [256]}], RAW, "auto", {}, "parameters must be an object"),
    ("unknown datatype", [_sized(64, datatype="FP8")], RAW[:64], "auto", {}, "unknown datatype 'FP8'"),
    ("wrong datatype", [_sized(512, datatype="FP64")], RAW * 2, "auto", {}, "datatype 'FP64' does not match"),
    ("NaN", [_sized(256)], np.full((1, 64), np.nan, np.float32).tobytes(), "auto", {}, "non-finite"),
    ("shape missing", [{"name": "x", "datatype": "FP32", "parameters": {"binary_data_size": 256}}], RAW, "auto", {},
     "'shape' is missing"),
    ("binary_data_output not a bool", [_sized(256)], RAW, "auto", {"parameters": {"binary_data_output": "yes"}},
     "binary_data_output must be true or false"),
    ("class_count", [_sized(256)], RAW, "auto", {"outputs": [{"name": "probabilities",
                                                               "parameters": {"class_count": 3}}]}, "class_count"),
    ("BYTES truncated length", *_bytes_tensor(2, b"\x03\0\0\0abc\x01"), "auto", {},
     "BYTES element 1 is truncated (its 4-byte length is missing)"),
    ("BYTES length past the end", *_bytes_tensor(2, b"\x01\0\0\0a\xff\xff\xff\xffabc"), "auto", {},
     "BYTES element 1 declares 4294967295 bytes but 3 are left"),
    ("BYTES too short for the shape", *_bytes_tensor(10**9, b"\0\0\0\0"), "auto", {},
     "4 bytes cannot hold 1000000000 BYTES elements"),
    ("BYTES with bytes left", *_bytes_tensor(1, b"\x01\0\0\0ab"), "auto", {}, "1 bytes follow the last of its 1"),
    ("BYTES well framed", *_bytes_tensor(2, b"\x01\0\0\0a\0\0\0\0"), "auto", {},
     "datatype 'BYTES' does not match the model's FP32"),
]


@pytest.mark.parametrize("what,inputs,tail,header,extra,text", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_binary_bodies_are_400(server: Server, what: str, inputs: list[dict[str, Any]], tail: bytes,
                                       header: Any, extra: dict[str, Any], text: str) -> None:
    body, headers = _body(inputs, tail, header, **extra)
    if header == "past":
        headers["Inference-Header-Content-Length"] = str(len(body) + 1)
    status, resp_headers, data = server.request("POST", INFER, body, headers)
    assert status == 400, (what, status, data[:300])
    assert resp_headers["content-type"] == "application/json"
    assert text in json.loads(data)["error"], json.loads(data)["error"]


def test_server_survives_the_hostile_bodies(server: Server, reference: Any) -> None:
    x = digits_rows(2)
    body, headers = _binary_request(x)
    status, _, data = server.request("POST", INFER, body, headers)
    assert status == 200
    np.testing.assert_allclose(np.reshape(json.loads(data)["outputs"][0]["data"], (2, 10)), reference(x),
                               rtol=1e-5, atol=1e-6)
    assert "Traceback" not in server.text()


def test_bytes_codec_round_trip() -> None:
    from deployc.serve.codec import decode_bytes, encode_bytes

    arr = np.array([b"", b"abc", "h\u00e9".encode(), b"\0" * 300], dtype=object)
    framed = encode_bytes(arr)
    assert framed[:4] == b"\0\0\0\0" and framed[4:8] == (3).to_bytes(4, "little")
    assert list(decode_bytes(framed, 4, "t")) == list(arr)
    assert list(decode_bytes(memoryview(framed), 4, "t")) == list(arr)
