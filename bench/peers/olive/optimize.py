"""Microsoft Olive on its own ONNX Runtime CPU recipes, for bench/optimize.py's peer comparison.

    bench/.venvs/olive/bin/python bench/peers/olive/optimize.py --onnx MODEL.onnx --data DATA.npz \
        --kind {mlp,cnn,transformer} --out OUTDIR

DATA.npz holds x_calib (calibration rows), x_eval and y_eval. Each recipe is one olive.workflows.run of a config
dict (ONNXModel input, a LocalSystem on CPUExecutionProvider, no evaluator, no search), with the pass defaults
of the installed Olive unless a setting is named in the recipe:
- olive-int8-dynamic: OnnxDynamicQuantization (int8 weights, per-tensor, quant_preprocess).
- olive-int8-static-qdq: OnnxStaticQuantization, QDQ, int8 weights and activations, MinMax calibration on every
  x_calib row (batch 1) through a data config whose dataset this file registers (Olive's user_script pattern).
- transformer only, olive-transformers-opt-int8-dynamic: OrtTransformersOptimization (model_type bert) then
  OnnxDynamicQuantization; the recipe names the fused operators it produced.
A recipe that raises is listed under "failed" with its error instead of ending the run.

Stdout carries one JSON line ({"peer", "version", "artifacts": [{"name", "path", "recipe"}], "failed"?}); Olive's
logging, and anything the libraries print, goes to stderr. Nothing is downloaded; telemetry is switched off.
"""
from __future__ import annotations

import collections
import logging
import os
import random
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

# Telemetry off, set before import: OLIVE_DISABLE_TELEMETRY is Olive's documented switch, but olive-ai 0.13.0 queues
# a heartbeat before reading it and tries to send it at exit (10 s lost without a network); only a CI variable
# stops that. No hub look-ups either: every model and data set here is local.
os.environ["OLIVE_DISABLE_TELEMETRY"] = "1"
if not os.environ.get("CI"):
    os.environ["CI"] = "true"
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/peers
from olive.data.registry import Registry  # noqa: E402
from quiet import logger  # noqa: E402
from quiet import main as peer_main  # noqa: E402
from quiet import versions as package_versions  # noqa: E402

SEED = 0
DATASET = "deployc_npz_calibration"
# operators that ORT's transformer optimizer fuses into; counted to tell whether the pass changed the graph
FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "LayerNormalization",
             "EmbedLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "BiasAdd", "SkipSimplifiedLayerNormalization")


@Registry.register_dataset(DATASET)
def npz_calibration_dataset(npz_path: str, input_name: str, input_dtype: str) -> list[tuple[dict, int]]:
    """x_calib of the npz as (inputs, label) rows for Olive's default dataloader (which batches and collates)."""
    x = np.load(npz_path)["x_calib"].astype(input_dtype)
    return [({input_name: row}, 0) for row in x]


log = logger("olive")


def versions() -> str:
    return package_versions("olive-ai", "onnxruntime", "onnx", "torch", "numpy")


def model_input(onnx_path: Path) -> tuple[str, str]:
    """The single graph input that is not an initializer: its name and numpy dtype."""
    import onnx
    from onnx import helper

    m = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"expected one input, the model has {len(inputs)}")
    dtype = helper.tensor_dtype_to_np_dtype(inputs[0].type.tensor_type.elem_type)
    return inputs[0].name, np.dtype(dtype).name


def op_counts(path: Path) -> collections.Counter:
    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def workflow(onnx_path: Path, passes: dict[str, dict], out: Path, name: str,
             data_configs: list[dict]) -> dict[str, Any]:
    return {
        "workflow_id": name,
        "input_model": {"type": "ONNXModel", "model_path": str(onnx_path)},
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": data_configs,
        "passes": passes,
        "host": "local_system",
        "target": "local_system",
        "evaluate_input_model": False,
        "search_strategy": False,
        "cache_dir": str(out / ".olive-cache" / name),
        "clean_cache": True,
        "output_dir": str(out / ".olive-output" / name),
        "log_severity_level": 1,
    }


class PassErrors(logging.Handler):
    """The errors Olive's engine logs (and swallows) while a pass fails, so the JSON line can say why."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        self.errors.append(f"{record.getMessage()} {type(exc).__name__}: {exc}" if exc else record.getMessage())


def run_recipe(onnx_path: Path, passes: dict[str, dict], out: Path, name: str, data_configs: list[dict]) -> Path:
    """One olive.workflows.run; the output model re-saved as OUTDIR/<name>/model.onnx."""
    import torch
    from olive.workflows import run as olive_run

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    errors = PassErrors()
    logging.getLogger("olive").addHandler(errors)
    try:
        wf = olive_run(workflow(onnx_path, passes, out, name, data_configs), tempdir=str(out / ".olive-tmp"))
    finally:
        logging.getLogger("olive").removeHandler(errors)
    if wf is None or not wf.has_output_model():
        raise RuntimeError("the workflow produced no output model" +
                           (f": {' | '.join(errors.errors)}" if errors.errors else " (see the Olive log on stderr)"))
    produced = Path(wf.get_best_candidate().model_path)
    if produced.is_dir():
        onnx_files = sorted(produced.glob("*.onnx"))
        if len(onnx_files) != 1:
            raise RuntimeError(f"expected one .onnx in {produced}, found {[p.name for p in onnx_files]}")
        produced = onnx_files[0]
    dest = out / name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    import onnx

    # re-saved as one self-contained file (Olive may keep weights as external data beside the graph)
    model = onnx.load(str(produced))
    onnx.save_model(model, str(dest / "model.onnx"))
    return (dest / "model.onnx").resolve()


def run(onnx_path: Path, data_path: Path, kind: str, out: Path) -> dict[str, Any]:
    input_name, input_dtype = model_input(onnx_path)
    n_calib = len(np.load(data_path)["x_calib"])
    log(f"input {input_name} ({input_dtype}); {n_calib} calibration rows")
    calib = {
        "name": "calib",
        "user_script": str(Path(__file__).resolve()),
        "load_dataset_config": {"type": DATASET, "npz_path": str(data_path), "input_name": input_name,
                                "input_dtype": input_dtype},
        "dataloader_config": {"batch_size": 1},
    }
    dynamic = {"type": "OnnxDynamicQuantization"}
    recipes: list[tuple[str, dict[str, dict], list[dict], str]] = [
        ("olive-int8-dynamic", {"quantization": dynamic}, [],
         "olive.workflows.run: OnnxDynamicQuantization (Olive defaults: int8 weights, per_channel=False, "
         "reduce_range=False, quant_preprocess=True), CPUExecutionProvider"),
        ("olive-int8-static-qdq",
         {"quantization": {"type": "OnnxStaticQuantization", "data_config": "calib", "quant_format": "QDQ",
                           "precision": "int8", "activation_type": "int8", "calibrate_method": "MinMax"}},
         [calib],
         f"olive.workflows.run: OnnxStaticQuantization (QDQ, int8 weights + int8 activations, MinMax calibration "
         f"on {n_calib} x_calib rows at batch 1, Olive defaults otherwise: per_channel=False, "
         f"quant_preprocess=True, prepare_qdq_config=True), CPUExecutionProvider"),
    ]
    if kind == "transformer":
        recipes.append((
            "olive-transformers-opt-int8-dynamic",
            {"transformers_optimization": {"type": "OrtTransformersOptimization", "model_type": "bert"},
             "quantization": dynamic}, [],
            "olive.workflows.run: OrtTransformersOptimization (model_type=bert, num_heads/hidden_size detected, "
            "Olive defaults otherwise) -> OnnxDynamicQuantization (Olive defaults), CPUExecutionProvider"))

    before = op_counts(onnx_path)
    artifacts, failed = [], []
    for name, passes, data_configs, recipe in recipes:
        log(f"recipe {name}: passes {list(passes)}")
        try:
            path = run_recipe(onnx_path, passes, out, name, data_configs)
        except Exception as e:  # recorded in the JSON line; the other recipes still run
            traceback.print_exc(file=sys.stderr)
            failed.append({"name": name, "error": f"{type(e).__name__}: {e}"[:2000]})
            continue
        if "transformers_optimization" in passes:
            after = op_counts(path)
            fused = {op: after[op] - before[op] for op in FUSED_OPS if after[op] > before[op]}
            recipe += ("; fused: " + ", ".join(f"{op} x{n}" for op, n in fused.items()) if fused
                       else "; no transformer fusion (Attention, LayerNormalization, Gelu...) matched on this graph")
            plain = next((a["path"] for a in artifacts if a["name"] == "olive-int8-dynamic"), None)
            if plain and op_counts(Path(plain)) == after:
                recipe += ", same operator counts as olive-int8-dynamic"
        artifacts.append({"name": name, "path": str(path), "recipe": recipe})
        log(f"recipe {name}: {path}")
    for scratch in (".olive-cache", ".olive-output", ".olive-tmp"):
        shutil.rmtree(out / scratch, ignore_errors=True)
    return {"artifacts": artifacts, **({"failed": failed} if failed else {})}


if __name__ == "__main__":
    sys.exit(peer_main("olive", versions(), run, __doc__.splitlines()[0]))
