"""What the built-in plan steps run. Heavy libraries are imported inside, so planning stays fast."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployc.compiler.inputs import copy_file, copy_tree
from deployc.compiler.steps import REFERENCE, SOURCE, StepContext, StepOutput

# The libraries whose versions enter the keys of the steps below (passes declare their own, `Pass.libs`)
TF_LIBS = ("tensorflow", "keras", "numpy")  # reading and running a Keras or SavedModel model
ONNX_LIBS = ("onnx", "onnxruntime", "numpy")  # reading and running an ONNX model
CONVERT_LIBS = (*TF_LIBS, "tf2onnx", "onnx")
EXPLAIN_LIBS = ("shap",)  # explanations (deployc.ml.explain); its other methods are numpy


def model_path(out: StepOutput) -> Path:
    """The model file (or folder) a model-producing step left in its output folder."""
    return Path(out.dir) / str(out.result["model"])


def source(ctx: StepContext) -> dict[str, Any]:
    """Copy the user's model into the cache, so later steps read a stable, content-addressed file."""
    src, fmt = ctx.resolved.model_path, ctx.resolved.format
    if fmt == "onnx":
        from deployc.ml.convert import copy_onnx

        info = copy_onnx(src, ctx.out_dir / "model.onnx")
        return {"model": "model.onnx", "format": "onnx", "inputs": info["inputs"], "outputs": info["outputs"]}
    if fmt == "savedmodel":
        copy_tree(ctx.spec_dir, src, ctx.out_dir / "saved_model")
        return {"model": "saved_model", "format": "savedmodel"}
    name = "model" + (src.suffix if src.suffix in (".keras", ".h5") else ".keras")
    copy_file(src, ctx.out_dir / name)
    return {"model": name, "format": "keras"}


def convert(ctx: StepContext, prev: str) -> dict[str, Any]:
    from deployc.ml.convert import keras_to_onnx, savedmodel_to_onnx

    out = ctx.deps[prev]
    dst = ctx.out_dir / "model.onnx"
    with ctx.progress.task("converting to ONNX (tf2onnx)"):  # no progress hook: its elapsed time
        if out.result["format"] == "savedmodel":
            info = savedmodel_to_onnx(model_path(out), dst)
        else:
            info = keras_to_onnx(model_path(out), dst, list(ctx.resolved.declared_inputs) or None)
    return {"model": "model.onnx", "format": "onnx", "inputs": info["inputs"], "outputs": info["outputs"],
            "opset": info["opset"]}


def reference(ctx: StepContext) -> dict[str, Any]:
    """The original model's outputs on data.eval: what every artifact is checked against."""
    import numpy as np

    from deployc.ml.evaluate import class_distribution, compare, predict, predict_savedmodel

    out = ctx.deps[SOURCE]
    x, y = ctx.data("eval")
    fmt, r = out.result["format"], ctx.resolved
    # SavedModels run through their serving signature itself (the source of their ONNX conversion)
    pred = (predict_savedmodel(model_path(out), x, r.prediction) if fmt == "savedmodel"
            else predict(model_path(out), fmt, x, output=r.prediction))
    _check_task_shape(r, pred)
    np.save(ctx.out_dir / "predictions.npy", pred, allow_pickle=False)
    task = r.task
    figures = compare(pred, pred, y, task, r.threshold)
    if figures.get("non_finite_outputs"):
        from deployc.errors import InputError

        raise InputError(f"model.path: the original model gives {figures['non_finite_outputs']} NaN or infinite "
                         "output values on data.eval; no artifact can be verified against it")
    for same in ("agreement", "max_abs_error", "relative_error"):  # the reference against itself
        figures.pop(same, None)
    result: dict[str, Any] = {"evaluation": figures}
    if task in ("classification", "binary") and "agreement" in compare(pred, pred, None, task, r.threshold):
        result["distribution"] = class_distribution(pred, task, r.threshold)
    return result


def _check_task_shape(r: Any, pred: Any) -> None:
    """A class gate on an output whose shape has no classes for the task would fail as "not measured" after
    the whole build: say why at the reference step."""
    from deployc.errors import InputError
    from deployc.ml.evaluate import predicted_classes

    class_gates = [g for g in ("min_agreement", "max_accuracy_drop") if getattr(r.gates, g) is not None]
    if r.task == "binary" and predicted_classes(pred, r.task, r.threshold) is None:
        class_gates = class_gates or ["the ROC AUC and the stability SLO"]  # a binary output is one column, always
    elif not class_gates or predicted_classes(pred, r.task, r.threshold) is not None:
        return
    shape = "x".join(str(d) for d in pred.shape[1:]) or "one value"
    hint = {"classification": "a single sigmoid column is model.task binary",
            "binary": "a softmax over two columns is model.task classification",
            "multilabel": "a multilabel output holds rows x labels"}.get(r.task, "")
    raise InputError(f"model.task is {r.task}, and the prediction output holds {shape} per row, which has no "
                     f"predicted class for {', '.join(class_gates)}: {hint}")


@dataclass(frozen=True)
class Evaluator:
    """Evaluate one ONNX model against the reference (used by evaluate steps and by `auto` passes)."""

    ctx: StepContext

    def __call__(self, model: Path) -> dict[str, Any]:
        import numpy as np

        from deployc.compiler.gates import failures
        from deployc.ml.evaluate import compare, measure_onnx, predict_onnx, sizes

        x, y = self.ctx.data("eval")
        ref_out = self.ctx.deps[REFERENCE]
        ref = np.load(Path(ref_out.dir) / "predictions.npy", allow_pickle=False)
        r = self.ctx.resolved
        pred = predict_onnx(model, x, output=r.prediction)
        figures = compare(ref, pred, y, r.task, r.threshold)
        figures.update(sizes(model))
        m = r.measure
        figures.update(measure_onnx(model, x, threads=m.threads, batch_size=m.batch_size,
                                    min_seconds=m.min_seconds))
        from deployc.compiler import explaining

        if explaining.EXPLAIN in self.ctx.deps:  # `explain:` set: the artifact's reasons against the original's
            predict, names, dtypes = explaining.onnx_predictor(model, r.prediction)
            found = explaining.artifact(self.ctx, predict, names, dtypes)
            figures.update(found["figures"])
            figures["explanation"] = found["summary"]
        figures["gate_failures"] = [str(f) for f in failures(r.gates, ref_out.result["evaluation"], figures)]
        return figures


def evaluate(ctx: StepContext, artifact_step: str, artifact: str) -> dict[str, Any]:
    figures = Evaluator(ctx)(model_path(ctx.deps[artifact_step]))
    figures.pop("gate_failures")
    explanation = figures.pop("explanation", None)
    return {"artifact": artifact, "evaluation": figures,
            **({"explanation": explanation} if explanation is not None else {})}


def profile_inputs(ctx: StepContext, **kwargs: Any) -> dict[str, Any]:
    from deployc.compiler import profile

    return profile.run(ctx, **kwargs)


def explain_reference(ctx: StepContext, onnx_step: str) -> dict[str, Any]:
    from deployc.compiler import explaining

    return explaining.reference(ctx, onnx_step)


def run_pass(ctx: StepContext, name: str, index: int, prev: str, data_sets: tuple[str, ...] = ()) -> dict[str, Any]:
    """Apply pass `name` (spec.optimize[index]) to the model of step `prev`. It reads only the data sets its step
    hashes (`data_sets`), and gets an evaluator only when its step depends on the reference."""
    from deployc.passes.base import PassInput

    use = ctx.resolved.passes[index]
    p, cfg = use.impl, use.config

    def data(which: str) -> tuple[Any, Any]:
        if which not in data_sets:
            raise ValueError(f"data.{which} is not among the data sets {name} declares")
        return ctx.data(which)

    ev = Evaluator(ctx) if REFERENCE in ctx.deps else _no_eval
    result = p.apply(PassInput(model=model_path(ctx.deps[prev]), out_dir=ctx.out_dir, config=cfg, data=data,
                               evaluate=ev, gates=ctx.resolved.gates, log=ctx.progress, spec_dir=ctx.spec_dir))
    return {"model": result.model.relative_to(ctx.out_dir).as_posix(), "format": result.format or p.output_format,
            "details": result.details}


def _no_eval(model: Path) -> dict[str, Any]:
    raise ValueError("data.eval is not set")
