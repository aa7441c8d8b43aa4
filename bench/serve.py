"""`deployc serve` against its peers, in one run: KServe, MLServer, LitServe, BentoML, a plain FastAPI app.

Usage: PYTHONPATH=. python bench/serve.py [--rounds 4] [--duration 5] [--concurrency 1,16,64] [--peers all]

Every server serves the same ONNX model, the wide MLP 64 -> 1024 -> 1024 -> 1024 -> 10 (fp32, fixed-seed random
weights, `tests/serve_support.make_mlp`), on 127.0.0.1 only, with onnxruntime at 1 intra-op and 1 inter-op thread
(what the deployc bundle's serving.json says; the plain FastAPI app keeps onnxruntime's defaults, as written):
- `deployc serve BUILD --workers 1|2`, BUILD made by `deployc build` from a spec for that model (fp32 is
  batch-invariant, so cross-request batching is on; one more 1-worker row runs a build with batching off, and one
  a build with masked data capture on: every request captured, the input rounded, the output bucketed, the
  request id hashed; its files go to a temporary folder. The capture-overhead table compares it with the
  1-worker row of the same run);
- the peers in their own virtual environments under bench/.venvs/ (created on first run with `python3 -m venv`
  and pip from bench/peers/<peer>/requirements.txt; a peer whose install or start fails is skipped with the
  reason): KServe's ModelServer (bench/peers/kserve/app.py), MLServer with a custom onnxruntime runtime
  (bench/peers/mlserver/runtime.py), LitServe (bench/peers/litserve/app.py), BentoML
  (bench/peers/bentoml/service.py); and bench/plain_fastapi_app.py in this venv.
Bodies: the KServe v2 JSON body where the server speaks v2 (deployc, KServe, MLServer, and the FastAPI app, whose
route takes v2 JSON); the server's natural JSON (`{"x": [[...]]}`) for LitServe and BentoML; the v2 binary tensor
extension (binary input, binary output) for every v2 server that answers it correctly (each server and body is
probed once and its answer checked against the model's before any row runs); Open Inference Protocol gRPC
(ModelInfer, raw_input_contents, driven by h2load) for deployc and MLServer.
Load: wrk -t1 (h2load -t1 for gRPC) at each concurrency for `--duration` seconds, after a 1 s warm-up; each of
`--rounds` rounds runs every server x body x concurrency once, in a shuffled order, next to a 2 s in-process
`session.run` floor; the table gives medians over rounds (errors: summed). All servers stay up for the whole run
(idle while another is measured); every process started is ended by its process group at the end, also on
Ctrl-C or an error. Needs wrk (apt-get install wrk) and, for gRPC, h2load (apt-get install nghttp2-client).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PEERS = BENCH / "peers"
sys.path.insert(0, str(ROOT / "tests"))
import venvs  # noqa: E402
from machine import cpu_info  # noqa: E402
from serve_support import make_mlp  # noqa: E402

MODEL = "mlp"
WIDTH = 64
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = {body}
"""  # bench/serve_grpc.py uses it too
LUA_FILE = """wrk.method = "POST"
{headers}
local f = assert(io.open({path}, "rb"))
wrk.body = f:read("*a")
f:close()
"""
V2_JSON, NATURAL_JSON, V2_BINARY, GRPC = "v2 JSON", "natural JSON", "v2 binary", "gRPC"
PEER_PACKAGES = {"kserve": "kserve", "mlserver": "mlserver", "litserve": "litserve", "bentoml": "bentoml"}


# --- load generators -------------------------------------------------------------------------------------------
def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    assert m, text
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def run_wrk(url: str, lua: Path, conc: int, seconds: float) -> dict[str, float]:
    secs = max(1, round(seconds))
    out = subprocess.run(["wrk", "-t1", f"-c{conc}", f"-d{secs}s", "--latency", "-s", str(lua), url],
                         capture_output=True, text=True, check=True, timeout=secs + 60).stdout
    lat = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)", out, re.M))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    errors += int((re.search(r"Non-2xx or 3xx responses: (\d+)", out) or [0, 0])[1])
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
            "p50": _ms(lat["50"]), "p99": _ms(lat["99"]), "errors": errors}


def run_h2load(url: str, framed: Path, conc: int, seconds: float, log: Path) -> dict[str, float]:
    """gRPC calls as HTTP/2 POSTs of one framed ModelInferRequest; latencies from h2load's per-request log."""
    secs = max(1, round(seconds))
    log.unlink(missing_ok=True)
    out = subprocess.run(["h2load", "-t1", f"-c{conc}", "-m1", f"-D{secs}", "-d", str(framed), f"--log-file={log}",
                          "-H", "content-type: application/grpc", "-H", "te: trailers", url],
                         capture_output=True, text=True, check=True, timeout=secs + 60).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    assert done, out
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    us = np.array([float(r[2]) for r in rows if r[1] == "200"] or [0.0])
    return {"rps": int(done[2]) / secs, "p50": float(np.percentile(us, 50)) / 1000,
            "p99": float(np.percentile(us, 99)) / 1000, "errors": int(done[1]) - int(done[2])}


def raw_session(model: Path, seconds: float) -> dict[str, float]:
    """The floor: in-process session.run at batch 1, the bundle's thread settings."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, WIDTH)).astype(np.float32)
    for _ in range(50):
        sess.run(None, {"x": x})
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        sess.run(None, {"x": x})
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1000
    return {"rps": len(times) / sum(times), "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "errors": 0}


# --- bodies ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Body:
    kind: str
    data: bytes
    headers: dict[str, str]
    decode: Callable[[int, dict[str, str], bytes], np.ndarray]  # status, headers, body -> the output


def _v2_json_out(status: int, headers: dict[str, str], data: bytes) -> np.ndarray:
    out = json.loads(data)["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def _v2_binary_out(status: int, headers: dict[str, str], data: bytes) -> np.ndarray:
    n = int(headers["inference-header-content-length"])
    out = json.loads(data[:n])["outputs"][0]
    assert out["parameters"]["binary_data_size"] == len(data) - n
    return np.frombuffer(data[n:], np.float32).reshape(out["shape"])


def _natural_out(status: int, headers: dict[str, str], data: bytes) -> np.ndarray:
    doc = json.loads(data)
    return np.asarray(doc["probabilities"] if isinstance(doc, dict) else doc, np.float32)


def bodies(x: np.ndarray) -> dict[str, Body]:
    v2 = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                 "data": x.ravel().tolist()}]}).encode()
    head = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return {
        V2_JSON: Body(V2_JSON, v2, {"Content-Type": "application/json"}, _v2_json_out),
        NATURAL_JSON: Body(NATURAL_JSON, json.dumps({"x": x.tolist()}).encode(), {"Content-Type": "application/json"},
                           _natural_out),
        V2_BINARY: Body(V2_BINARY, head + x.tobytes(), {"Content-Type": "application/octet-stream",
                                                        "Inference-Header-Content-Length": str(len(head))},
                        _v2_binary_out),
    }


def wrk_script(body: Body, work: Path) -> Path:
    data = work / f"body-{body.kind.replace(' ', '-')}.bin"
    data.write_bytes(body.data)
    headers = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in body.headers.items())
    lua = data.with_suffix(".lua")
    lua.write_text(LUA_FILE.format(headers=headers, path=json.dumps(str(data))))
    return lua


def grpc_frame(x: np.ndarray, path: Path) -> Path:
    """A length-prefixed ModelInferRequest with raw contents: the body of one gRPC call (tritonclient's messages,
    the same inference.* protocol; deployc's generated modules are never imported here)."""
    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[x.tobytes()])
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    data = req.SerializeToString()
    path.write_bytes(b"\0" + len(data).to_bytes(4, "big") + data)
    return path


def grpc_probe(port: int, x: np.ndarray) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer(MODEL, [inp], client_timeout=20).as_numpy("probabilities")
    finally:
        client.close()


# --- servers -----------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_call(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
              timeout: float = 20) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@dataclasses.dataclass
class Server:
    name: str          # the table's label
    cmd: list[str]
    env: dict[str, str]
    port: int
    ready_path: str
    infer_path: str
    kinds: list[str]   # bodies it may speak (each one probed before it is measured)
    cwd: Path = ROOT
    grpc_port: int | None = None
    note: str = ""
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self, work: Path) -> None:
        self.log = work / f"{re.sub(r'[^a-z0-9]+', '-', self.name.lower())}.log"
        with self.log.open("wb") as log:
            # its own session: the whole process tree is one group, ended at once by stop()
            self.proc = subprocess.Popen(self.cmd, env={**os.environ, **self.env}, cwd=self.cwd, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 180) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if http_call(self.port, "GET", self.ready_path, timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"not ready after {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 8) -> str:
        text = self.log.read_text(errors="replace") if self.log and self.log.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group's id is the pid this script started
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone: end what is left of its group (workers, multiprocessing helpers)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            break
        self.proc = None


def listening_beyond_loopback(pids: set[int]) -> list[str]:
    """Listening TCP sockets of these processes on an address other than loopback (ss; empty when absent)."""
    if not shutil.which("ss"):
        return []
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    bad = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        local = line.split()[3] if len(line.split()) > 3 else ""
        if owners & pids and not re.match(r"(127\.0\.0\.1|\[::ffff:127\.0\.0\.1\]|\[::1\]):", local):
            bad.append(local)
    return bad


def group_pids(pgids: list[int]) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,pgid="], capture_output=True, text=True).stdout
    return {int(a) for a, b in (line.split() for line in out.splitlines() if line.strip()) if int(b) in pgids}


# --- peer environments -------------------------------------------------------------------------------------------
def ensure_venv(peer: str) -> tuple[Path | None, str]:
    """bench/.venvs/<peer> (bench/venvs.py): (its python, versions of the peer, onnxruntime and numpy) or (None,
    why not)."""
    return venvs.ensure_venv(peer, [PEER_PACKAGES[peer], "onnxruntime", "numpy"]
                             + (["uvloop"] if peer == "mlserver" else []))


def local_versions() -> str:
    import importlib.metadata as m

    return " ".join(f"{p} {m.version(p)}" for p in ("onnxruntime", "numpy", "fastapi", "uvicorn", "pydantic"))


# --- the deployc builds ------------------------------------------------------------------------------------------
CAPTURE_ROW = "deployc serve, 1 worker, capture on"
CAPTURE_SALT_ENV = "BENCH_CAPTURE_SALT"
# the worst case a spec can ask for: every request, each tensor masked, the request id hashed
CAPTURE = {"sampling_percent": 100, "fields": {"x": {"mask": "round", "decimals": 2},
                                               "probabilities": {"mask": "bucket", "edges": [0.1, 0.5, 0.9]}},
           "request_id": {"mask": "hash", "salt_env": CAPTURE_SALT_ENV},
           "files": {"max_file_mb": 8, "max_total_mb": 64, "queue_size": 4096}}


def build(work: Path, model: Path, name: str, batching: dict[str, Any], capture: dict[str, Any] | None = None
          ) -> tuple[Path, str]:
    """`deployc build` of a spec for the model: the build folder and report.md's batching line."""
    spec_dir = work / f"spec-{name}"
    spec_dir.mkdir()
    shutil.copy(model, spec_dir / "model.onnx")
    rng = np.random.default_rng(7)  # eval rows, so the build measures batch invariance instead of reading the graph
    np.savez(spec_dir / "eval.npz", x=rng.standard_normal((64, WIDTH)).astype(np.float32),
             y=rng.integers(0, 10, 64).astype(np.int64))
    spec = {"apiVersion": "deployc/v1", "name": MODEL, "version": "1.0.0", "model": {"path": "model.onnx"},
            "data": {"eval": {"path": "eval.npz", "x": "x", "y": "y"}},
            "targets": {"local": {"batching": batching}}}
    if capture is not None:
        spec["monitoring"] = {"capture": {**capture, "files": {**capture["files"], "folder": str(work / "capture")}}}
    (spec_dir / "deploy.yaml").write_text(json.dumps(spec, indent=2))  # JSON is YAML
    out = work / f"build-{name}"
    subprocess.run([sys.executable, "-m", "deployc", "build", str(spec_dir / "deploy.yaml"), "--out", str(out),
                    "--cache-dir", str(work / "cache"), "-q"], check=True, cwd=ROOT, timeout=600,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = next((ln for ln in (out / "report.md").read_text().splitlines() if ln.startswith("Cross-request")), "")
    return out, line


# --- the run -----------------------------------------------------------------------------------------------------
def make_servers(args: argparse.Namespace, work: Path, model: Path, builds: dict[str, tuple[Path, str]],
                 notes: list[str]) -> list[Server]:
    env_model = {"MODEL_PATH": str(model), "ORT_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    servers: list[Server] = []
    deployc_rows = [("deployc serve, 1 worker", "batching", 1), ("deployc serve, 2 workers", "batching", 2),
                    ("deployc serve, 1 worker, batching off", "nobatch", 1), (CAPTURE_ROW, "capture", 1)]
    for label, key, workers in deployc_rows:
        bundle, line = builds[key]
        port, gport = free_port(), free_port()
        servers.append(Server(label, [sys.executable, "-m", "deployc.serve", str(bundle), "--workers", str(workers),
                                      "--port", str(port), "--grpc-port", str(gport)],
                              {"PYTHONPATH": str(ROOT), CAPTURE_SALT_ENV: "bench-salt-" + "0" * 24}, port,
                              "/v2/health/ready", f"/v2/models/{MODEL}/infer",
                              [V2_JSON] if key == "nobatch" else [V2_JSON, V2_BINARY, GRPC],
                              grpc_port=None if key == "nobatch" else gport, note=line))
    wanted = set(args.peers.split(",")) if args.peers != "all" else {"kserve", "mlserver", "litserve", "bentoml",
                                                                      "fastapi"}
    for peer in ("kserve", "mlserver", "litserve", "bentoml"):
        if peer not in wanted:
            continue
        python, info = ensure_venv(peer)
        if python is None:
            print(f"{peer}: skipped: {info}", flush=True)
            notes.append(f"{peer}: skipped: {info}")
            continue
        notes.append(f"{peer}: {info}")
        port = free_port()
        if peer == "kserve":
            servers.append(Server("KServe ModelServer", [str(python), str(PEERS / "kserve" / "app.py")],
                                  {**env_model, "PORT": str(port)}, port, "/v2/health/ready",
                                  f"/v2/models/{MODEL}/infer", [V2_JSON, V2_BINARY]))
        elif peer == "mlserver":
            gport, mport = free_port(), free_port()
            root = work / "mlserver"
            (root / MODEL).mkdir(parents=True)
            (root / "settings.json").write_text(json.dumps(
                {"host": "127.0.0.1", "http_port": port, "grpc_port": gport, "metrics_port": mport, "debug": False}))
            (root / MODEL / "model-settings.json").write_text(json.dumps(
                {"name": MODEL, "implementation": "runtime.OnnxRuntime"}))
            servers.append(Server("MLServer", [str(python.parent / "mlserver"), "start", str(root)],
                                  {**env_model, "PYTHONPATH": str(PEERS / "mlserver")}, port, "/v2/health/ready",
                                  f"/v2/models/{MODEL}/infer", [V2_JSON, V2_BINARY, GRPC], cwd=root,
                                  grpc_port=gport))
        elif peer == "litserve":
            servers.append(Server("LitServe", [str(python), str(PEERS / "litserve" / "app.py")],
                                  {**env_model, "PORT": str(port)}, port, "/health", "/predict", [NATURAL_JSON]))
        else:
            servers.append(Server("BentoML", [str(python.parent / "bentoml"), "serve", "service:Mlp", "--host",
                                              "127.0.0.1", "--port", str(port)],
                                  {**env_model, "BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(work / "bentoml")},
                                  port, "/readyz", "/predict", [NATURAL_JSON], cwd=PEERS / "bentoml"))
    if "fastapi" in wanted:
        port = free_port()
        servers.append(Server("plain FastAPI + onnxruntime", [
            sys.executable, "-m", "uvicorn", "bench.plain_fastapi_app:app", "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log", "--log-level", "warning"], {"MODEL_PATH": str(model), "PYTHONPATH": str(ROOT)},
            port, "/v2/health/ready", f"/v2/models/{MODEL}/infer", [V2_JSON]))
        notes.append(f"plain FastAPI (this venv): {local_versions()}")
    return servers


def probe(srv: Server, kind: str, body: Body | None, x: np.ndarray, want: np.ndarray) -> str | None:
    """None when the server answers this body correctly, else why not."""
    try:
        if kind == GRPC:
            assert srv.grpc_port is not None
            got = grpc_probe(srv.grpc_port, x)
        else:
            assert body is not None
            status, headers, data = http_call(srv.port, "POST", srv.infer_path, body.data, body.headers)
            if status != 200:
                return f"HTTP {status}: {data[:120]!r}"
            got = body.decode(status, headers, data)
    except Exception as e:  # any failure to answer: the row is skipped with this reason
        return f"{type(e).__name__}: {str(e)[:160]}"
    if got.shape != want.shape or not np.allclose(got, want, atol=1e-5):
        return f"wrong answer: {got.ravel()[:3]} vs {want.ravel()[:3]}"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per row (wrk takes whole seconds)")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--peers", default="all", help="comma list of kserve,mlserver,litserve,bentoml,fastapi")
    ap.add_argument("--seed", type=int, default=0, help="the shuffles' seed")
    args = ap.parse_args()
    concs = [int(c) for c in args.concurrency.split(",")]
    if shutil.which("wrk") is None:
        print("wrk not found: nothing to measure (Debian: apt-get install -y wrk)")
        return 1
    # Ctrl-C (also when started from a shell that ignores SIGINT in the background) and SIGTERM unwind through
    # the finally below, which ends every server this run started
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="deployc-bench-serve-"))
    servers: list[Server] = []
    notes: list[str] = []
    try:
        model = work / "model.onnx"
        make_mlp(model)
        builds = {"batching": build(work, model, "batching", {"max_batch_size": 64, "max_delay_ms": 2.0}),
                  "nobatch": build(work, model, "nobatch", {"enabled": False}),
                  "capture": build(work, model, "capture", {"max_batch_size": 64, "max_delay_ms": 2.0}, CAPTURE)}
        servers = make_servers(args, work, model, builds, notes)
        for srv in servers:
            srv.start(work)
        live: list[Server] = []
        for srv in servers:
            try:
                srv.wait_ready()
                live.append(srv)
            except RuntimeError as e:
                print(f"{srv.name}: skipped: did not start: {e}", flush=True)
                notes.append(f"{srv.name}: skipped: did not start")
                srv.stop()
        exposed = listening_beyond_loopback(group_pids([s.proc.pid for s in live if s.proc]))
        if exposed:
            raise RuntimeError(f"a server listens beyond loopback: {exposed}")

        x = np.random.default_rng(0).standard_normal((1, WIDTH)).astype(np.float32)
        import onnxruntime as ort

        want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        body_of = bodies(x)
        scripts = {kind: wrk_script(b, work) for kind, b in body_of.items()}
        framed = grpc_frame(x, work / "infer.grpc")
        have_h2load = shutil.which("h2load") is not None
        cells: list[tuple[Server, str]] = []
        for srv in live:
            for kind in srv.kinds:
                if kind == GRPC and not have_h2load:
                    notes.append(f"{srv.name}, gRPC: skipped: h2load not found (apt-get install nghttp2-client)")
                    continue
                why = probe(srv, kind, body_of.get(kind), x, want)
                if why:
                    print(f"{srv.name}, {kind}: skipped: {why}", flush=True)
                    notes.append(f"{srv.name}, {kind}: not measured: {why}")
                else:
                    cells.append((srv, kind))
        if any(s.name == "KServe ModelServer" for s in live):
            notes.append("KServe ModelServer, gRPC: not measured: KServe 0.21 binds its gRPC server to [::] with "
                         "no host option, so the app turns it off")

        results: dict[tuple[str, str, int], list[dict[str, float]]] = {}
        floor: list[dict[str, float]] = []
        rng = random.Random(args.seed)
        per_row = max(1, round(args.duration)) + 1
        print(f"{len(cells) * len(concs)} rows per round, {args.rounds} rounds: about "
              f"{args.rounds * (len(cells) * len(concs) * (per_row + 0.5) + 2) / 60:.0f} min", flush=True)
        for rnd in range(args.rounds):
            order = [(srv, kind, c) for srv, kind in cells for c in concs]
            rng.shuffle(order)
            floor.append(raw_session(model, 2.0))
            for srv, kind, c in order:
                if kind == GRPC:
                    assert srv.grpc_port is not None
                    url = f"http://127.0.0.1:{srv.grpc_port}/inference.GRPCInferenceService/ModelInfer"
                    log = work / "h2load.log"
                    run_h2load(url, framed, c, 1, log)  # warm the connections and the batch sizes
                    r = run_h2load(url, framed, c, args.duration, log)
                else:
                    url = f"http://127.0.0.1:{srv.port}{srv.infer_path}"
                    run_wrk(url, scripts[kind], c, 1)
                    r = run_wrk(url, scripts[kind], c, args.duration)
                results.setdefault((srv.name, kind, c), []).append(r)
            print(f"round {rnd + 1}/{args.rounds} done", flush=True)
        report(args, servers, live, results, floor, concs, notes, builds)
    finally:
        for srv in servers:
            srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def capture_overhead(m: dict[tuple[str, str, int], dict[str, float]], concs: list[int]) -> None:
    """Capture on against the same server and build settings with it off, measured in the same rounds."""
    base = "deployc serve, 1 worker"
    rows = [(kind, c, m[(base, kind, c)], m[(CAPTURE_ROW, kind, c)]) for kind in (V2_JSON, V2_BINARY, GRPC)
            for c in concs if (base, kind, c) in m and (CAPTURE_ROW, kind, c) in m]
    if not rows:
        return
    print("\n## Capture overhead: every request captured and masked (round, bucket, hashed id) vs capture off")
    print("| body | concurrency | req/s off | req/s on | on / off | p50 ms off -> on | p99 ms off -> on |")
    print("|---|---|---|---|---|---|---|")
    for kind, c, off, on in rows:
        print(f"| {kind} | {c} | {off['rps']:,.0f} | {on['rps']:,.0f} | {on['rps'] / off['rps']:.2f} | "
              f"{off['p50']:.2f} -> {on['p50']:.2f} | {off['p99']:.2f} -> {on['p99']:.2f} |")


def med(rs: list[dict[str, float]]) -> dict[str, float]:
    return {"rps": statistics.median(r["rps"] for r in rs), "p50": statistics.median(r["p50"] for r in rs),
            "p99": statistics.median(r["p99"] for r in rs), "errors": sum(r["errors"] for r in rs), "n": len(rs)}


def report(args: argparse.Namespace, servers: list[Server], live: list[Server],
           results: dict[tuple[str, str, int], list[dict[str, float]]], floor: list[dict[str, float]],
           concs: list[int], notes: list[str], builds: dict[str, tuple[Path, str]]) -> None:
    m = {k: med(v) for k, v in results.items()}
    f = med(floor)
    deployc = [s.name for s in servers if s.name.startswith("deployc")]
    peers = [s.name for s in servers if not s.name.startswith("deployc")]
    print("\n## deployc serve vs peers: wide MLP 64-1024-1024-1024-10 (fp32), batch 1 per request")
    print(f"CPU: {cpu_info()}")
    print(f"{args.rounds} rounds x {max(1, round(args.duration))} s per row, wrk -t1 (gRPC: h2load -t1), medians over "
          "rounds, errors summed (non-2xx + socket errors; h2load: failed streams)")
    print(f"deployc builds: batching on: {builds['batching'][1]} | batching off: {builds['nobatch'][1]}\n")
    print("| server | body | concurrency | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    print(f"| raw `session.run` in process (floor) | - | - | {f['rps']:,.0f} | {f['p50']:.2f} | {f['p99']:.2f} | 0 |")
    kinds_order = [V2_JSON, NATURAL_JSON, V2_BINARY, GRPC]
    for name in deployc + peers:
        for kind in kinds_order:
            for c in concs:
                r = m.get((name, kind, c))
                if r:
                    print(f"| {name} | {kind} | {c} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                          f"{int(r['errors'])} |")
    # deployc's ratio to each peer, like for like: JSON peers against deployc's v2 JSON, binary/gRPC against its own
    main_d = [d for d in deployc if "batching off" not in d and d != CAPTURE_ROW]
    print("\n| peer | body | concurrency | " + " | ".join(f"{d} / peer" for d in main_d) + " |")
    print("|---|---|---|" + "---|" * len(main_d))
    for name in peers:
        for kind in kinds_order:
            for c in concs:
                r = m.get((name, kind, c))
                if not r:
                    continue
                dk = V2_JSON if kind in (V2_JSON, NATURAL_JSON) else kind
                cols = []
                for d in main_d:
                    dr = m.get((d, dk, c))
                    cols.append(f"{dr['rps'] / r['rps']:.1f}x" if dr and r["rps"] else "-")
                print(f"| {name} | {kind} (deployc: {dk}) | {c} | " + " | ".join(cols) + " |")
    print("\nTargets:")
    for d in main_d:
        for c in concs:
            dr = m.get((d, V2_JSON, c))
            json_peers = [(n, m[(n, k, c)]["rps"]) for n in peers for k in (V2_JSON, NATURAL_JSON) if (n, k, c) in m]
            if dr and json_peers:
                best, rps = max(json_peers, key=lambda t: t[1])
                ratio = dr["rps"] / rps
                print(f"- {d}, c={c}: {ratio:.2f}x the best peer ({best}, {rps:,.0f} req/s), JSON bodies; "
                      f"target >= 3x: {'met' if ratio >= 3 else 'NOT met'}")
        fa, dr = m.get(("plain FastAPI + onnxruntime", V2_JSON, 64)), m.get((d, V2_JSON, 64))
        if fa and dr:
            ratio = dr["rps"] / fa["rps"]
            print(f"- {d}, c=64: {ratio:.2f}x plain FastAPI; target >= 2x: {'met' if ratio >= 2 else 'NOT met'}")
        for kind in (V2_JSON, V2_BINARY):
            dr = m.get((d, kind, 1))
            if dr:
                gap = dr["p50"] - f["p50"]
                print(f"- {d}, {kind}, c=1: p50 {dr['p50']:.2f} ms, {gap:.2f} ms above the session.run floor "
                      f"({f['p50']:.2f} ms); target <= 0.3 ms: {'met' if gap <= 0.3 else 'NOT met'}")
    capture_overhead(m, concs)
    print("\nNotes:")
    for s in servers:
        if s.name.startswith("deployc"):
            print(f"- {s.name}: {s.note or 'batching: see its build'}")
    print("- LitServe and BentoML take their natural JSON body, {\"x\": [[64 floats]]}; the FastAPI app's route "
          "takes the v2 JSON body")
    print("- v2 binary: binary input and binary output (binary_data_output); gRPC: ModelInfer with "
          "raw_input_contents")
    for n in notes:
        print(f"- {n}")


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # the servers were stopped by main's finally
        print("interrupted: every server this run started has been stopped", file=sys.stderr)
        raise SystemExit(130) from None
