"""What the input files themselves reveal, checked by `deployc validate` before anything expensive runs.

Data sets must hold the arrays the spec names, real numbers only, all finite (a NaN row would make agreement
and accuracy vacuous), with matching row counts; a labels file must be UTF-8 with one name a line; an ONNX
model's external data files must sit in its folder. Only numpy is imported here (the ONNX file is read as
protobuf wire data, see onnx_refs.py); TensorFlow and onnx never.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from deployc.compiler.inputs import keras_archive_config, open_regular, read_bytes
from deployc.errors import InputError

Loc = tuple[Any, ...]


def data_problems(base: Path, which: str, ds: Any, dtypes: dict[str, str] | None = None,
                  task: str = "classification") -> list[tuple[Loc, str]]:
    """Problems with `data.<which>`: (location in the spec, message). `dtypes` are the model's input dtypes by
    name, where known: an integer input's array must hold whole numbers; `y` must hold labels of `task`."""
    import numpy as np

    loc: Loc = ("data", which)
    # (location under data.<which>, array key): x is one key, or {input name: key}
    wanted: list[tuple[Loc, str]] = ([(("x", n), k) for n, k in ds.x.items()] if isinstance(ds.x, dict)
                                     else [(("x",), ds.x)])
    if ds.y is not None:
        wanted.append((("y",), ds.y))
    try:
        with open_regular(base / ds.path) as f, np.load(f, allow_pickle=False) as npz:
            names = list(npz.files)
            missing = [(where, k) for where, k in wanted if k not in names]
            if missing:
                return [(loc + where, f"{ds.path} has no array named {k!r} (it has: {', '.join(names) or 'none'})")
                        for where, k in missing]
            arrays, problems = {}, []
            for where, k in wanted:
                try:
                    arrays[where] = npz[k]
                except (OSError, ValueError, EOFError) as exc:  # a pickled object array, a corrupt member
                    problems.append((loc + where, f"{ds.path}: array {k!r} cannot be loaded ({exc})"))
            if problems:
                return problems
    except (OSError, ValueError, EOFError) as exc:
        return [(loc + ("path",), f"{ds.path} is not a readable .npz file ({exc})")]
    except InputError as exc:
        return [(loc + ("path",), str(exc))]
    keys = dict(wanted)
    problems += [(loc + where, msg) for where, arr in arrays.items()
                 if (msg := array_problem(arr, f"{ds.path}: array {keys[where]!r}"))]
    problems += _integer_problems(loc, ds, arrays, keys, dtypes or {})
    if ("y",) in arrays and not problems and (msg := label_problem(arrays[("y",)], task)):
        problems.append((loc + ("y",), f"{ds.path}: array {ds.y!r} {msg}"))
    if not problems:
        counts = {where: len(arr) for where, arr in arrays.items()}
        first, n = next(iter(counts.items()))
        problems += [(loc + where, f"{ds.path}: {keys[first]} has {n} rows but {keys[where]} has {m}")
                     for where, m in counts.items() if m != n]
    return problems


def _integer_problems(loc: Loc, ds: Any, arrays: dict[Loc, Any], keys: dict[Loc, str], dtypes: dict[str, str]
                      ) -> list[tuple[Loc, str]]:
    """An integer or boolean model input (ids, masks) fed fractions, or values its dtype cannot hold."""
    import numpy as np

    from deployc.ml.feeds import range_problem

    found = []
    for where, arr in arrays.items():
        if where[0] != "x" or arr.dtype.kind not in "fiub" or arr.size == 0:
            continue
        name = where[1] if len(where) > 1 else (next(iter(dtypes)) if len(dtypes) == 1 else None)
        dtype = dtypes.get(name) if name is not None else None
        if dtype not in ("int8", "uint8", "int16", "int32", "int64", "bool"):
            continue
        if not np.array_equal(arr, np.round(arr)):
            found.append((loc + where, f"{ds.path}: array {keys[where]!r} holds fractions, and the model's input "
                          f"{name!r} is {dtype}: ids and masks must be whole numbers"))
        elif problem := range_problem(arr, dtype):
            found.append((loc + where, f"{ds.path}: array {keys[where]!r} {problem}, the range of the model's "
                          f"input {name!r} ({dtype})"))
    return found


def label_problem(y: Any, task: str) -> str | None:
    """Why `y` cannot label a model of `task`, or None: class indices, 0/1 for sigmoid outputs."""
    import numpy as np

    if task == "regression":
        return None
    y = np.asarray(y, dtype=np.float64)
    if not np.array_equal(y, np.round(y)):
        return f"holds fractions, and model.task {task} takes class labels"
    if task in ("binary", "multilabel"):
        bad = np.setdiff1d(np.unique(y), [0, 1])
        if bad.size:
            return f"holds {', '.join(f'{v:g}' for v in bad[:3])}: model.task {task} takes labels 0 and 1"
        if task == "multilabel" and y.ndim != 2:
            return f"has shape {y.shape}: model.task multilabel takes rows x labels of 0 and 1"
    elif y.min() < 0:
        return "holds negative class indices"
    return None


def array_problem(arr: Any, what: str) -> str | None:
    """Why an array cannot serve as model input or labels, or None."""
    import numpy as np

    if arr.dtype.kind not in "biuf":
        kind = {"c": "complex numbers", "U": "text", "S": "bytes", "O": "Python objects", "V": "records",
                "M": "dates", "m": "time spans"}.get(arr.dtype.kind, str(arr.dtype))
        return f"{what} holds {kind} ({arr.dtype}); data must be real numbers"
    if arr.ndim == 0 or len(arr) == 0:
        return f"{what} has no rows"
    if arr.dtype.kind == "f":
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            return f"{what} holds {bad} NaN or infinite value(s) of {arr.size}; data must be finite"
    return None


def labels_problem(base: Path, rel: str) -> str | None:
    try:
        read_labels(base / rel)
    except InputError as exc:
        return str(exc).replace(str(base / rel), repr(rel), 1)
    except OSError as exc:
        return f"{rel!r}: cannot read ({exc.strerror or exc})"
    return None


def labels_count_problem(base: Path, spec: Any, fmt: str) -> str | None:
    """model.labels must name as many classes as the prediction output has columns, where the model file says
    how many (an ONNX graph's output shape; a .keras archive whose output layer is a Dense layer); a binary
    model's one sigmoid column has two classes."""
    if not spec.model.labels or spec.model.task == "regression":
        return None
    found = model_classes(base / spec.model.path, fmt, spec.model.prediction)
    if found is None:
        return None
    output, columns = found
    names = len(read_labels(base / spec.model.labels))
    classes = 2 if spec.model.task == "binary" and columns == 1 else columns
    if classes == names or (columns == 1 and spec.model.task == "classification"):  # a sigmoid unit: 2 names fit
        return None
    return (f"{spec.model.labels!r} names {names} classes, but the model's output {output!r} has {classes}"
            + (" (model.task binary: one sigmoid column, two classes)" if spec.model.task == "binary" else
               ": one name per output column, in order"))


def task_shape_problem(base: Path, spec: Any, fmt: str) -> str | None:
    """The prediction output's columns against model.task, where the model file's header says them: binary
    is one sigmoid column, classification several."""
    task = spec.model.task
    if task not in ("binary", "classification"):
        return None
    found = model_classes(base / spec.model.path, fmt, spec.model.prediction)
    if found is None:
        return None
    output, columns = found
    if task == "binary" and columns > 1:
        return (f"model.task binary takes one sigmoid column, and the output {output!r} has {columns}: a softmax "
                "over classes is model.task classification")
    if task == "classification" and columns == 1 and (spec.gates.min_agreement is not None
                                                      or spec.gates.max_accuracy_drop is not None):
        return (f"the output {output!r} has one column, which has no argmax class for min_agreement or "
                "max_accuracy_drop: a sigmoid output is model.task binary")
    return None


def output_names(base: Path, spec: Any, fmt: str) -> list[str]:
    """The model's output names as its file says before the build (ONNX graph outputs; a .keras functional
    model's output layers); empty when it does not say."""
    path = base / spec.model.path
    if fmt == "onnx":
        outs = _onnx_outputs(path)
        return [o.name for o in outs or ()]
    if fmt == "keras" and path.suffix == ".keras":
        return [name for name, _ in _keras_outputs(keras_archive_config(path))]
    return []


def _onnx_outputs(path: Path) -> Any:
    from deployc.compiler.resolved import onnx_file_io

    st = path.stat()
    try:
        return onnx_file_io(path.resolve(), st.st_mtime_ns, st.st_size)[1]
    except InputError:
        return None  # onnx_problem reports the file


def model_classes(path: Path, fmt: str, prediction: str | None = None) -> tuple[str, int] | None:
    """(prediction output's name, its number of columns) from the model file's header; None when it does not
    say. `prediction` names the output (None: the first)."""
    if fmt == "onnx":
        outs = _onnx_outputs(path)
        if not outs:
            return None
        out = next((o for o in outs if o.name == prediction), outs[0])
        if len(out.shape) == 2 and out.shape[1] > 0:
            return out.name, out.shape[1]
        return None
    if fmt == "keras" and path.suffix == ".keras":
        outs = _keras_outputs(keras_archive_config(path))
        if len(outs) > 1 and prediction is None:
            prediction = outs[0][0]
        for name, layer in outs:
            if (prediction is None or name == prediction) and layer is not None:
                try:
                    if layer["class_name"] != "Dense":
                        return None
                    return str(layer["config"]["name"]), int(layer["config"]["units"])
                except (KeyError, TypeError, ValueError):  # a config this reader does not know: the build will say
                    return None
    return None


def _keras_outputs(config: Any) -> list[tuple[str, Any]]:
    """(name, layer config or None) of each output layer of a .keras model's config."""
    try:
        inner = config["config"]
        layers = inner["layers"]
        if config["class_name"] == "Sequential":
            last = layers[-1]
            return [(str(last["config"]["name"]), last)]
        if config["class_name"] != "Functional":
            return []
        refs = inner["output_layers"]
        refs = [refs] if refs and isinstance(refs[0], str) else list(refs)
        by_name = {layer.get("name", layer["config"].get("name")): layer for layer in layers}
        return [(str(r[0]), by_name.get(r[0])) for r in refs]
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return []


def read_labels(path: Path) -> tuple[str, ...]:
    """Class names, one a non-empty line, from a UTF-8 text file."""
    raw = read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"{path}: not UTF-8 text (line {line}, byte {exc.start})") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise InputError(f"{path}: holds no class names (one per line)")
    return names


def onnx_external_files(model: Path) -> tuple[Path, ...]:
    """The external data files an ONNX model names (resolved), refusing locations outside its folder."""
    st = model.stat()
    return _onnx_external_files(model.resolve(), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=16)
def _onnx_external_files(model: Path, mtime_ns: int, size: int) -> tuple[Path, ...]:
    from deployc.compiler.onnx_refs import WireError, external_locations

    try:
        locations = external_locations(read_bytes(model))
    except WireError as exc:
        raise InputError(f"{model.name}: not a valid ONNX model ({exc})") from None
    folder = model.parent
    found: list[Path] = []
    for loc in locations:
        target = (folder / loc).resolve()
        if Path(loc).is_absolute() or not target.is_relative_to(folder):
            raise InputError(f"{model.name}: external data location {loc!r} leaves the model's folder")
        if target not in found:
            found.append(target)
    return tuple(sorted(found))


def keras_code_problem(base: Path, rel: str) -> str | None:
    """A `.keras` archive whose config.json holds Lambda layers (Python bytecode, refused by Keras safe mode):
    found from the archive alone, without importing Keras, so `validate` says it before a build starts."""
    names = _lambda_layers(keras_archive_config(base / rel))
    if not names:
        return None
    shown = ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"the model holds Python code (Lambda layer {shown}), which deployc refuses to load (Keras safe mode); "
            "rebuild it from built-in layers, or set model.allow_python_code: true if you trust the file")


def _lambda_layers(config: Any) -> tuple[str, ...]:
    found: list[str] = []
    stack: list[Any] = [config]
    while stack:  # nested models and wrappers (TimeDistributed, Bidirectional) hold layers deeper down
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                cfg = node.get("config")
                found.append(str(cfg.get("name", "?")) if isinstance(cfg, dict) else "?")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return tuple(sorted(found))


def onnx_problem(base: Path, rel: str) -> str | None:
    """Problems with an ONNX model file and its external data (validate time)."""
    from deployc.compiler.inputs import check_tree

    try:
        files = onnx_external_files(base / rel)
    except InputError as exc:
        return str(exc)
    for f in files:
        msg = check_tree(base, f.relative_to(base).as_posix() if f.is_relative_to(base) else str(f), "file")
        if msg:
            return f"external data of {rel!r}: {msg}"
    return None
