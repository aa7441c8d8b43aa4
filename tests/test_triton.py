"""The triton target: golden model repositories, config.pbtxt read with Triton's own ModelConfig proto
(tritonclient), the batching rule shared with the local target, located spec errors, and real builds whose
model repository is checked against the shipped model and run with onnxruntime through the config's inputs."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import example_project
from golden_support import assert_golden
from ruamel.yaml import YAML
from serve_support import make_classifier, make_mlp

from deployc.api import build, plan, validate
from deployc.errors import SpecError
from deployc.schema import DeploySpec
from deployc.targets import get_target
from deployc.targets.base import EmitContext, TensorInfo
from deployc.targets.invariance import INVARIANCE
from deployc.targets.triton import DATA_TYPES, FIELDS, decide, model_config_class

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

GOLDEN = Path(__file__).parent / "golden" / "triton"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "deploy.yaml").is_file())
REPO = "triton/model_repository"
NUMPY = {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64, "TYPE_BOOL": np.bool_}


def parse(text: bytes | str) -> Any:
    """config.pbtxt read as Triton reads it: text format into inference.ModelConfig (Triton's own proto)."""
    from google.protobuf import text_format

    return text_format.Parse(text.decode() if isinstance(text, bytes) else text, model_config_pb2.ModelConfig())


def dtype_name(value: int) -> str:
    return model_config_pb2.DataType.Name(value)


# --- golden cases: the emitter on a recorded model description --------------------------------------------------

def case(name: str, tmp_path: Path) -> tuple[DeploySpec, EmitContext, dict[str, Any]]:
    spec = DeploySpec.model_validate(YAML(typ="safe", pure=True).load((GOLDEN / name / "deploy.yaml").read_text()))
    info = json.loads((GOLDEN / name / "context.json").read_text())
    model = tmp_path / "model.onnx"
    model.write_bytes(b"the shipped model")

    def tensors(key: str) -> tuple[TensorInfo, ...]:
        return tuple(TensorInfo(t["name"], t["datatype"], tuple(t["shape"])) for t in info[key])

    ctx = EmitContext(spec=spec, spec_file="deploy.yaml", onnx_model=model,
                      onnx_sha256=hashlib.sha256(model.read_bytes()).hexdigest(), inputs=tensors("inputs"),
                      outputs=tensors("outputs"), labels=tuple(info["labels"]) if info["labels"] else None,
                      reference_distribution=None, latency_buckets=(0.1,),
                      step_results={INVARIANCE: info["invariance"]} if info["invariance"] else {})
    return spec, ctx, info


def emitted(name: str, tmp_path: Path) -> tuple[DeploySpec, EmitContext, dict[str, Any], dict[str, bytes]]:
    spec, ctx, info = case(name, tmp_path)
    return spec, ctx, info, get_target("triton").emit(ctx)


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str, tmp_path: Path) -> None:
    _, _, _, files = emitted(name, tmp_path)
    models = [k for k in files if k.endswith("/model.onnx")]
    assert [files[k] for k in models] == [b"the shipped model"]
    assert_golden({k: v for k, v in files.items() if k not in models}, GOLDEN / name / "expected")


@pytest.mark.parametrize("name", CASES)
def test_config_reads_as_tritons_model_config(name: str, tmp_path: Path) -> None:
    spec, ctx, info, files = emitted(name, tmp_path)
    cfg = spec.targets.triton
    folder = f"{REPO}/{cfg.model_name or spec.name}"
    m = parse(files[f"{folder}/config.pbtxt"])
    assert m.name == (cfg.model_name or spec.name) and m.backend == "onnxruntime"
    assert f"{folder}/{cfg.version}/model.onnx" in files
    batched = m.max_batch_size > 0
    assert batched is all(t.shape[0] == -1 for t in (*ctx.inputs, *ctx.outputs))
    for got, want in [*zip(m.input, ctx.inputs, strict=True), *zip(m.output, ctx.outputs, strict=True)]:
        dims = list(want.shape[1:] if batched else want.shape)
        assert got.name == want.name and dtype_name(got.data_type) == DATA_TYPES[want.datatype]
        assert list(got.dims) == (dims or [1]) and got.HasField("reshape") is not dims
        assert list(got.reshape.shape) == []
    assert m.HasField("dynamic_batching") is info["dynamic_batching"]
    assert m.output[0].label_filename == ("labels.txt" if ctx.labels else "")
    if ctx.labels:
        assert files[f"{folder}/labels.txt"].decode().splitlines() == list(ctx.labels)
    (group,) = m.instance_group
    assert group.count == cfg.instance_group.count
    assert group.kind == model_config_pb2.ModelInstanceGroup.Kind.Value(f"KIND_{cfg.instance_group.kind.upper()}")
    assert m.version_policy.WhichOneof("policy_choice") == cfg.version_policy.policy


def test_every_setting_reaches_the_config(tmp_path: Path) -> None:
    *_, files = emitted("full-settings", tmp_path)
    m = parse(files[f"{REPO}/Ranker_v3.1/config.pbtxt"])
    assert m.max_batch_size == 64 and f"{REPO}/Ranker_v3.1/3/model.onnx" in files
    assert list(m.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert m.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(m.version_policy.specific.versions) == [2, 3]
    assert {k: v.string_value for k, v in m.parameters.items()} == {"intra_op_thread_count": "4",
                                                                    "inter_op_thread_count": "1"}
    assert [dtype_name(t.data_type) for t in m.input] == ["TYPE_INT64", "TYPE_BOOL"]
    readme = files["triton/README.md"].decode()
    assert " --gpus=all " in readme and '"localhost:8000/v2/models/Ranker_v3.1/infer"' in readme


def test_defaults_and_an_unbatched_model(tmp_path: Path) -> None:
    *_, files = emitted("invariant-labels", tmp_path)
    m = parse(files[f"{REPO}/digits/config.pbtxt"])
    assert m.max_batch_size == 32 and m.version_policy.latest.num_versions == 1 and not m.parameters
    assert m.dynamic_batching.max_queue_delay_microseconds == 2000 and not m.dynamic_batching.preferred_batch_size
    *_, files = emitted("fixed-shape", tmp_path)
    text = files[f"{REPO}/iris/config.pbtxt"].decode()
    assert "max_batch_size: 0\n" in text and list(parse(text).input[0].dims) == [1, 4]
    assert ("`max_batch_size: 0`: the model has no free first axis on every input and output, so Triton does not "
            "batch it") in files["triton/README.md"].decode()


def test_request_json_fits_the_inputs(tmp_path: Path) -> None:
    *_, files = emitted("full-settings", tmp_path)
    (ids, mask) = json.loads(files["triton/request.json"])["inputs"]
    assert (ids["name"], ids["datatype"], ids["shape"], ids["data"]) == ("token_ids", "INT64", [1, 8], [0] * 8)
    assert (mask["datatype"], mask["data"]) == ("BOOL", [False] * 8)


def test_names_that_need_escaping_survive(tmp_path: Path) -> None:
    spec, ctx, _ = case("invariant-labels", tmp_path)
    odd = 'in "put"\\ é\n'
    ctx = replace(ctx, inputs=(TensorInfo(odd, "FP32", (-1, 16)),))
    files = get_target("triton").emit(ctx)
    text = files[f"{REPO}/digits/config.pbtxt"]
    assert text.isascii() and parse(text).input[0].name == odd


def test_the_subset_has_tritons_names_numbers_and_types() -> None:
    """Each message, field and enum value deployc declares is Triton's (model_config.proto via tritonclient)."""
    ours = model_config_class().DESCRIPTOR
    seen: set[str] = set()

    def compare(mine: Any, theirs: Any) -> None:
        if mine.full_name in seen:
            return
        seen.add(mine.full_name)
        assert mine.full_name == theirs.full_name
        for f in mine.fields:
            t = theirs.fields_by_name[f.name]
            assert (f.number, f.type, f.is_repeated) == (t.number, t.type, t.is_repeated), f.full_name
            if f.enum_type is not None:
                assert {v.name: v.number for v in f.enum_type.values}.items() <= {
                    v.name: v.number for v in t.enum_type.values}.items()
            if f.message_type is not None:
                compare(f.message_type, t.message_type)

    compare(ours, model_config_pb2.ModelConfig.DESCRIPTOR)
    assert len(seen) == 12  # ModelConfig, its map entry and the ten messages below it


# --- the batching rule ------------------------------------------------------------------------------------------

NOT_INVARIANT = {"measured": True, "batchable": True, "invariant": False, "rows": 64, "max_abs_diff": 0.31,
                 "relative_diff": 0.5, "changed_predictions": 9, "relative_tolerance": 1e-5,
                 "batch_dependent_ops": ["DynamicQuantizeLinear"]}
INVARIANT = {**NOT_INVARIANT, "invariant": True, "max_abs_diff": 0.0, "relative_diff": 0.0,
             "changed_predictions": 0, "batch_dependent_ops": []}
SETTINGS = [{}, {"enabled": False}, {"enabled": True}, {"enabled": True, "allow_cross_request_variance": True},
            {"allow_cross_request_variance": True}]


@pytest.mark.parametrize("setting, figures, dynamic, error", [
    ({}, INVARIANT, True, None),
    ({}, NOT_INVARIANT, False, None),
    ({"enabled": False}, INVARIANT, False, None),
    ({"enabled": True}, NOT_INVARIANT, False, "dynamic_batching.enabled"),
    ({"enabled": True, "allow_cross_request_variance": True}, NOT_INVARIANT, True, None),
    ({"allow_cross_request_variance": True}, NOT_INVARIANT, False, None),
])
def test_dynamic_batching_follows_the_measurement(tmp_path: Path, setting: dict[str, Any],
                                                  figures: dict[str, Any], dynamic: bool, error: str | None) -> None:
    from deployc.errors import SpecFieldError

    spec, ctx, _ = case("invariant-labels", tmp_path)
    spec = DeploySpec.model_validate({**spec.model_dump(exclude_none=True, exclude={"targets"}),
                                      "targets": {"triton": {"dynamic_batching": setting}}})
    ctx = replace(ctx, spec=spec, step_results={INVARIANCE: figures})
    if error:
        with pytest.raises(SpecFieldError) as e:
            get_target("triton").emit(ctx)
        assert ".".join(map(str, e.value.loc)) == f"targets.triton.{error}"
        assert e.value.message.startswith("true, but the shipped model is not batch-invariant")
        assert FIELDS.opt_in in e.value.message and "docs/triton.md" in e.value.message
        return
    files = get_target("triton").emit(ctx)
    assert parse(files[f"{REPO}/digits/config.pbtxt"]).HasField("dynamic_batching") is dynamic
    assert decide(spec, ctx.step_results).enabled is dynamic  # what a build report would say


@pytest.mark.parametrize("triton, loc, message", [
    ({"max_batch_size": 8}, "max_batch_size", "8, but the model has no free first axis"),
    ({"dynamic_batching": {"enabled": True}}, "dynamic_batching.enabled", "true, but the model has no free"),
])
def test_an_unbatched_model_refuses_batch_settings(tmp_path: Path, triton: dict[str, Any], loc: str,
                                                   message: str) -> None:
    from deployc.errors import SpecFieldError

    spec, ctx, _ = case("fixed-shape", tmp_path)
    spec = DeploySpec.model_validate({**spec.model_dump(exclude_none=True, exclude={"targets"}),
                                      "targets": {"triton": triton}})
    with pytest.raises(SpecFieldError) as e:
        get_target("triton").emit(replace(ctx, spec=spec))
    assert ".".join(map(str, e.value.loc)) == f"targets.triton.{loc}" and e.value.message.startswith(message)


# --- spec errors, located -----------------------------------------------------------------------------------------

BAD = """\
apiVersion: deployc/v1
name: mlp
model: {path: model.onnx}
targets:
  triton:
    model_name: ..
    max_batch_size: 16
    dynamic_batching:
      preferred_batch_size: [4, 32, 8]
    version_policy:
      policy: all
      num_versions: 2
"""


def test_validate_locates_each_problem(tmp_path: Path) -> None:
    make_classifier(tmp_path / "model.onnx")
    (tmp_path / "deploy.yaml").write_text(BAD)
    with pytest.raises(SpecError) as e:
        validate(tmp_path / "deploy.yaml")
    got = [(p.line, p.column, p.path, p.message) for p in e.value.problems]
    assert [g[:3] for g in got] == [(6, 5, "targets.triton.model_name"),  # a key's problem: at the key
                                    (9, 33, "targets.triton.dynamic_batching.preferred_batch_size[1]"),
                                    (9, 37, "targets.triton.dynamic_batching.preferred_batch_size[2]"),
                                    (12, 7, "targets.triton.version_policy.num_versions")]
    assert got[0][3].startswith("'..' is no folder name")
    assert got[1][3] == "32 is above max_batch_size (16)"
    assert got[2][3] == "8: preferred_batch_size must increase"
    assert got[3][3] == "num_versions applies to policy latest, not all"


@pytest.mark.parametrize("triton, path, message", [
    ("{model_name: a/b}", "targets.triton.model_name", "use letters, digits"),
    ("{max_batch_size: 0, dynamic_batching: {enabled: true}}", "targets.triton.dynamic_batching.enabled",
     "true needs a batch axis, but max_batch_size is 0"),
    ("{version: 2, version_policy: {policy: specific, versions: [1]}}", "targets.triton.version_policy.versions",
     "[1] leaves out version 2"),
    ("{version_policy: {versions: [1]}}", "targets.triton.version_policy.versions", "versions applies to policy "
     "specific"),
    ("{instance_group: {count: 0}}", "targets.triton.instance_group.count", "greater than or equal to 1"),
    ("{instance_group: {kind: tpu}}", "targets.triton.instance_group.kind", "'cpu' or 'gpu'"),
    ("{version: 0}", "targets.triton.version", "greater than or equal to 1"),
    ("{threads: {intra: 2}}", "targets.triton.threads.intra", ""),
    ("{image: 'x; rm -rf /'}", "targets.triton.image", "pattern"),
])
def test_validate_refuses_bad_settings(tmp_path: Path, triton: str, path: str, message: str) -> None:
    make_classifier(tmp_path / "model.onnx")
    text = f"apiVersion: deployc/v1\nname: mlp\nmodel: {{path: model.onnx}}\ntargets:\n  triton: {triton}\n"
    (tmp_path / "deploy.yaml").write_text(text)
    with pytest.raises(SpecError) as e:
        validate(tmp_path / "deploy.yaml")
    (problem,) = e.value.problems
    assert problem.path == path and message in problem.message and problem.line == 5


def test_the_target_module_loads_without_heavy_libraries() -> None:
    code = ("import sys; import deployc.schema.spec, deployc.targets.triton; "
            "print([m for m in ('tensorflow', 'onnx', 'onnxruntime', 'tritonclient', 'google.protobuf') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- real builds ------------------------------------------------------------------------------------------------

DIMS = (16, 64, 64, 5)
LABELS = ["zero", "one", "two", "three", "four"]
SPEC = """\
apiVersion: deployc/v1
name: mlp
version: 1.0.0
model: {path: model.onnx, labels: labels.txt}
data:
  eval: {path: eval.npz, x: x}
OPTIMIZE
measure: {min_seconds: 0.05}
targets:
TARGETS
"""


def _project(root: Path, name: str, optimize: str, targets: str) -> Path:
    d = root / name
    d.mkdir()
    make_mlp(d / "model.onnx", dims=DIMS, seed=1)
    np.savez(d / "eval.npz", x=np.random.default_rng(7).standard_normal((64, DIMS[0])).astype(np.float32))
    (d / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (d / "deploy.yaml").write_text(SPEC.replace("OPTIMIZE", optimize).replace("TARGETS", targets))
    return d / "deploy.yaml"


FP32_TARGETS = "  local: {}\n  triton: {instance_group: {count: 2}, threads: {intra_op: 2}}"
INT8 = "optimize:\n  - quantize: {mode: int8-dynamic}"


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("triton")
    cache = root / "cache"
    return {"fp32": build(_project(root, "fp32", "", FP32_TARGETS), root / "fp32-out", cache).out_dir,
            "int8": build(_project(root, "int8", INT8, "  triton: {}"), root / "int8-out", cache).out_dir,
            "cache": cache, "root": root}


def _config(out: Path) -> Any:
    return parse((out / REPO / "mlp" / "config.pbtxt").read_bytes())


def test_build_writes_the_shipped_model_and_a_config_for_it(builds: dict[str, Path]) -> None:
    out = builds["fp32"]
    model = (out / REPO / "mlp" / "1" / "model.onnx").read_bytes()
    assert model == (out / "local" / "model.onnx").read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    assert manifest[f"{REPO}/mlp/1/model.onnx"]["sha256"] == hashlib.sha256(model).hexdigest()
    m = _config(out)
    assert (m.name, m.backend, m.max_batch_size) == ("mlp", "onnxruntime", 32)
    assert [(t.name, dtype_name(t.data_type), list(t.dims)) for t in m.input] == [("x", "TYPE_FP32", [16])]
    assert [(t.name, list(t.dims), t.label_filename) for t in m.output] == [("probabilities", [5], "labels.txt")]
    assert (out / REPO / "mlp" / "labels.txt").read_text().splitlines() == LABELS
    assert m.HasField("dynamic_batching")  # fp32: measured batch-invariant
    assert [(g.count, g.kind) for g in m.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert m.parameters["intra_op_thread_count"].string_value == "2" and "inter_op_thread_count" not in m.parameters
    serving = json.loads((out / "local" / "serving.json").read_text())
    assert serving["batching"]["enabled"] is True  # the same measurement decides both
    readme = (out / "triton" / "README.md").read_text()
    assert '-v "$PWD/build/mlp/triton/model_repository:/models"' in readme
    assert "nvcr.io/nvidia/tritonserver:" in readme and "Dynamic batching (Triton merging" in readme


def test_an_int8_dynamic_model_gets_no_dynamic_batcher(builds: dict[str, Path]) -> None:
    out = builds["int8"]
    m = _config(out)
    assert not m.HasField("dynamic_batching") and m.max_batch_size == 32
    model = out / REPO / "mlp" / "1" / "model.onnx"
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    assert manifest[f"{REPO}/mlp/1/model.onnx"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    from deployc.ml.invariance import scan

    assert scan(model) == ["DynamicQuantizeLinear"]
    assert "off (auto): not batch-invariant" in (out / "triton" / "README.md").read_text()
    report = json.loads((out / "report.json").read_text())
    assert report["batching"] is None  # no serving.json in this build: nothing to say about deployc serve
    assert report["target_batching"]["triton"]["enabled"] is False
    assert report["target_batching"]["triton"]["reason"].startswith("off (auto): not batch-invariant")
    assert "Cross-request batching in `triton`'s server: off (auto)" in (out / "report.md").read_text()


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_onnxruntime_runs_the_model_through_the_configs_inputs(builds: dict[str, Path], which: str) -> None:
    """A batch shaped as config.pbtxt declares ([batch] + dims, -1 as 2) runs, and each output has its dims."""
    import onnxruntime as ort

    out = builds[which]
    m = _config(out)
    sess = ort.InferenceSession(str(out / REPO / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {t.name: rng.standard_normal([3, *[2 if d == -1 else d for d in t.dims]]).astype(
        NUMPY[dtype_name(t.data_type)]) for t in m.input}
    results = sess.run([t.name for t in m.output], feed)
    for t, r in zip(m.output, results, strict=True):
        assert r.shape[0] == 3 and all(d in (-1, n) for d, n in zip(t.dims, r.shape[1:], strict=True))
        assert r.dtype == NUMPY[dtype_name(t.data_type)]


def test_enabled_true_on_a_non_invariant_model_is_located(builds: dict[str, Path]) -> None:
    root = builds["root"]
    targets = "  triton:\n    dynamic_batching:\n      enabled: true"
    spec = _project(root, "forced", INT8, targets)
    with pytest.raises(SpecError) as e:
        build(spec, root / "forced-out", builds["cache"])  # every step cached by the int8 build
    (problem,) = e.value.problems
    line = next(i for i, text in enumerate(spec.read_text().splitlines(), 1) if "enabled: true" in text)
    assert (problem.path, problem.line, problem.column) == ("targets.triton.dynamic_batching.enabled", line, 16)
    assert problem.message.startswith("true, but the shipped model is not batch-invariant")
    assert FIELDS.opt_in in problem.message and not (root / "forced-out").exists()
    spec.write_text(spec.read_text() + "\n      allow_cross_request_variance: true\n")
    assert _config(build(spec, root / "forced-out", builds["cache"]).out_dir).HasField("dynamic_batching")


def test_a_model_without_a_batch_axis_gets_max_batch_size_0(tmp_path: Path) -> None:
    make_classifier(tmp_path / "model.onnx", batch_axis=False)
    (tmp_path / "deploy.yaml").write_text("apiVersion: deployc/v1\nname: iris\nmodel: {path: model.onnx}\n"
                                          "targets:\n  triton: {}\n")
    out = build(tmp_path / "deploy.yaml", tmp_path / "out", tmp_path / "cache").out_dir
    m = _config_of(out, "iris")
    assert m.max_batch_size == 0 and not m.HasField("dynamic_batching")
    assert [list(t.dims) for t in (*m.input, *m.output)] == [[1, 4], [1, 3]]


def _config_of(out: Path, name: str) -> Any:
    return parse((out / REPO / name / "config.pbtxt").read_bytes())


@pytest.mark.parametrize("targets, planned", [
    ("  triton: {}", 1),
    ("  triton: {}\n  local: {}", 1),
    ("  triton: {dynamic_batching: {enabled: false}}", 0),
    ("  triton: {max_batch_size: 0}", 0),
    ("  triton: {}\n  kserve: {storage_uri: 's3://models/mlp', image: 'ghcr.io/acme/deployc-serve:0.1.0'}", 1),
])
def test_the_invariance_step_is_planned_once_with_one_key(tmp_path: Path, targets: str, planned: int) -> None:
    spec = _project(tmp_path, "p", INT8, targets)
    triton_plan = plan(spec, tmp_path / "cache").plan
    ids = [s.id for s in triton_plan.steps]
    assert ids.count(INVARIANCE) == planned
    local = _project(tmp_path, "local", INT8, "  local: {}")
    local_plan = plan(local, tmp_path / "cache").plan
    if planned:
        assert triton_plan.keys[INVARIANCE] == local_plan.keys[INVARIANCE]  # one cached measurement for both targets


@pytest.mark.slow
def test_the_example_builds_an_int8_repository_without_a_dynamic_batcher(trained_digits: Path, session_cache: Path,
                                                                          tmp_path: Path) -> None:
    """examples/triton/deploy.yaml on the trained digits model: what its README says the build writes."""
    project = example_project(trained_digits, tmp_path / "triton", "triton")
    out = build(project / "deploy.yaml", tmp_path / "out", session_cache).out_dir
    m = _config_of(out, "digits")
    assert (m.backend, m.max_batch_size, not m.HasField("dynamic_batching")) == ("onnxruntime", 32, True)
    assert [(t.name, list(t.dims)) for t in m.input] == [("pixels", [64])]
    assert [t.label_filename for t in m.output] == ["labels.txt"]
    assert [g.count for g in m.instance_group] == [2]
    assert (out / REPO / "digits" / "1" / "model.onnx").is_file()
    assert "Cross-request batching in `triton`'s server: off (auto)" in (out / "report.md").read_text()
