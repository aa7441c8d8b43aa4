"""`targets.tflite`: model.tflite converted from the Keras model, verified with the LiteRT interpreter on data.eval.

Two cached steps: `tflite:convert` (for `auto`, it converts every candidate, evaluates each on data.eval and
keeps the smallest that passes the gates) and `tflite:verify` (accuracy, agreement, error, size and latency of
the kept model.tflite). Both judge the prediction output (model.prediction; unset: the model's first output).
The emitter reads their outputs; it never runs a model.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

import deployc
from deployc import conventions as c
from deployc.compiler.steps import EXPLAIN, REFERENCE, Step, StepContext, data_files
from deployc.errors import GateError
from deployc.render import dump_json, render_template
from deployc.schema.base import Located, SpecModel
from deployc.targets.base import EmitContext, Target

if TYPE_CHECKING:
    from deployc.compiler.resolved import GateLimits
    from deployc.schema.spec import DeploySpec


# Config: `targets.tflite` in deploy.yaml.

class Normalization(SpecModel):
    mean: list[float] = Field(default_factory=list, description="Subtracted from the raw input, per channel.")
    std: list[float] = Field(default_factory=list, description="Divides the centred input, per channel.")

    @model_validator(mode="after")
    def _std(self) -> Normalization:
        if any(s == 0 for s in self.std):
            raise ValueError("std values must not be 0")
        if self.mean and self.std and len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise ValueError("mean and std need the same number of channels (or one value for all)")
        return self


class TFLiteConfig(SpecModel):
    quantization: Literal["none", "float16", "dynamic", "int8", "auto"] = Field(
        "dynamic", description="none (float32), float16, dynamic range, int8 (full integer; needs "
        "data.calibration), or auto (smallest that passes the gates).")
    io_type: Literal["float32", "int8", "uint8"] = Field("float32", description="Input/output type for int8 models.")
    per_channel: bool = Field(True, description="dynamic / int8: one weight scale per output channel (more "
                              "accurate) or, when false, one per tensor wherever the converter allows it "
                              "(convolutions and biases; smaller files).")
    allow_select_tf_ops: bool = Field(False, description="Allow TensorFlow ops the device runtime must include.")
    max_size_kb: float | None = Field(None, gt=0, description="Fail the build when model.tflite is larger.")
    threads: int = Field(1, ge=1, le=64, description="Interpreter threads for the measurement.")
    device: Literal["generic", "microcontroller"] | None = Field(
        None, description="microcontroller: full int8 with int8 I/O and builtins only.")
    normalization: Normalization | None = Field(None, description="What the device must do to raw input.")

    @model_validator(mode="after")
    def _consistent(self) -> TFLiteConfig:
        if self.io_type != "float32" and self.quantization not in ("int8", "auto"):
            raise ValueError(f"io_type {self.io_type} needs quantization int8 (or auto)")
        if self.device == "microcontroller":
            if "quantization" in self.model_fields_set and self.quantization not in ("int8", "auto"):
                raise ValueError(f"device microcontroller needs quantization int8, not {self.quantization}")
            if "io_type" in self.model_fields_set and self.io_type == "float32":
                raise ValueError("device microcontroller needs io_type int8 or uint8")
            if self.allow_select_tf_ops:
                raise ValueError("device microcontroller runs builtin ops only: remove allow_select_tf_ops")
        return self


# The target.

CONVERT = "tflite:convert"
VERIFY = "tflite:verify"
MODEL = "model.tflite"
METADATA_VERSION = 1
LIBS = ("tensorflow", "ai-edge-litert")


def _gate_failures(gates: GateLimits, cfg: TFLiteConfig, reference: dict[str, Any], figures: dict[str, Any]
                   ) -> list[str]:
    """The gates a candidate fails (latency is measured only on the kept model, so it is not a criterion)."""
    from deployc.compiler.gates import failures

    out = [str(c) for c in failures(gates, reference, figures) if c.gate != "max_latency_p99_ms"]
    size_kb = figures["size_bytes"] / 1024
    if cfg.max_size_kb is not None and size_kb > cfg.max_size_kb:
        out.append(f"max_size_kb: limit {cfg.max_size_kb:g}, measured {size_kb:g}")
    return out


def _check_budget(cfg: TFLiteConfig, size: int, what: str) -> None:
    if cfg.max_size_kb is not None and size > cfg.max_size_kb * 1024:
        raise GateError(f"targets.tflite.max_size_kb: {what} is {size / 1024:.1f} KiB ({size} bytes), over the "
                        f"limit of {cfg.max_size_kb:g} KiB")


def _source(ctx: StepContext, dep: str) -> Path:
    out = ctx.deps[dep]
    return Path(out.dir) / str(out.result["model"])


def _calibration(ctx: StepContext) -> Any:
    return ctx.data("calibration")[0] if "calibration" in ctx.resolved.data else None


def _prediction(ctx: StepContext, info: dict[str, Any]) -> str:
    """The output the gates judge: model.prediction, else the converted model's first output in the Keras
    model's own order (the reference's first output; the .tflite file keeps the converter's order)."""
    return ctx.resolved.prediction or str(info["outputs"][0]["name"])


def _figures(ctx: StepContext, path: Path, info: dict[str, Any], x: Any, y: Any, threads: int) -> dict[str, Any]:
    """Agreement, error and accuracy of model.tflite's prediction output against the reference's on data.eval."""
    import numpy as np

    from deployc.ml.evaluate import compare
    from deployc.ml.tflite import predict_tflite

    reference = np.load(Path(ctx.deps[REFERENCE].dir) / "predictions.npy", allow_pickle=False)
    pred = predict_tflite(path, x, threads, output=_prediction(ctx, info))
    return compare(reference, pred, y, ctx.resolved.task, ctx.resolved.threshold)


def run_convert(ctx: StepContext, cfg: TFLiteConfig, source_step: str, inputs: list[Any] | None) -> dict[str, Any]:
    """`inputs`: model.inputs as the spec declares them (None: the model's own signature)."""
    from deployc.ml.tflite import candidate_modes, convert

    src, calib = _source(ctx, source_step), _calibration(ctx)
    modes = candidate_modes(cfg)
    if len(modes) == 1:
        ctx.log(f"converting to TFLite ({modes[0]})")
        info = convert(src, ctx.out_dir / MODEL, cfg, calib, mode=modes[0], inputs=inputs)
        _check_budget(cfg, info["size_bytes"], MODEL)
        return {"model": MODEL, **info, "candidates": []}
    return _auto(ctx, cfg, src, calib, inputs, modes)


def _auto(ctx: StepContext, cfg: TFLiteConfig, src: Path, calib: Any, inputs: Any, modes: list[str]
          ) -> dict[str, Any]:
    """Convert and evaluate every candidate; keep the smallest that passes the gates and the size budget."""
    from deployc.ml.evaluate import sizes
    from deployc.ml.tflite import convert

    x, y = ctx.data("eval")
    ref_eval = ctx.deps[REFERENCE].result.get("evaluation", {})
    cand_dir = ctx.out_dir / "candidates"
    rows: list[dict[str, Any]] = []
    infos: dict[str, dict[str, Any]] = {}
    for mode in modes:
        if mode == "int8" and calib is None:
            rows.append({"mode": mode, "passed": False, "failed": ["skipped: int8 needs data.calibration"]})
            continue
        path = cand_dir / f"{mode}.tflite"
        ctx.log(f"auto: converting and evaluating {mode}")
        infos[mode] = convert(src, path, cfg, calib, mode=mode, inputs=inputs)
        figures = _figures(ctx, path, infos[mode], x, y, cfg.threads)
        figures.update(sizes(path))
        failed = _gate_failures(ctx.resolved.gates, cfg, ref_eval, figures)
        rows.append({"mode": mode, **figures, "passed": not failed, "failed": failed})
    passing = sorted((r for r in rows if r["passed"]), key=lambda r: (r["size_bytes"], modes.index(r["mode"])))
    if not passing:
        table = "\n".join(f"  {r['mode']}: " + "; ".join(r["failed"]) for r in rows)
        raise GateError("targets.tflite: quantization auto: no candidate passes the gates", table)
    chosen = passing[0]["mode"]
    shutil.copyfile(cand_dir / f"{chosen}.tflite", ctx.out_dir / MODEL)
    shutil.rmtree(cand_dir)
    return {"model": MODEL, **infos[chosen], "candidates": rows}


def run_verify(ctx: StepContext, cfg: TFLiteConfig) -> dict[str, Any]:
    from deployc.ml.evaluate import sizes
    from deployc.ml.tflite import measure_tflite

    conv = ctx.deps[CONVERT]
    path = Path(conv.dir) / MODEL
    figures: dict[str, Any] = dict(sizes(path))
    warnings = list(conv.result.get("warnings", []))
    result: dict[str, Any] = {"artifact": "tflite", "mode": conv.result["mode"], "io_type": conv.result["io_type"],
                              "evaluation": figures, "warnings": warnings, "candidates": conv.result["candidates"]}
    if conv.result.get("select_tf_ops"):
        warnings.append("not run: this machine's LiteRT runtime has no Select TF ops (Flex) delegate, so accuracy, "
                        "agreement and latency are not measured")
        result["verified"] = False
        return result
    if REFERENCE in ctx.deps:
        x, y = ctx.data("eval")
        ctx.log("verifying model.tflite on data.eval")
        figures.update(_figures(ctx, path, conv.result, x, y, cfg.threads))
        result["reference"] = ctx.deps[REFERENCE].result.get("evaluation", {})
        if EXPLAIN in ctx.deps:  # `explain:`: model.tflite's reasons against the original model's
            from deployc.compiler import explaining
            from deployc.ml.tflite import predict_tflite

            ctx.log("explaining model.tflite")
            out = _prediction(ctx, conv.result)
            names = [t["name"] for t in ctx.deps[EXPLAIN].result["inputs"]]
            found = explaining.artifact(ctx, explaining.by_position(
                lambda feed: predict_tflite(path, feed, cfg.threads, output=out), names))
            figures.update(found["figures"])
            result["explanation"] = found["summary"]
    else:
        x = _calibration(ctx)  # None: zeros of each input's shape and dtype
    figures.update(measure_tflite(path, x, cfg.threads, ctx.resolved.measure.min_seconds,
                                  output=_prediction(ctx, conv.result)))
    result["verified"] = REFERENCE in ctx.deps
    _check_budget(cfg, figures["size_bytes"], MODEL)
    return result


class TFLiteTarget(Target):
    model_formats = ("onnx", "openvino")  # converts the Keras-stage model; never reads the shipped one
    name = "tflite"
    config_model = TFLiteConfig
    description = "A LiteRT bundle for devices."

    def check(self, spec: DeploySpec) -> list[Located]:
        cfg: TFLiteConfig = self.config(spec)
        where = ("targets", "tflite")
        problems: list[Located] = []
        if (cfg.quantization == "int8" or cfg.device == "microcontroller") and spec.data.calibration is None:
            problems.append(((*where, "quantization"), "int8 needs data.calibration"))
        if _is_auto(cfg) and spec.data.eval is None:
            problems.append(((*where, "quantization"), "quantization auto evaluates candidates on data.eval: "
                             "set it"))
        if spec.model.resolved_format() == "onnx":
            problems.append((where, "tflite needs a Keras or SavedModel model, not ONNX"))
        return problems

    def steps(self, spec: DeploySpec, spec_dir: Path, final_model_step: str, keras_model_step: str | None
              ) -> list[Step]:
        cfg: TFLiteConfig = self.config(spec)
        assert keras_model_step is not None, "check() refuses an ONNX model"
        auto = _is_auto(cfg)
        has_eval = spec.data.eval is not None
        explained = has_eval and spec.explain is not None
        declared = list(spec.model.inputs) if spec.model.inputs else None
        base = {"config": cfg.model_dump(mode="json"), "task": spec.model.task,
                "prediction": spec.model.prediction, "threshold": spec.model.threshold,
                "inputs": [t.model_dump(mode="json") for t in declared or []],
                "data": spec.data.model_dump(mode="json")}
        convert_params = dict(base, gates=spec.gates.model_dump(mode="json")) if auto else base
        convert = Step(
            id=CONVERT, description="convert the Keras model to TFLite" + (" (auto: every mode)" if auto else ""),
            run=lambda ctx: run_convert(ctx, cfg, keras_model_step, declared),
            deps=(keras_model_step,) + ((REFERENCE,) if auto else ()),
            params=convert_params, input_files=data_files(spec, spec_dir, "calibration", *(["eval"] if auto else [])),
            libs=LIBS)
        verify = Step(
            id=VERIFY, description="run model.tflite with LiteRT on data.eval; measure size and latency",
            run=lambda ctx: run_verify(ctx, cfg),
            deps=(CONVERT,) + ((REFERENCE,) if has_eval else ()) + ((EXPLAIN,) if explained else ()),
            params=dict(base, measure=spec.measure.model_dump(mode="json"),
                        **({"explain": spec.explain.model_dump(mode="json", exclude={"serve", "images"})}
                           if explained and spec.explain else {})),
            input_files=data_files(spec, spec_dir, "eval", "calibration"), libs=LIBS, gated=True)
        return [convert, verify]

    def emit(self, ctx: EmitContext) -> dict[str, bytes]:
        cfg: TFLiteConfig = self.config(ctx.spec)
        conv = ctx.step_results[CONVERT]
        model = (ctx.step_outputs[CONVERT] / MODEL).read_bytes()
        meta = metadata(ctx, cfg, conv, ctx.step_results.get(VERIFY, {}), hashlib.sha256(model).hexdigest())
        files = {MODEL: model, "metadata.json": dump_json(meta),
                 "README.md": readme(meta, ctx.spec_file).encode()}
        if ctx.labels:
            files["labels.txt"] = ("\n".join(ctx.labels) + "\n").encode()
        return {f"{c.TFLITE_DIR}/{k}": v for k, v in files.items()}


def _is_auto(cfg: TFLiteConfig) -> bool:
    """quantization auto converts and evaluates every candidate (a microcontroller takes int8 only)."""
    return cfg.quantization == "auto" and cfg.device != "microcontroller"


def metadata(ctx: EmitContext, cfg: TFLiteConfig, conv: dict[str, Any], verify: dict[str, Any], sha256: str
             ) -> dict[str, Any]:
    """What the device team needs: every input and output with its dtype, shape and quantization (signature
    names; outputs in the model's order), normalisation, hash, measured figures; `prediction` names the output
    the gates judged when there are several."""
    norm = cfg.normalization
    outputs = [_tensor(t) for t in conv["outputs"]]
    several = {"prediction": ctx.spec.model.prediction or outputs[0]["name"]} if len(outputs) > 1 else {}
    return {
        "format_version": METADATA_VERSION,
        "name": ctx.spec.name,
        "version": ctx.spec.version,
        "task": ctx.spec.model.task,
        "deployc_version": deployc.__version__,
        "model": {"path": MODEL, "sha256": sha256, "size_bytes": conv["size_bytes"], "quantization": conv["mode"],
                  "io_type": conv["io_type"], "signature": "serving_default", "ops": conv["ops"],
                  "select_tf_ops": conv["select_tf_ops"], "tensor_types": conv["tensor_types"],
                  "device": cfg.device or "generic"},
        "inputs": [_tensor(t) for t in conv["inputs"]],
        "outputs": outputs,
        **several,
        "normalization": {"mean": list(norm.mean), "std": list(norm.std)} if norm else None,
        "labels": "labels.txt" if ctx.labels else None,
        "evaluation": verify.get("evaluation", {}),
        "reference": verify.get("reference", {}),
        "verified": verify.get("verified", False),
        "candidates": conv.get("candidates", []),
        "warnings": verify.get("warnings", conv.get("warnings", [])),
    }


def _tensor(t: dict[str, Any]) -> dict[str, Any]:
    return {k: t[k] for k in ("name", "tensor", "index", "dtype", "shape", "quantization")}


def readme(meta: dict[str, Any], spec_file: str) -> str:
    """The device team's README; every value enters the template through `tojson` (no Markdown injection). A
    model of several inputs or outputs gets every one of them, fed and read by signature name
    (templates/tflite/io-many.md.j2), in place of the one-input sections (io-one.md.j2)."""
    prediction = meta.get("prediction", meta["outputs"][0]["name"])
    inp = meta["inputs"][0]
    out = next((t for t in meta["outputs"] if t["name"] == prediction), meta["outputs"][0])
    figures = {k: v for k, v in meta["evaluation"].items() if isinstance(v, (int, float))}
    many = len(meta["inputs"]) > 1 or len(meta["outputs"]) > 1
    return render_template(
        "tflite", "README.md.j2", header=c.GENERATED_HEADER.format(spec=spec_file),
        meta=meta, input=inp, output=out, figures=figures, labels=meta["labels"] is not None,
        ref_accuracy=meta["reference"].get("accuracy"),
        candidates=[r for r in meta["candidates"] if "size_bytes" in r], many=many,
        **(_many_values(meta, prediction) if many else {}))


def _many_values(meta: dict[str, Any], prediction: str) -> dict[str, Any]:
    """What io-many.md.j2 shows: every tensor, which inputs are ids and which are quantized, their scales."""
    ins, outs = meta["inputs"], meta["outputs"]

    def scales(tensors: list[dict[str, Any]]) -> dict[str, list[Any]]:
        """[scale, zero point] of the integer tensors that stand for real values (not ids)."""
        return {t["name"]: [t["quantization"]["scale"], t["quantization"]["zero_point"]] for t in tensors
                if t["quantization"] and t["quantization"]["scale"] and not t["dtype"].startswith("float")}

    quantized = [t for t in ins if t["name"] in scales(ins)]
    real = [t["name"] for t in ins if t["dtype"].startswith("float") or t in quantized]

    def shown(t: dict[str, Any]) -> dict[str, Any]:
        return {k: t[k] for k in ("name", "dtype", "shape", "quantization")}

    return {"inputs": [shown(t) for t in ins], "outputs": [shown(t) for t in outs], "prediction": prediction,
            "ids": [t["name"] for t in ins if t["name"] not in real], "quantized": [t["name"] for t in quantized],
            "real": real, "quantized_outputs": [t["name"] for t in outs if t["name"] in scales(outs)],
            "dtypes": {t["name"]: t["dtype"] for t in ins}, "input_scales": scales(ins),
            "output_scales": scales(outs)}
