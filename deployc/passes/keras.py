"""What the Keras passes (prune, distill) share: the `KerasPass` base (fine-tuning on data.train, seeded), reading
the training data (one array, or {input name: array} for a model of several inputs), a byte-stable .keras writer
and the size and accuracy figures for the report.

NumPy, Keras and TensorFlow are imported inside the functions, so the module stays light for validation.
"""
from __future__ import annotations

import gzip
import io
import json
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from deployc.errors import InputError
from deployc.passes.base import Format, Pass, PassInput, PassResult
from deployc.schema.base import Located

if TYPE_CHECKING:
    import numpy as np

    from deployc.ml.feeds import Inputs
    from deployc.schema.spec import DeploySpec

SEED = 1234
MODEL_FILE = "model.keras"


@contextmanager
def deterministic(seed: int = SEED) -> Iterator[None]:
    """Same input, same output: seeds Python/NumPy/TF. TensorFlow runs on CPU here (`quiet_tensorflow` hides
    GPUs), where the seed alone gives byte-identical models, so op determinism (a process-wide switch) is not
    turned on."""
    from deployc.ml.quiet import quiet_tensorflow

    quiet_tensorflow()
    import keras

    keras.utils.set_random_seed(seed)
    yield


def model_inputs(model: Any, x: Any, name: str, which: str) -> Inputs:
    """`x` as the model takes it: one array for a model of one input (cast to its dtype), {input name: array}
    for a model of several (each cast to its input's dtype), its rows' shapes checked against the inputs."""
    import numpy as np

    from deployc.ml import feeds

    names = [str(t.name) for t in model.inputs]
    raw = {k: np.asarray(v) for k, v in x.items()} if isinstance(x, Mapping) else np.asarray(x)
    fed = feeds.feed(raw, names, [t.dtype for t in model.inputs], what=f"{name}: the model")
    for n, tensor in zip(names, model.inputs, strict=True):
        want, got = tuple(tensor.shape[1:]), tuple(fed[n].shape[1:])
        if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got, strict=True)):
            which_input = f" for input {n!r}" if len(names) > 1 else ""
            raise InputError(f"{name}: data.{which} rows{which_input} have shape {got}, the model expects {want}")
    # one array for a model built on one tensor; else by name (Keras takes a dict for list- and dict-built models)
    return fed if len(names) > 1 or isinstance(getattr(model, "_inputs_struct", None), (dict, list, tuple)) \
        else fed[names[0]]


def train_data(inp: PassInput, model: Any, name: str) -> tuple[Inputs, np.ndarray]:
    """data.train as the model's inputs (`model_inputs`) and integer labels."""
    import numpy as np

    x, y = inp.data("train")
    if y is None:
        raise InputError(f"{name} fine-tunes on labelled data: set data.train.y")
    return model_inputs(model, x, name, "train"), np.asarray(y).reshape(-1).astype(np.int64)


def eval_data(inp: PassInput, model: Any, name: str) -> tuple[Inputs, np.ndarray] | None:
    import numpy as np

    try:
        x, y = inp.data("eval")
    except ValueError:
        return None
    return None if y is None else (model_inputs(model, x, name, "eval"), np.asarray(y).reshape(-1).astype(np.int64))


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
    import numpy as np

    raw = b"".join(np.asarray(w, dtype=np.float32).tobytes() for w in model.get_weights())
    return {"weights_bytes": len(raw), "weights_gzip_bytes": len(gzip.compress(raw, compresslevel=9, mtime=0))}


def file_sizes(path: Path) -> dict[str, int]:
    raw = path.read_bytes()
    return {"file_bytes": len(raw), "file_gzip_bytes": len(gzip.compress(raw, compresslevel=9, mtime=0))}


def accuracies(inp: PassInput, before: Any, after: Any, x: Inputs, y: np.ndarray) -> dict[str, Any]:
    from deployc.ml.prune import accuracy

    out: dict[str, Any] = {"train_accuracy_before": accuracy(before, x, y), "train_accuracy": accuracy(after, x, y)}
    ev = eval_data(inp, before, "evaluation")
    if ev is not None:
        out["eval_accuracy_before"] = accuracy(before, *ev)
        out["eval_accuracy"] = accuracy(after, *ev)
    return out


def finish(inp: PassInput, before: Any, after: Any, x: Inputs, y: np.ndarray, details: dict[str, Any]
           ) -> PassResult:
    """Save the new model as the pass's output and complete its details: the sizes before (unless already
    recorded) and after, and the accuracies of both models on data.train (and data.eval when set)."""
    out = inp.out_dir / MODEL_FILE
    save_keras(after, out)
    details.setdefault("before", {**weight_sizes(before), **file_sizes(inp.model)})
    details["after"] = {**weight_sizes(after), **file_sizes(out)}
    details.update(accuracies(inp, before, after, x, y))
    return PassResult(model=out, details=details)


class KerasPass(Pass):
    """A pass that fine-tunes or retrains the Keras model on data.train, seeded so its output is reproducible.
    data.eval, when set, gives the accuracy before and after in the report."""

    input_format: ClassVar[Format] = "keras"
    output_format: ClassVar[Format] = "keras"
    libs: ClassVar[tuple[str, ...]] = ("keras", "numpy", "tensorflow")
    data_needed: ClassVar[tuple[str, ...]] = ("train",)
    data_optional: ClassVar[tuple[str, ...]] = ("eval",)

    def check(self, spec: DeploySpec, index: int) -> list[Located]:
        loc = ("optimize", index, self.name)
        if spec.data.train is None:
            return [(loc, f"{self.name} fine-tunes on data.train, which is not set")]
        if spec.data.train.y is None:
            return [(loc, f"{self.name} needs labels: set data.train.y")]
        if spec.model.task not in ("classification", "binary"):
            return [(loc, f"{self.name} fine-tunes a classifier (cross-entropy on class labels), and model.task is "
                     f"{spec.model.task}")]
        return []

    def apply(self, inp: PassInput) -> PassResult:
        with deterministic():
            return self._apply(inp)

    def _apply(self, inp: PassInput) -> PassResult:
        raise NotImplementedError
