"""The light installs, as a user gets them: the wheel `python -m build` makes, installed into fresh venvs.

- core only (`pip install deployc`): validate, plan, schema and init run; build, serve and deploy name the
  extra to install, exit 1, no traceback;
- `[serve]` only (what the generated serving images install): `deployc serve` answers inference and explain
  requests on the digits bundle, and TensorFlow is not installed; a bundle of an OpenVINO artifact names
  `deployc[openvino]`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, run_deployc, session_folder
from quant_support import onnx_project
from serve_support import free_port

from deployc import __version__

pytestmark = pytest.mark.slow


def _run(*cmd: str | Path, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "DEPLOYC_DEBUG")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def make(out: Path) -> None:
        src = out / "src"  # a copy of what the package declares, without build/ or caches
        shutil.copytree(ROOT / "deployc", src / "deployc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copyfile(ROOT / name, src / name)
        r = _run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out / "dist", src)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

    (found,) = (session_folder(tmp_path_factory, "deployc-wheel", make) / "dist").glob("deployc-*.whl")
    return found


def _venv(path: Path, requirement: str) -> Path:
    r = _run(sys.executable, "-m", "venv", path)
    assert r.returncode == 0, r.stderr
    r = _run(path / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", requirement)
    if r.returncode != 0 and ("Could not find a version" in r.stderr or "No matching distribution" in r.stderr):
        pytest.skip(f"the package index is out of reach: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr[-3000:]
    return path / "bin"


def test_wheel_carries_templates_schemas_and_protos(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"deployc/schema/deploy.schema.json", "deployc/templates/sagemaker/Dockerfile.j2",
            "deployc/targets/sagemaker_instance_types.txt", "deployc/serve/proto/grpc_predict_v2.proto",
            "deployc/py.typed"} <= names
    assert any(n.startswith("deployc/targets/schemas/") and n.endswith(".json") for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    required = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in required if "extra ==" not in r]
    assert sorted(r.split(">")[0].split("=")[0].split("<")[0] for r in core) == [
        "jinja2", "jsonschema", "numpy", "pydantic", "rich", "ruamel.yaml"]
    serve = [r for r in required if "extra == \"serve\"" in r]
    assert any(r.startswith("onnxruntime") for r in serve) and not any("tensorflow" in r for r in serve)


@pytest.fixture(scope="module")
def core_bin(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _venv(tmp_path_factory.mktemp("venv-core") / "venv", str(wheel))


@pytest.fixture(scope="module")
def serve_bin(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _venv(tmp_path_factory.mktemp("venv-serve") / "venv", f"deployc[serve] @ {wheel.as_uri()}")


def test_core_install_validates_plans_and_names_the_extras(core_bin: Path, digits: Path, tmp_path: Path) -> None:
    project = digits
    for lib in ("tensorflow", "onnx", "onnxruntime", "starlette", "boto3", "shap"):
        assert _run(core_bin / "python", "-c", f"import {lib}").returncode == 1, f"{lib} is in the core install"

    r = _run(core_bin / "deployc", "validate", "deploy.yaml", cwd=project)
    assert r.returncode == 0 and r.stdout.strip() == f"deploy.yaml: valid (digits {_spec_version(project)})", r
    r = _run(core_bin / "deployc", "plan", "deploy.yaml", "--format", "json", "--cache-dir", tmp_path / "c",
             cwd=project)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["name"] == "digits" and plan["steps"] and not any(s["cached"] for s in plan["steps"])
    r = _run(core_bin / "deployc", "schema")
    assert r.returncode == 0 and json.loads(r.stdout)["title"]
    mine = tmp_path / "mine"  # `deployc init` writes a spec for the model that validates, on the core install
    shutil.copytree(project, mine, ignore=shutil.ignore_patterns("deploy.yaml", "build"))
    r = _run(core_bin / "deployc", "init", "model.keras", "--data", "data/eval.npz", "data/calib.npz", cwd=mine)
    assert r.returncode == 0, r.stderr
    r = _run(core_bin / "deployc", "validate", "deploy.yaml", cwd=mine)
    assert r.returncode == 0 and r.stdout.startswith("deploy.yaml: valid"), r.stderr
    r = _run(core_bin / "deployc", "--version")
    assert r.stdout.strip() == f"deployc {__version__}"

    # a spec error is still located (file:line:col) without the heavy libraries
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in project.iterdir():
        (bad / p.name).symlink_to(p)
    (bad / "deploy.yaml").unlink()
    (bad / "deploy.yaml").write_text((project / "deploy.yaml").read_text().replace("max_size_mb: 1",
                                                                                   "max_size_mb: lots"))
    r = _run(core_bin / "deployc", "validate", "deploy.yaml", cwd=bad)
    assert r.returncode == 1 and "deploy.yaml:" in r.stderr and "gates.max_size_mb" in r.stderr, r.stderr

    for args, extra, module in ((("build", "deploy.yaml"), "build", "tensorflow"),
                                (("build", "deploy.yaml", "--check"), "build", "tensorflow"),
                                (("serve", "build/digits/local"), "serve", "onnxruntime"),
                                (("deploy", "build/digits"), "aws", "boto3")):
        r = _run(core_bin / "deployc", *args, cwd=project)
        assert r.returncode == 1, (args, r.stderr)
        assert r.stderr.strip() == (f"deployc {args[0]} needs {module}, which is not installed: "
                                    f"pip install 'deployc[{extra}]'"), r.stderr
        assert not (project / "build").exists()  # nothing half-written


def _spec_version(project: Path) -> str:
    for line in (project / "deploy.yaml").read_text().splitlines():
        if line.startswith("version:"):
            return line.split(":", 1)[1].strip().strip("'\"")
    raise AssertionError("no version in the spec")


def test_serve_install_serves_the_digits_bundle(serve_bin: Path, digits: Path, session_cache: Path) -> None:
    for lib in ("tensorflow", "keras", "tf2onnx", "onnx", "shap", "matplotlib"):
        assert _run(serve_bin / "python", "-c", f"import {lib}").returncode == 1, f"{lib} is in [serve]"
    r = run_deployc("build", "deploy.yaml", "-q", cwd=digits, cache_dir=session_cache)  # the full install builds
    assert r.returncode == 0, r.stderr[-3000:]
    bundle = digits / "build" / "digits" / "local"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.Popen([str(serve_bin / "deployc"), "serve", str(bundle), "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "the server did not become ready in 60 s"
                time.sleep(0.2)
        body = {"inputs": [{"name": "pixels", "shape": [2, 64], "datatype": "FP32",
                            "data": [0.0] * 64 + [0.5] * 64}]}
        for route in ("infer", "explain"):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/digits/{route}",
                                         data=json.dumps(body).encode(), headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                doc = json.loads(resp.read())
            assert resp.status == 200 and doc["model_name"] == "digits", doc
            shapes = {o["name"]: o["shape"] for o in doc["outputs"]}
            if route == "infer":
                assert [2, 10] in shapes.values(), shapes
            else:
                assert any(s == [2, 64] for s in shapes.values()), shapes
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # the server in [serve] cannot build
    r = _run(serve_bin / "deployc", "build", "deploy.yaml", cwd=digits)
    assert r.returncode == 1 and "pip install 'deployc[build]'" in r.stderr, r.stderr


def test_serve_install_names_the_openvino_extra(serve_bin: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    d = onnx_project(tmp_path / "ov")
    (d / "deploy.yaml").write_text((d / "deploy.yaml").read_text().split("  sagemaker:")[0])
    r = run_deployc("build", "deploy.yaml", "--out", "out", "-q", cwd=d, cache_dir=tmp_path / "cache")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _run(serve_bin / "python", "-c", "import openvino").returncode == 1, "openvino is in [serve]"
    r = _run(serve_bin / "deployc", "serve", str(d / "out"), "--port", "0")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert ("model.runtime openvino needs openvino, which is not installed: pip install 'deployc[openvino]'"
            in r.stderr), r.stderr
