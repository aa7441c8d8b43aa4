"""The `prune` pass: magnitude (unstructured) or structured pruning of a Keras model, fine-tuned on data.train.

Also holds the helpers both Keras passes share: seeding, reading training data, a byte-stable .keras writer and
the size figures for the report.
"""
from __future__ import annotations

import gzip
import io
import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from deployc.errors import InputError
from deployc.passes.base import Pass, PassInput, PassResult
from deployc.schema.passes import PruneConfig

SEED = 1234
MODEL_FILE = "model.keras"


@contextmanager
def deterministic(seed: int = SEED) -> Iterator[None]:
    """Same input, same output: seeds Python/NumPy/TF. TensorFlow runs on CPU here (`quiet_tensorflow` hides
    GPUs), where the seed alone gives byte-identical models, so op determinism (a process-wide switch) is not
    turned on."""
    import keras

    keras.utils.set_random_seed(seed)
    yield


def train_data(inp: PassInput, model: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """data.train as float32 inputs and integer labels, checked against the model's input shape."""
    x, y = inp.data("train")
    if y is None:
        raise InputError(f"{name} fine-tunes on labelled data: set data.train.y")
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).reshape(-1).astype(np.int64)
    want = tuple(model.inputs[0].shape[1:])
    if len(want) != x.ndim - 1 or any(w is not None and w != g for w, g in zip(want, x.shape[1:], strict=True)):
        raise InputError(f"{name}: data.train rows have shape {tuple(x.shape[1:])}, the model expects {want}")
    return x, y


def eval_data(inp: PassInput) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        x, y = inp.data("eval")
    except ValueError:
        return None
    return None if y is None else (np.asarray(x, dtype=np.float32), np.asarray(y).reshape(-1).astype(np.int64))


def save_keras(model: Any, path: Path) -> None:
    """Save without optimizer state and with fixed zip timestamps / no save date, so equal weights give equal
    bytes (the next step's cache key hashes this file)."""
    clean = type(model).from_config(model.get_config())  # uncompiled: no optimizer state in the file
    clean.set_weights(model.get_weights())
    raw = io.BytesIO()
    tmp = path.with_suffix(".tmp.keras")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean.save(tmp)
    with zipfile.ZipFile(tmp) as src, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED) as dst:
        for info in sorted(src.infolist(), key=lambda i: i.filename):
            data = src.read(info.filename)
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta.pop("date_saved", None)
                data = json.dumps(meta, sort_keys=True).encode()
            dst.writestr(zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0)), data)
    tmp.unlink()
    path.write_bytes(raw.getvalue())


def weight_sizes(model: Any) -> dict[str, int]:
    """float32 weight bytes, raw and gzip-compressed (what zeros in the kernels save on disk / over the wire)."""
    raw = b"".join(np.asarray(w, dtype=np.float32).tobytes() for w in model.get_weights())
    return {"weights_bytes": len(raw), "weights_gzip_bytes": len(gzip.compress(raw, compresslevel=9, mtime=0))}


def file_sizes(path: Path) -> dict[str, int]:
    raw = path.read_bytes()
    return {"file_bytes": len(raw), "file_gzip_bytes": len(gzip.compress(raw, compresslevel=9, mtime=0))}


def accuracies(inp: PassInput, before: Any, after: Any, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from deployc.ml.prune import accuracy

    out: dict[str, Any] = {"train_accuracy_before": accuracy(before, x, y), "train_accuracy": accuracy(after, x, y)}
    ev = eval_data(inp)
    if ev is not None:
        out["eval_accuracy_before"] = accuracy(before, *ev)
        out["eval_accuracy"] = accuracy(after, *ev)
    return out


class KerasPass(Pass):
    """A pass that fine-tunes or retrains the Keras model on data.train, seeded so its output is reproducible."""

    input_format = "keras"
    output_format = "keras"
    libs = ("tensorflow", "keras")
    data_needed = ("train",)

    def apply(self, inp: PassInput) -> PassResult:
        with deterministic():
            return self._apply(inp)

    def _apply(self, inp: PassInput) -> PassResult:
        raise NotImplementedError


class PrunePass(KerasPass):
    name: ClassVar[str] = "prune"
    config_model = PruneConfig

    def _apply(self, inp: PassInput) -> PassResult:
        from deployc.ml import prune
        from deployc.ml.convert import load_keras

        cfg: PruneConfig = inp.config
        original = load_keras(inp.model)
        model = load_keras(inp.model)
        x, y = train_data(inp, model, "prune")
        out = inp.out_dir / MODEL_FILE
        details: dict[str, Any] = {"structured": cfg.structured, "target_sparsity": cfg.sparsity,
                                   "seed": SEED, "before": {**weight_sizes(original), **file_sizes(inp.model)}}
        if cfg.structured:
            inp.log(f"prune: removing {cfg.sparsity:.0%} of the units/filters, fine-tuning {cfg.epochs} epochs")
            model, details["training"] = prune.prune_structured(model, x, y, cfg.sparsity, cfg.epochs,
                                                                cfg.batch_size, cfg.learning_rate)
            details["widths_before"] = prune.widths(original)
            details["widths_after"] = prune.widths(model)
            details["params_before"] = int(original.count_params())
            details["params_after"] = int(model.count_params())
        else:
            inp.log(f"prune: {cfg.sparsity:.0%} magnitude sparsity, fine-tuning {cfg.epochs} epochs")
            details["training"] = prune.prune_unstructured(model, x, y, cfg.sparsity, cfg.epochs, cfg.batch_size,
                                                           cfg.learning_rate)
            details["sparsity"] = prune.sparsity_report(prune.kernel_layers(model))
        save_keras(model, out)
        details["after"] = {**weight_sizes(model), **file_sizes(out)}
        details.update(accuracies(inp, original, model, x, y))
        return PassResult(model=out, details=details)
