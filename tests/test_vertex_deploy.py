"""Up to the Vertex AI API boundary: deploy.sh against a fake gcloud and a fake REST API (curl), and the
container command against a fake metadata server and Cloud Storage, serving real predictions."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
import pytest
from aws_support import emit_context, tiny_onnx
from serve_support import free_port, json_request

from deployc.schema.spec import DeploySpec
from deployc.targets.vertex import VertexTarget

ROOT = Path(__file__).resolve().parents[1]
API = "https://europe-west4-aiplatform.googleapis.com/v1/"
PARENT = "projects/my-project/locations/europe-west4"

FAKE_GCLOUD = """#!/bin/sh
echo "gcloud $*" >> "$FAKE_LOG.gcloud"
case "$1 $2" in
  "auth print-access-token") echo fake-token ;;
  "storage cp") ;;
  *) echo "unexpected gcloud $*" >&2; exit 2 ;;
esac
"""

# A fake Vertex AI REST API behind curl: models, endpoints and operations kept in a JSON state file.
FAKE_CURL = r'''#!PYTHON
import json, os, sys
args = sys.argv[1:]
method, body, url = "GET", None, args[-1]
if "-X" in args:
    method = args[args.index("-X") + 1]
if "--data-binary" in args:
    with open(args[args.index("--data-binary") + 1][1:]) as f:
        body = json.load(f)
assert "Authorization: Bearer fake-token" in args and "--fail-with-body" in args, args
state_file = os.environ["FAKE_STATE"]
state = json.load(open(state_file))
with open(os.environ["FAKE_LOG"] + ".curl", "a") as log:
    log.write(json.dumps({"method": method, "url": url, "body": body}) + "\n")
path = url.split("/v1/", 1)[1]
parent = "projects/my-project/locations/europe-west4"

def reply(doc, status=200):
    json.dump(state, open(state_file, "w"))
    print(json.dumps(doc))
    sys.exit(0 if status == 200 else 22)

def op(n):
    return {"name": parent + "/operations/" + str(n)}

if "/operations/" in path:
    reply({"name": path, "done": True})
if method == "GET" and "/models/" in path:
    mid = path.rsplit("/", 1)[1]
    if mid in state["models"]:
        reply({"name": path})
    reply({"error": {"code": 404}}, 404)
if method == "POST" and path.endswith("/models:upload"):
    state["models"].append(body["modelId"])
    reply(op(1))
if method == "GET" and "/endpoints/" in path:
    eid = path.rsplit("/", 1)[1]
    if eid in state["endpoints"]:
        reply(state["endpoints"][eid])
    reply({"error": {"code": 404}}, 404)
if method == "POST" and "/endpoints?endpoint_id=" in path:
    state["endpoints"][path.split("=", 1)[1]] = {"displayName": body["displayName"]}
    reply(op(2))
if method == "POST" and path.endswith(":deployModel"):
    ep = state["endpoints"][path.rsplit("/", 1)[1].split(":")[0]]
    new_id = str(9000 + len(ep.get("deployedModels", [])))
    ep.setdefault("deployedModels", []).append({"id": new_id, "model": body["deployedModel"]["model"]})
    split = dict(body.get("trafficSplit", {}))
    if split:
        split[new_id] = split.pop("0")
        ep["trafficSplit"] = split
    reply(op(3))
reply({"error": {"code": 400, "message": "unexpected " + method + " " + path}}, 400)
'''


def spec(**vertex: Any) -> DeploySpec:
    cfg = {"project": "my-project", "region": "europe-west4", "artifact_uri": "gs://my-models/deployc",
           "image_uri": "europe-west4-docker.pkg.dev/my-project/serving/deployc-serve:0.1.0", **vertex}
    return DeploySpec.model_validate({"apiVersion": "deployc/v1", "name": "digits", "version": "1.0.0",
                                      "model": {"path": "model.onnx"}, "targets": {"vertex": cfg}})


def write_bundle(tmp_path: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (tmp_path / "out" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "out" / rel).write_bytes(data)
    return tmp_path / "out" / "vertex"


@pytest.fixture
def fake_cloud(tmp_path: Path) -> Iterator[dict[str, Any]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "curl").write_text(FAKE_CURL.replace("PYTHON", sys.executable, 1))
    for tool in ("gcloud", "curl"):
        (bin_dir / tool).chmod(0o755)
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"models": [], "endpoints": {}}))
    log = tmp_path / "calls"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_STATE": str(state),
           "FAKE_LOG": str(log), "POLL_SECONDS": "0"}
    yield {"env": env, "state": state, "log": log}


def run_deploy(folder: Path, cloud: dict[str, Any]) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    curl_log = Path(str(cloud["log"]) + ".curl")
    curl_log.unlink(missing_ok=True)
    proc = subprocess.run(["bash", str(folder / "deploy.sh")], env=cloud["env"], capture_output=True, text=True,
                          timeout=60, cwd="/")
    calls = [json.loads(line) for line in curl_log.read_text().splitlines()] if curl_log.exists() else []
    return proc, calls


def test_deploy_script_uploads_creates_and_deploys_then_does_nothing_again(tmp_path: Path,
                                                                            fake_cloud: dict[str, Any]) -> None:
    pytest.importorskip("google.cloud.aiplatform_v1")
    from google.cloud.aiplatform_v1.types import DeployModelRequest, Endpoint, UploadModelRequest
    from google.protobuf import json_format

    files = VertexTarget().emit(emit_context(spec(), tiny_onnx(tmp_path / "model.onnx")))
    folder = write_bundle(tmp_path, files)
    upload = json.loads(files["vertex/model-upload.json"])
    mid = upload["modelId"]
    proc, calls = run_deploy(folder, fake_cloud)
    assert proc.returncode == 0, proc.stderr
    posts = [(c["url"].removeprefix(API), c["body"]) for c in calls if c["method"] == "POST"]
    assert [u for u, _ in posts] == [f"{PARENT}/models:upload", f"{PARENT}/endpoints?endpoint_id=digits",
                                     f"{PARENT}/endpoints/digits:deployModel"]
    assert posts[0][1] == upload and posts[1][1] == json.loads(files["vertex/endpoint.json"])
    assert posts[2][1] == json.loads(files["vertex/deploy-model.json"])
    for (_, body), kind in zip(posts, (UploadModelRequest, Endpoint, DeployModelRequest), strict=True):
        json_format.ParseDict(body, kind.pb()())  # what the script sends is what Vertex AI's types accept
    gcloud = Path(str(fake_cloud["log"]) + ".gcloud").read_text().splitlines()
    assert f"gcloud storage cp model/labels.txt model/model.onnx model/serving.json {upload['model']['artifactUri']}/" \
        in gcloud
    endpoint = json.loads(fake_cloud["state"].read_text())["endpoints"]["digits"]
    assert endpoint["trafficSplit"] == {"9000": 100}
    assert endpoint["deployedModels"][0]["model"] == f"{PARENT}/models/{mid}"

    again, calls = run_deploy(folder, fake_cloud)
    assert again.returncode == 0, again.stderr
    assert [c["method"] for c in calls] == ["GET", "GET"]  # the model and the endpoint: nothing to do
    assert "already deployed" in again.stdout


def test_deploy_script_keeps_the_other_models_share(tmp_path: Path, fake_cloud: dict[str, Any]) -> None:
    fake_cloud["state"].write_text(json.dumps({"models": [], "endpoints": {"digits": {
        "displayName": "digits", "trafficSplit": {"111": 2, "222": 1, "333": 0},
        "deployedModels": [{"id": i, "model": f"projects/42/locations/europe-west4/models/old-{i}"}
                           for i in ("111", "222", "333")]}}}))
    folder = write_bundle(tmp_path, VertexTarget().emit(emit_context(spec(traffic_percent=10),
                                                                     tiny_onnx(tmp_path / "model.onnx"))))
    proc, calls = run_deploy(folder, fake_cloud)
    assert proc.returncode == 0, proc.stderr
    deploy = [c for c in calls if c["url"].endswith(":deployModel")]
    assert deploy[0]["body"]["trafficSplit"] == {"0": 10, "111": 60, "222": 30}  # 90 kept in the ratio 2:1
    assert not [c for c in calls if "endpoint_id=" in c["url"]]  # the endpoint exists: not created again


def test_deploy_script_refuses_a_partial_share_on_an_empty_endpoint(tmp_path: Path,
                                                                     fake_cloud: dict[str, Any]) -> None:
    folder = write_bundle(tmp_path, VertexTarget().emit(emit_context(spec(traffic_percent=25),
                                                                     tiny_onnx(tmp_path / "model.onnx"))))
    proc, calls = run_deploy(folder, fake_cloud)
    assert proc.returncode == 1
    assert "traffic_percent 25 leaves 75% to models already on the endpoint, and it has none" in proc.stderr
    assert not [c for c in calls if c["url"].endswith(":deployModel")]


class FakeGoogle(BaseHTTPRequestHandler):
    """The metadata server's token endpoint and the Cloud Storage JSON API's list and media downloads."""

    objects: dict[str, bytes] = {}
    requests: list[str] = []

    def log_message(self, *args: Any) -> None:
        return None

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlparse(self.path)
        FakeGoogle.requests.append(url.path)
        if url.path == "/computeMetadata/v1/instance/service-accounts/default/token":
            ok = self.headers.get("Metadata-Flavor") == "Google"
            return self._send(200 if ok else 403, {"access_token": "tok", "expires_in": 3600})
        if self.headers.get("Authorization") != "Bearer tok":
            return self._send(401, {"error": "no token"})
        if url.path == "/storage/v1/b/aip-bucket/o":
            prefix = parse_qs(url.query)["prefix"][0]
            return self._send(200, {"items": [{"name": n} for n in sorted(self.objects) if n.startswith(prefix)]})
        name = unquote(url.path.removeprefix("/storage/v1/b/aip-bucket/o/"))
        if name in self.objects and parse_qs(url.query).get("alt") == ["media"]:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(self.objects[name])
            return None
        return self._send(404, {"error": "not found"})

    def _send(self, status: int, doc: Any) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_container_command_copies_the_model_and_answers_vertex_requests(tmp_path: Path) -> None:
    files = VertexTarget().emit(emit_context(spec(), tiny_onnx(tmp_path / "model.onnx")))
    upload = json.loads(files["vertex/model-upload.json"])
    container = upload["model"]["containerSpec"]
    # what Vertex AI does with artifactUri: a copy in a bucket of its own, named by AIP_STORAGE_URI
    FakeGoogle.objects = {f"copy/{rel.removeprefix('vertex/model/')}": data
                          for rel, data in files.items() if rel.startswith("vertex/model/")}
    FakeGoogle.objects["elsewhere/model.onnx"] = b"not ours"
    FakeGoogle.requests = []
    google = ThreadingHTTPServer(("127.0.0.1", 0), FakeGoogle)
    threading.Thread(target=google.serve_forever, daemon=True).start()
    port = free_port()
    dest = str(tmp_path / "container-model")
    command = [sys.executable if a == "python" else a for a in container["command"] + container["args"]]
    command = [dest if a == "/tmp/deployc-model" else str(port) if a == "8080" else a for a in command]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AIP_STORAGE_URI": "gs://aip-bucket/copy",
           "GCE_METADATA_HOST": f"127.0.0.1:{google.server_port}",
           "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{google.server_port}"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if json_request(port, "GET", container["healthRoute"])[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.1)
        x = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
        status, body = json_request(port, "POST", container["predictRoute"],
                               {"instances": x.tolist(), "parameters": {"ignored": True}})  # Vertex's shape
        assert status == 200, body
        w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0
        z = x @ w
        expected = np.exp(z - z.max(axis=1, keepdims=True))
        expected /= expected.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(np.array(body["predictions"]), expected, rtol=1e-5, atol=1e-6)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
        google.shutdown()
    assert "copied 3 files from gs://aip-bucket/copy" in out
    assert sorted(p.name for p in Path(dest).iterdir()) == ["labels.txt", "model.onnx", "serving.json"]
    assert (Path(dest) / "model.onnx").read_bytes() == files["vertex/model/model.onnx"]
    assert "/storage/v1/b/aip-bucket/o/elsewhere%2Fmodel.onnx" not in FakeGoogle.requests


def test_container_command_fails_clearly_without_a_storage_uri(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "deployc.container.vertex_fetch", str(tmp_path), "--", "true"],
                          env={**os.environ, "PYTHONPATH": str(ROOT), "AIP_STORAGE_URI": "/local/path"},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "deployc vertex: error: AIP_STORAGE_URI is '/local/path', not a gs:// URI" in proc.stderr
