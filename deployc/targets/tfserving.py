"""`targets.tfserving`: the final Keras-stage model as a versioned SavedModel, plus the model server's config.

Two cached steps: `tfserving:export` (Keras -> SavedModel whose serving_default signature returns `output`; a
SavedModel input is copied as it is) and `tfserving:verify` (the SavedModel loaded back with TensorFlow and run
on data.eval against the reference predictions). The emitter copies the exported files into
`tfserving/<name>/<version>/` and renders models.config and batching_parameters.txt (text protobuf), each parsed
back before it is returned.
"""
from __future__ import annotations

import itertools
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import Field, model_validator

from deployc import conventions as c
from deployc.compiler.steps import EXPLAIN, REFERENCE, Step, StepContext, data_files
from deployc.errors import InputError
from deployc.render import render_template
from deployc.schema.base import Located, SpecModel
from deployc.targets.base import EmitContext, Target
from deployc.targets.tfserving_proto import check_batching_parameters, check_models_config

if TYPE_CHECKING:
    from deployc.schema.spec import DeploySpec


# Config: `targets.tfserving` in deploy.yaml.

MAX_VERSION = 2**63 - 1  # version folders are int64 in TensorFlow Serving


class TFServingBatching(SpecModel):
    enabled: bool = Field(False, description="Write batching_parameters.txt (start the server with "
                          "--enable_batching --batching_parameters_file=...).")
    max_batch_size: int = Field(32, ge=1, le=65536, description="Largest batch the server forms.")
    batch_timeout_micros: int = Field(1000, ge=0, le=10_000_000, description="Longest a request waits for "
                                      "companions before a smaller batch runs.")
    num_batch_threads: int = Field(4, ge=1, le=256, description="Threads that run batches (about the cores).")
    max_enqueued_batches: int = Field(100, ge=1, le=1_000_000, description="Queue length in batches; past it "
                                      "requests are refused (UNAVAILABLE) instead of waiting.")
    allowed_batch_sizes: list[int] = Field(default_factory=list, max_length=32, description="Pad batches up to "
                                           "one of these sizes (increasing; the last equals max_batch_size).")

    @model_validator(mode="after")
    def _sizes(self) -> TFServingBatching:
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in itertools.pairwise(sizes)) or sizes[0] < 1:
                raise ValueError("allowed_batch_sizes must be positive and strictly increasing")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(f"the last of allowed_batch_sizes ({sizes[-1]}) must equal max_batch_size "
                                 f"({self.max_batch_size})")
        return self


class TFServingConfig(SpecModel):
    model_version: int | None = Field(None, ge=1, le=MAX_VERSION, description="The version folder number "
                                      "(default: from the spec version, MAJOR*1000000 + MINOR*1000 + PATCH).")
    version_policy: Literal["specific", "latest"] = Field("specific", description="specific: serve exactly "
                                                          "this version; latest: the highest version folder found.")
    base_path: str = Field("/models", pattern=r"^/[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$|^/$", max_length=512,
                           description="Folder inside the server holding the model folder (the model's "
                           "base_path is <base_path>/<name>).")
    batching: TFServingBatching = Field(default_factory=TFServingBatching, description="Server-side batching.")


# The target.

EXPORT = "tfserving:export"
VERIFY = "tfserving:verify"
TFSERVING_DIR = "tfserving"
SAVED_MODEL = "saved_model"
SIGNATURE = "serving_default"
LIBS = ("tensorflow", "keras", "numpy")
_SEMVER = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")


def version_number(spec: DeploySpec, cfg: TFServingConfig) -> int:
    """The version folder: model_version, or the spec version (an integer, or MAJOR*10^6 + MINOR*10^3 + PATCH,
    which keeps semantic-version order, so the `latest` policy serves the newest release)."""
    n = _version_number(spec.version, cfg)
    if n is None:
        raise InputError(f"targets.tfserving: {_no_version(spec.version)}")
    return n


def _version_number(v: str, cfg: TFServingConfig) -> int | None:
    if cfg.model_version is not None:
        return cfg.model_version
    if v.isdigit() and 1 <= int(v) <= MAX_VERSION:
        return int(v)
    m = _SEMVER.match(v)
    if m:
        major, minor, patch = (int(g) for g in m.groups())
        n = major * 1_000_000 + minor * 1_000 + patch
        if minor < 1000 and patch < 1000 and 1 <= n <= MAX_VERSION:
            return n
    return None


def _no_version(v: str) -> str:
    return (f"version {v!r} gives no version number (TensorFlow Serving needs a positive integer folder): "
            "set targets.tfserving.model_version")


def run_export(ctx: StepContext, source_step: str, inputs: list[Any] | None) -> dict[str, Any]:
    """`inputs`: model.inputs as the spec declares them (None: the model's own signature)."""
    out = ctx.deps[source_step]
    src, dst = Path(out.dir) / out.result["model"], ctx.out_dir / SAVED_MODEL
    order: list[str] = []  # the outputs in the model's order: its first is the one judged by default
    if out.result["format"] == "savedmodel":
        ctx.log("copying the SavedModel")
        shutil.copytree(src, dst)
    else:
        ctx.log("exporting the Keras model as a SavedModel")
        export_keras(src, dst, inputs, order)
    files = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file())
    if "saved_model.pb" not in files:
        raise InputError(f"{ctx.resolved.model_file}: the SavedModel has no saved_model.pb")
    return {"model": SAVED_MODEL, "format": "savedmodel", "files": files, "output_order": order}


def export_keras(src: Path, dst: Path, inputs: list[Any] | None, order: list[str] | None = None) -> None:
    """The serving_default SavedModel TF Serving loads (outputs named like the ONNX model's)."""
    from deployc.ml.convert import export_saved_model

    export_saved_model(src, dst, inputs, order)


def _signature(path: Path) -> tuple[Any, str, str, dict[str, Any]]:
    """(serving function, input name, output name, signature description) of a SavedModel."""
    from deployc.ml.convert import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    try:
        fn = tf.saved_model.load(str(path)).signatures[SIGNATURE]
    except Exception as exc:
        raise InputError(f"the exported SavedModel does not load with TensorFlow ({type(exc).__name__}: {exc})"
                         ) from None
    _, kwargs = fn.structured_input_signature
    outs = fn.structured_outputs

    def desc(specs: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"name": k, "dtype": s.dtype.name, "shape": [-1 if d is None else d for d in s.shape.as_list()]}
                for k, s in sorted(specs.items())]

    names, out_names = sorted(kwargs), sorted(outs)
    info = {"name": SIGNATURE, "inputs": desc(kwargs), "outputs": desc(outs)}
    return fn, names[0], ("output" if "output" in out_names else out_names[0]), info


def run_verify(ctx: StepContext) -> dict[str, Any]:
    """Load the SavedModel back and compare it with the reference on data.eval; measure batch-1 latency."""
    import numpy as np

    from deployc.ml.evaluate import compare, sizes

    path = Path(ctx.deps[EXPORT].dir) / SAVED_MODEL
    fn, _, out, info = _signature(path)  # imports TensorFlow quietly
    import tensorflow as tf

    from deployc.ml import feeds

    names = [t["name"] for t in info["inputs"]]
    dtypes = [tf.as_dtype(t["dtype"]).as_numpy_dtype for t in info["inputs"]]
    outs = [t["name"] for t in info["outputs"]]
    order = ctx.deps[EXPORT].result.get("output_order") or []
    if ctx.resolved.prediction is not None and ctx.resolved.prediction in outs:
        out = ctx.resolved.prediction
    elif order and order[0] in outs:  # the model's first output, as the reference step judges it
        out = order[0]

    def run(feed: dict[str, Any]) -> Any:
        return np.asarray(fn(**{k: tf.constant(v) for k, v in feed.items()})[out], dtype=np.float32)

    figures: dict[str, Any] = dict(sizes(path))
    result: dict[str, Any] = {"artifact": "tfserving", "signature": info, "evaluation": figures}
    if REFERENCE in ctx.deps:
        x, y = ctx.data("eval")
        feed = feeds.feed(x, names, dtypes, "the exported SavedModel")
        ref_out = ctx.deps[REFERENCE]
        reference = np.load(Path(ref_out.dir) / "predictions.npy", allow_pickle=False)
        ctx.log("verifying the SavedModel on data.eval")
        n = feeds.rows(feed)
        pred = np.concatenate([run({k: v[i:i + 256] for k, v in feed.items()}) for i in range(0, n, 256)])
        figures.update(compare(reference, pred, y, ctx.resolved.task, ctx.resolved.threshold))
        result["reference"] = ref_out.result.get("evaluation", {})
        one = {k: v[:1] for k, v in feed.items()}
        if EXPLAIN in ctx.deps:  # `explain:`: the SavedModel's reasons against the original model's
            from deployc.compiler import explaining

            ctx.log("explaining the SavedModel")
            ref_names = [t["name"] for t in ctx.deps[EXPLAIN].result["inputs"]]
            found = explaining.artifact(ctx, explaining.by_position(
                lambda part: run(feeds.feed(part, names, dtypes, "the exported SavedModel")), ref_names))
            figures.update(found["figures"])
            result["explanation"] = found["summary"]
    else:
        one = {t["name"]: np.zeros([1 if d == -1 else d for d in t["shape"]], dtype=dt)
               for t, dt in zip(info["inputs"], dtypes, strict=True)}
    from deployc.ml import measure  # one in-process call of the serving signature per timed prediction

    figures.update(measure.measure_latency(lambda: run(one), min_seconds=ctx.resolved.measure.min_seconds).figures())
    result["verified"] = REFERENCE in ctx.deps
    return result


class TFServingTarget(Target):
    model_formats = ("onnx", "openvino")  # exports the Keras-stage model; never reads the shipped one
    name = "tfserving"
    config_model = TFServingConfig
    description = "A versioned SavedModel for TensorFlow Serving."

    def check(self, spec: DeploySpec) -> list[Located]:
        cfg: TFServingConfig = self.config(spec)
        problems: list[Located] = []
        if spec.model.resolved_format() == "onnx":
            problems.append((("targets", "tfserving"), "tfserving needs a Keras or SavedModel model, not ONNX"))
        if _version_number(spec.version, cfg) is None:
            problems.append((("targets", "tfserving"), _no_version(spec.version)))
        return problems

    def steps(self, spec: DeploySpec, spec_dir: Path, final_model_step: str, keras_model_step: str | None
              ) -> list[Step]:
        assert keras_model_step is not None, "check() refuses an ONNX model"
        declared = list(spec.model.inputs) if spec.model.inputs else None
        inputs = [t.model_dump(mode="json") for t in declared or []]
        has_eval = spec.data.eval is not None
        explained = has_eval and spec.explain is not None
        export = Step(id=EXPORT, description="export the Keras model as a SavedModel for TensorFlow Serving",
                      run=lambda ctx: run_export(ctx, keras_model_step, declared), deps=(keras_model_step,),
                      params={"inputs": inputs}, libs=LIBS)
        files = data_files(spec, spec_dir, "eval")
        verify = Step(id=VERIFY, description="load the SavedModel with TensorFlow and run it on data.eval",
                      run=run_verify, deps=(EXPORT,) + ((REFERENCE,) if has_eval else ())
                      + ((EXPLAIN,) if explained else ()),
                      params={"data": spec.data.model_dump(mode="json"), "task": spec.model.task,
                              "measure": spec.measure.model_dump(mode="json"),
                              **({"explain": spec.explain.model_dump(mode="json", exclude={"serve", "images"})}
                                 if explained and spec.explain else {})},
                      input_files=files, libs=LIBS, gated=True)
        return [export, verify]

    def emit(self, ctx: EmitContext) -> dict[str, bytes]:
        cfg: TFServingConfig = self.config(ctx.spec)
        name, version = ctx.spec.name, version_number(ctx.spec, cfg)
        src = ctx.step_outputs[EXPORT] / SAVED_MODEL
        files = {f"{TFSERVING_DIR}/{name}/{version}/{rel}": (src / rel).read_bytes()
                 for rel in ctx.step_results[EXPORT]["files"]}
        files.update(config_files(ctx.spec, ctx.spec_file))
        return files


def config_files(spec: DeploySpec, spec_file: str) -> dict[str, bytes]:
    """models.config and (batching on) batching_parameters.txt, keyed by their bundle paths."""
    cfg = cast(TFServingConfig, spec.targets.tfserving)  # callers pass a spec with the tfserving target set
    header = c.GENERATED_HEADER.format(spec=spec_file)
    files = {f"{TFSERVING_DIR}/models.config":
             models_config(spec.name, cfg, version_number(spec, cfg), header).encode()}
    if cfg.batching.enabled:
        files[f"{TFSERVING_DIR}/batching_parameters.txt"] = batching_parameters(cfg, header).encode()
    return files


def _plain(value: str, what: str) -> str:
    """A JSON string literal is a valid text-proto string literal when it needs no escape beyond \\" and \\\\
    (text format has no \\u escapes): printable ASCII only. The schema's patterns already ensure it."""
    if not all(32 <= ord(ch) < 127 for ch in value):
        raise InputError(f"targets.tfserving: {what} {value!r} must be printable ASCII")
    return value


def models_config(name: str, cfg: TFServingConfig, version: int, header: str) -> str:
    base_path = f"{cfg.base_path.rstrip('/')}/{name}"
    text = render_template("tfserving", "models.config.j2", header=header, model_name=_plain(name, "name"),
                           base_path=_plain(base_path, "base_path"), policy=cfg.version_policy, version=version)
    check_models_config(text, name=name, base_path=base_path, policy=cfg.version_policy, version=version)
    return text


def batching_parameters(cfg: TFServingConfig, header: str) -> str:
    values = cfg.batching.model_dump(exclude={"enabled"})
    text = render_template("tfserving", "batching_parameters.txt.j2", header=header, batching=values)
    check_batching_parameters(text, values)
    return text
