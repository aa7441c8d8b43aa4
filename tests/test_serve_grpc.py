"""`deployc serve --grpc-port`: the Open Inference Protocol gRPC service, called with tritonclient.grpc.

The server runs as a real process (tests/serve_support.Server). This process never imports deployc's generated
modules: they and tritonclient's register the same `inference.*` messages in protobuf's default pool.
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployc import conventions as C

try:
    from tests.serve_support import ROOT, Server, reference, write_bundle
    from tests.serve_support import metric_samples as samples
    from tests.serve_support import metric_value as value
except ImportError:  # run from inside tests/
    from serve_support import ROOT, Server, reference, write_bundle
    from serve_support import metric_samples as samples
    from serve_support import metric_value as value

grpcclient = pytest.importorskip("tritonclient.grpc")
import grpc  # noqa: E402  (tritonclient.grpc needs it)
from tritonclient.grpc import service_pb2 as pb  # noqa: E402
from tritonclient.grpc import service_pb2_grpc as pb_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

TOKEN = "s3cret-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
X = np.array([[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 2.0, 0.5], [-2.0, 0.0, 1.5, 3.0]], dtype=np.float32)
PROTO_DIR = ROOT / "deployc" / "serve" / "proto"


def grpc_port(srv: Server) -> int:
    m = re.search(r"gRPC on 127\.0\.0\.1:(\d+)", srv.text())
    assert m, srv.text()
    return int(m.group(1))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    bundle = write_bundle(tmp_path_factory.mktemp("g") / "iris", batching={"max_delay_ms": 20.0},
                          server={"auth_token_env": "DEPLOYC_TEST_TOKEN"})
    with Server(bundle, "--grpc-port", "0", env={"DEPLOYC_TEST_TOKEN": TOKEN}) as s:
        s.grpc = grpc_port(s)  # type: ignore[attr-defined]
        yield s


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[Any]:
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")  # type: ignore[attr-defined]
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server: Server) -> Iterator[Any]:
    """A bare stub, for requests tritonclient would refuse to build."""
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc}") as channel:  # type: ignore[attr-defined]
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def infer_input(x: np.ndarray, name: str = "x", datatype: str = "FP32") -> Any:
    i = grpcclient.InferInput(name, list(x.shape), datatype)
    i.set_data_from_numpy(x)
    return i


def status_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()


def test_generated_modules_match_the_proto(tmp_path: Path) -> None:
    """The committed *_pb2.py is what grpcio-tools makes of the committed .proto."""
    pytest.importorskip("grpc_tools")
    out = tmp_path / "deployc" / "serve" / "proto"
    out.mkdir(parents=True)
    shutil.copy(PROTO_DIR / "grpc_predict_v2.proto", out)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}", f"--python_out={tmp_path}",
                    "deployc/serve/proto/grpc_predict_v2.proto"],
                   check=True, cwd=tmp_path)
    for name in ("grpc_predict_v2_pb2.py",):
        committed, fresh = (PROTO_DIR / name).read_text(), (out / name).read_text()
        if _versions(committed) == _versions(fresh):
            assert fresh == committed, f"{name} is stale: regenerate it (see grpc_predict_v2.proto's header)"
        else:  # another grpcio-tools: the version lines differ, the serialized descriptor may not
            assert _descriptor(fresh) == _descriptor(committed), f"{name} does not match the .proto"


def _versions(text: str) -> list[str]:
    return re.findall(r"Protobuf Python Version: \S+|GRPC_GENERATED_VERSION = \S+|^    \d+,$", text, re.M)


def _descriptor(text: str) -> list[str]:
    """The parts that do not depend on the grpcio-tools version: the serialized proto and the method paths."""
    return re.findall(r"AddSerializedFile\(b'.*?'\)|'/inference\.[^']*'", text)


def test_health_rpcs_are_open(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris") and client.is_model_ready("iris", "1")
    with pytest.raises(InferenceServerException, match="unknown model 'other'") as e:
        client.is_model_ready("other")
    assert e.value.status() == "StatusCode.NOT_FOUND"


def test_metadata_needs_the_token(client: Any) -> None:
    for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
        with pytest.raises(InferenceServerException, match="bearer token") as e:
            client.get_model_metadata("iris", headers=headers)
        assert e.value.status() == "StatusCode.UNAUTHENTICATED"
    assert client.get_server_metadata(headers=AUTH).name == "deployc"
    meta = client.get_model_metadata("iris", headers=AUTH, as_json=True)
    assert meta["name"] == "iris" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": ["-1", "3"]}]
    with pytest.raises(InferenceServerException, match="unknown version '7'"):
        client.get_model_metadata("iris", "7", headers=AUTH)


def test_infer_with_raw_contents_matches_onnxruntime(client: Any) -> None:
    result = client.infer("iris", [infer_input(X)], request_id="req-1", headers=AUTH,
                          outputs=[grpcclient.InferRequestedOutput("probabilities")])
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference(X), rtol=1e-6, atol=1e-7)
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("req-1", "iris", "1")
    assert len(response.raw_output_contents) == 1 and response.outputs[0].datatype == "FP32"


def test_concurrent_infers_each_get_their_rows_through_the_shared_batcher(server: Server, client: Any) -> None:
    """Whether calls merge depends on timing; every row goes through the batcher that /metrics describes."""
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(24)]
    before = samples(server)
    results: list[Any] = [None] * len(xs)

    def call(i: int) -> None:
        results[i] = client.infer("iris", [infer_input(xs[i])], headers=AUTH).as_numpy("probabilities")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, got in zip(xs, results, strict=True):
        np.testing.assert_allclose(got, reference(x), rtol=1e-6, atol=1e-7)
    after = samples(server)
    rows = sum(len(x) for x in xs)
    assert value(after, "deployc_batch_size_sum") - value(before, "deployc_batch_size_sum") == rows
    assert value(after, "deployc_batch_size_count") - value(before, "deployc_batch_size_count") <= len(xs)


def test_typed_contents_are_accepted(stub: Any) -> None:
    req = pb.ModelInferRequest(model_name="iris")
    req.inputs.add(name="x", datatype="FP32", shape=[3, 4]).contents.fp32_contents.extend(X.ravel().tolist())
    resp = stub.ModelInfer(req, metadata=list(AUTH.items()))
    got = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(list(resp.outputs[0].shape))
    np.testing.assert_allclose(got, reference(X), rtol=1e-6, atol=1e-7)


def _raw_request(shape: list[int], raw: list[bytes], name: str = "x", datatype: str = "FP32", **kw: Any) -> Any:
    req = pb.ModelInferRequest(model_name=kw.pop("model", "iris"), raw_input_contents=raw, **kw)
    req.inputs.add(name=name, datatype=datatype, shape=shape)
    return req


HOSTILE = {
    "wrong datatype": (_raw_request([1, 4], [b"\0" * 32], datatype="FP64"), "datatype 'FP64' does not match"),
    "raw size mismatch": (_raw_request([2, 4], [b"\0" * 16]), "has 16 bytes; shape [2, 4] of FP32 needs 32"),
    "raw count mismatch": (_raw_request([1, 4], [b"\0" * 16, b"\0" * 16]), "2 entries for 1 inputs"),
    "unknown input": (_raw_request([1, 4], [b"\0" * 16], name="y"), "unknown input name 'y'"),
    "too many dims": (_raw_request([1] * 40, [b"\0" * 4]), "has 40 dimensions; the model's [-1, 4] has 2"),
    "huge shape": (_raw_request([2**62, 4], [b"\0" * 16]), "needs 73786976294838206464"),
    "negative dim": (_raw_request([-1, 4], [b"\0" * 16]), "negative dimension"),
    "fixed axis": (_raw_request([1, 5], [b"\0" * 20]), "does not match the model's [-1, 4]"),
    "empty batch": (_raw_request([0, 4], [b""]), "the batch is empty"),
    "nan": (_raw_request([1, 4], [np.array([[0, np.nan, 0, 0]], np.float32).tobytes()]), "non-finite"),
    "no inputs": (pb.ModelInferRequest(model_name="iris"), "missing input(s) ['x']"),
    "typed size mismatch": (pb.ModelInferRequest(model_name="iris", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP32", shape=[2, 4], contents=pb.InferTensorContents(int_contents=[1] * 8))]),
        "contents.fp32_contents has 0 values; shape [2, 4] needs 8"),
    "unknown output": (_raw_request([1, 4], [b"\0" * 16], outputs=[
        pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")]), "unknown output name(s) ['logits']"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_requests_are_invalid_argument(stub: Any, case: str) -> None:
    req, message = HOSTILE[case]
    code, details = status_of(lambda: stub.ModelInfer(req, metadata=list(AUTH.items())))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details, details


def test_wrong_model_token_and_size_limit(server: Server, stub: Any) -> None:
    code, details = status_of(lambda: stub.ModelInfer(_raw_request([1, 4], [b"\0" * 16], model="other"),
                                                      metadata=list(AUTH.items())))
    assert code == grpc.StatusCode.NOT_FOUND and "unknown model 'other'" in details
    code, _ = status_of(lambda: stub.ModelInfer(_raw_request([1, 4], [b"\0" * 16])))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    big = _raw_request([5000, 4], [b"\0" * 80000])  # over the bundle's max_body_bytes (65536)
    code, _ = status_of(lambda: stub.ModelInfer(big, metadata=list(AUTH.items())))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.ServerLive(pb.ServerLiveRequest()).live  # the server is still there


def test_grpc_requests_are_counted_with_http_equivalent_codes(server: Server, client: Any, stub: Any) -> None:
    assert C.ROUTE_GRPC_INFER in C.INFER_ROUTES  # the availability and latency SLOs include gRPC inference
    before = samples(server)
    for _ in range(3):
        client.infer("iris", [infer_input(X)], headers=AUTH)
    status_of(lambda: stub.ModelInfer(_raw_request([1, 4], [b"\0" * 8]), metadata=list(AUTH.items())))
    status_of(lambda: stub.ModelInfer(_raw_request([1, 4], [b"\0" * 16])))
    client.is_server_ready()
    client.get_model_metadata("iris", headers=AUTH)
    after = samples(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    base = {"model": "iris", "version": "1"}
    assert delta("deployc_requests_total", route=C.ROUTE_GRPC_INFER, code="200", **base) == 3
    assert delta("deployc_requests_total", route=C.ROUTE_GRPC_INFER, code="400", **base) == 1
    assert delta("deployc_requests_total", route=C.ROUTE_GRPC_INFER, code="401", **base) == 1
    assert delta("deployc_requests_total", route=C.ROUTE_GRPC_HEALTH, code="200") == 1
    assert delta("deployc_requests_total", route=C.ROUTE_GRPC_METADATA, code="200") == 1
    assert delta("deployc_request_duration_seconds_count", route=C.ROUTE_GRPC_INFER) == 5
    assert delta("deployc_predictions_total") == 3 * len(X)


def test_grpc_port_in_use_fails_before_serving(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "iris")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "deployc.serve", str(bundle), "--port", "0", "--grpc-port",
                               str(port)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"deployc serve: error: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in proc.stderr


def test_grpc_port_from_serving_json_with_two_workers(tmp_path: Path) -> None:
    """Both workers bind the parent's port (SO_REUSEPORT); /metrics sums their gRPC requests."""
    bundle = write_bundle(tmp_path / "iris", server={"grpc_port": 0, "workers": 2})
    with Server(bundle, timeout=60) as srv:
        assert re.search(r"gRPC on 127\.0\.0\.1:\d+ \(2 workers\)", srv.text())
        n = 16
        for _ in range(n):  # a fresh channel each time, so the kernel spreads connections over the workers
            c = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port(srv)}")
            np.testing.assert_allclose(c.infer("iris", [infer_input(X)]).as_numpy("probabilities"), reference(X),
                                       rtol=1e-6, atol=1e-7)
            c.close()
        snap = samples(srv)
        assert value(snap, "deployc_requests_total", route=C.ROUTE_GRPC_INFER, code="200") == n
        assert srv.stop() == 0


def test_grpc_port_in_the_spec_and_on_the_command_line(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from deployc.targets.local import LocalConfig as LocalTarget

    assert LocalTarget().grpc_port is None and LocalTarget(grpc_port=8081).grpc_port == 8081
    with pytest.raises(ValidationError, match="grpc_port must differ from port"):
        LocalTarget(port=9000, grpc_port=9000)
    bundle = write_bundle(tmp_path / "iris")
    proc = subprocess.run([sys.executable, "-m", "deployc.serve", str(bundle), "--port", "9000", "--grpc-port",
                           "9000"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("deployc serve: error: --grpc-port must be 0..65535 and differ from the HTTP "
                                   "port 9000")
