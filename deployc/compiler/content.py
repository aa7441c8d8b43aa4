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


def data_problems(base: Path, which: str, ds: Any) -> list[tuple[Loc, str]]:
    """Problems with `data.<which>`: (location in the spec, message)."""
    import numpy as np

    loc: Loc = ("data", which)
    try:
        with open_regular(base / ds.path) as f, np.load(f, allow_pickle=False) as npz:
            names = list(npz.files)
            missing = [(key, k) for key, k in (("x", ds.x), ("y", ds.y)) if k is not None and k not in names]
            if missing:
                return [(loc + (key,), f"{ds.path} has no array named {k!r} (it has: {', '.join(names) or 'none'})")
                        for key, k in missing]
            arrays, problems = {}, []
            for key, k in (("x", ds.x), ("y", ds.y)):
                if k is None:
                    continue
                try:
                    arrays[key] = npz[k]
                except (OSError, ValueError, EOFError) as exc:  # a pickled object array, a corrupt member
                    problems.append((loc + (key,), f"{ds.path}: array {k!r} cannot be loaded ({exc})"))
            if problems:
                return problems
    except (OSError, ValueError, EOFError) as exc:
        return [(loc + ("path",), f"{ds.path} is not a readable .npz file ({exc})")]
    except InputError as exc:
        return [(loc + ("path",), str(exc))]
    problems += [(loc + (key,), msg) for key, arr in arrays.items()
                if (msg := array_problem(arr, f"{ds.path}: array {getattr(ds, key)!r}"))]
    x, y = arrays["x"], arrays.get("y")
    if not problems and y is not None and len(y) != len(x):
        problems.append((loc + ("y",), f"{ds.path}: {ds.x} has {len(x)} rows but {ds.y} has {len(y)}"))
    return problems


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
    """model.labels must name as many classes as the model's first output has, where the model file says how
    many (an ONNX graph's output shape; a .keras archive whose output layer is a Dense layer)."""
    if not spec.model.labels or spec.model.task != "classification":
        return None
    found = model_classes(base / spec.model.path, fmt)
    if found is None:
        return None
    output, classes = found
    names = len(read_labels(base / spec.model.labels))
    if classes in (1, names):  # 1: a sigmoid unit, which two names may label
        return None
    return (f"{spec.model.labels!r} names {names} classes, but the model's output {output!r} has {classes}: "
            "one name per output column, in order")


def model_classes(path: Path, fmt: str) -> tuple[str, int] | None:
    """(first output's name, its number of columns) from the model file's header; None when it does not say."""
    st = path.stat()
    if fmt == "onnx":
        from deployc.compiler.resolved import onnx_file_io

        try:
            _, outs = onnx_file_io(path.resolve(), st.st_mtime_ns, st.st_size)
        except InputError:
            return None  # onnx_problem reports the file
        if outs and len(outs[0].shape) == 2 and outs[0].shape[1] > 0:
            return outs[0].name, outs[0].shape[1]
        return None
    if fmt == "keras" and path.suffix == ".keras":
        return _keras_dense_output(keras_archive_config(path))
    return None


def _keras_dense_output(config: Any) -> tuple[str, int] | None:
    try:
        inner = config["config"]
        layers = inner["layers"]
        if config["class_name"] == "Sequential":
            last = layers[-1]
        elif config["class_name"] == "Functional":
            refs = inner["output_layers"]
            name = (refs if refs and isinstance(refs[0], str) else refs[0])[0]
            if len(refs) > 1 and not isinstance(refs[0], str):
                return None  # several outputs: which one is judged is not known here
            last = next(layer for layer in layers if layer.get("name", layer["config"].get("name")) == name)
        else:
            return None
        if last["class_name"] != "Dense":
            return None
        return str(last["config"]["name"]), int(last["config"]["units"])
    except (KeyError, TypeError, ValueError, IndexError, StopIteration):
        return None


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
