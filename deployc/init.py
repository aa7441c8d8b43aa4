"""`deployc init MODEL [--data FILE.npz ...]`: a starting deploy.yaml for a model file, read from the model and
its data without TensorFlow, Keras or onnx (the core install runs it).

The model's inputs and outputs come from its own header: a `.keras` archive's config.json, an ONNX graph and a
SavedModel's `saved_model.pb`, both read as protobuf wire data (deployc/compiler/onnx_refs.py). The task is
guessed from the op that produces the prediction output, the optimization pass from the model's layers and the
data given, the gates from the task. The spec is rendered from one document, parsed back and validated in a
temporary file beside the target, then moved into place by a hard link, which never replaces a file
(docs/init.md).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployc.errors import EXIT_OK, DeploycError, InputError, Problem, describe_os_error, input_error

if TYPE_CHECKING:
    from deployc.compiler.model_header import ModelInfo, Output
    from deployc.compiler.resolved import Tensor

ROLES = ("eval", "calibration", "train")
ROLE_WORDS = {"eval": {"eval", "evaluation", "test", "testing", "val", "valid", "validation", "holdout", "dev"},
              "calibration": {"calib", "calibration", "cal", "calibrate"}, "train": {"train", "training"}}
LABEL_KEYS = ("y", "label", "labels", "target", "targets", "ytrue", "class", "classes")
INPUT_KEYS = ("x", "inputs", "input", "features", "data")  # the array of a model of one input, by convention
CALIBRATION_ROWS, EVAL_ROWS = 256, 1000  # rows taken when a file of another role stands in
GENERIC_NAMES = {"model", "models", "saved-model", "savedmodel", "saved", "export", "exported", "final", "best",
                 "latest", "output", "outputs", "checkpoint", "weights", "serving", "src", "tmp"}
SIZES_MB = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*|[0-9]+(\.[0-9]+){2,}|[1-9][0-9]*[smhd]")  # plain YAML strings
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


@dataclass(frozen=True)
class DataFile:
    arg: str  # as given
    rel: str  # relative to the spec's folder
    role: str | None  # eval, calibration or train: asked for (ROLE=FILE) or said by the file's name
    arrays: dict[str, tuple[int, ...]]  # key -> shape


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deployc init", description="Write a starting deploy.yaml for a model file: its inputs, task, data "
        "sets, an optimization pass, gates, the local target and SLOs, read from the model and the .npz files. "
        "Never replaces an existing file.", epilog="Data roles: a file named for its role (eval/test/val, calib, "
        "train) takes it; ROLE=FILE says it; the others fill eval, calibration, train in order (docs/init.md).")
    p.add_argument("model", type=Path, metavar="MODEL", help="a .keras file, a SavedModel folder or a .onnx file")
    p.add_argument("--data", action="extend", nargs="+", default=[], metavar="FILE.npz",
                   help="data files (.npz), or ROLE=FILE with ROLE eval, calibration or train")
    p.add_argument("-o", "--output", type=Path, help="the spec to write (default: deploy.yaml beside the model)")
    p.add_argument("--name", type=_name, help="the spec's name (default: from the model's file or folder name)")
    p.add_argument("--task", choices=("classification", "binary", "multilabel", "regression"),
                   help="what the prediction output holds (default: guessed from the op that produces it)")
    p.add_argument("--allow-python-code", action="store_true", help="set model.allow_python_code: the model "
                   "holds Lambda layers and you trust the file")
    return p


def _name(value: str) -> str:
    from deployc.schema.base import NAME_RE

    if not re.fullmatch(NAME_RE, value):
        raise argparse.ArgumentTypeError(f"{value!r}: use lower-case letters, digits and '-' (at most 63)")
    return value


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        print(_init(args))
        return EXIT_OK
    except DeploycError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(input_error(exc), file=sys.stderr)
        return input_error(exc).exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _init(args: argparse.Namespace) -> str:
    """Write the spec; returns what to print."""
    from deployc.compiler.model_header import read_model

    out = args.output if args.output is not None else args.model.parent / "deploy.yaml"
    spec_dir = _spec_folder(out)
    model_rel = _inside(args.model, spec_dir, out)
    model = read_model(args.model)
    files = [_data_file(arg, spec_dir, out) for arg in args.data]
    doc, comments, notes = spec_document(model, model_rel, files, spec_dir, args)
    text = render(doc, comments, _header(out, spec_dir))
    _write(out, text, doc)
    task, passes = doc["model"]["task"], [f"{k} {v.get('mode', '')}".strip() for p in doc["optimize"]
                                          for k, v in p.items()]
    sets = ", ".join(doc.get("data", {})) or "none"
    lines = [f"wrote {out}: {doc['name']}, {task}, {len(model.inputs)} input(s), data sets: {sets}, "
             f"optimize: {', '.join(passes) or 'nothing'}, target local",
             f"next: review it, then `deployc build {out}`"]
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return "\n".join(lines)


# --- paths


def _spec_folder(out: Path) -> Path:
    """The resolved folder of the spec to write; refuses an existing path (never overwritten)."""
    if os.path.lexists(out):
        what = "a folder" if out.is_dir() else "a file" if not out.is_symlink() else "a symbolic link"
        raise InputError(f"{out}: already exists ({what}); deployc init never replaces a file: remove it or "
                         "choose another path with -o")
    folder = out.parent
    if not folder.is_dir():
        raise InputError(f"{out}: the folder {str(folder) or '.'} does not exist" if not folder.exists() else
                         f"{out}: {folder} is not a folder")
    try:
        return folder.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise InputError(f"{folder}: cannot resolve ({exc})") from None


def _inside(path: Path, spec_dir: Path, out: Path) -> str:
    """`path` as the spec names it: relative to the spec's folder, which it may not leave."""
    from deployc.compiler.inputs import resolve, special_kind

    try:
        st = os.stat(path)
    except FileNotFoundError:
        broken = os.path.islink(path)
        raise InputError(f"{path}: {'a broken symbolic link' if broken else 'no such file or folder'}") from None
    except OSError as exc:
        raise InputError(describe_os_error(exc) if exc.filename else f"{path}: {exc.strerror or exc}") from None
    if what := special_kind(st.st_mode):
        raise InputError(f"{path}: is {what}, not a regular file")
    given = Path(os.path.abspath(path))
    for base, target in ((Path(os.path.abspath(out.parent)), given), (spec_dir, given.resolve())):
        if target.is_relative_to(base) and target != base:
            rel = target.relative_to(base).as_posix()
            break
    else:
        raise InputError(f"{path}: outside {spec_dir}, the folder of {out}; a spec names files inside its own "
                         "folder: write it higher up with -o FOLDER/deploy.yaml")
    try:
        resolve(spec_dir, rel)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    return rel


# --- data files


def _data_file(arg: str, spec_dir: Path, out: Path) -> DataFile:
    import numpy as np

    from deployc.compiler.inputs import open_regular

    role, _, rest = arg.partition("=")
    if rest and role in ROLES:
        asked: str | None = role
        path = Path(rest)
    else:
        asked, path = None, Path(arg)
    rel = _inside(path, spec_dir, out)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a .npz file")
    arrays: dict[str, tuple[int, ...]] = {}
    try:
        with open_regular(path) as f:
            npz = np.load(f, allow_pickle=False)
            if not hasattr(npz, "files"):
                raise InputError(f"{path}: holds one array, not named arrays: save the data with np.savez(file, "
                                 "x=..., y=...)")
            with npz:
                for key in npz.files:
                    arrays[key] = tuple(npz[key].shape)
    except InputError:
        raise
    except Exception as exc:  # whatever numpy and zipfile raise on a file that is not an .npz archive
        why = str(exc) if len(str(exc)) <= 100 and "pickle" not in str(exc) else "not a zip of .npy arrays"
        raise InputError(f"{path}: not a readable .npz file, as np.savez writes ({why})") from None
    if not arrays:
        raise InputError(f"{path}: holds no arrays")
    words = set(re.split(r"[^a-z0-9]+", path.stem.lower()))
    named = [r for r in ROLES if words & ROLE_WORDS[r]]
    return DataFile(str(path), rel, asked or (named[0] if len(named) == 1 else None), arrays)


def assign_roles(files: list[DataFile]) -> dict[str, DataFile]:
    """Files named for a role (or given as ROLE=FILE) take it; the others fill the free roles in the order
    eval, calibration, train."""
    roles: dict[str, DataFile] = {}
    seen: set[str] = set()
    for f in files:
        if f.rel in seen:
            raise InputError(f"{f.arg}: given twice")
        seen.add(f.rel)
        if f.role is not None:
            if f.role in roles:
                raise InputError(f"{roles[f.role].arg} and {f.arg} are both data.{f.role}: give one file per role "
                                 "(or say each one's role, as eval=FILE)")
            roles[f.role] = f
    free = [r for r in ROLES if r not in roles]
    for f in files:
        if f.role is None:
            if not free:
                raise InputError(f"{f.arg}: no data set left for it (eval, calibration and train are taken)")
            roles[free.pop(0)] = f
    return {r: roles[r] for r in ROLES if r in roles}


def _norm(key: str) -> str:
    """An array key or input name compared loosely: lower case, no separators, no role word (x_test -> x)."""
    words = [w for w in re.split(r"[^a-z0-9]+", key.lower()) if w]
    kept = [w for w in words if not any(w in ws for ws in ROLE_WORDS.values())] or words
    return "".join(kept)


def _same(key: str, name: str, level: int) -> bool:
    """Whether array `key` is named for input `name`: exactly (level 0), but for case (1), loosely (2)."""
    if level == 0:
        return key == name
    if level == 1:
        return key.lower() == name.lower()
    return _norm(key) in (_norm(name), "x" + _norm(name), _norm(name) + "s")


def match_arrays(f: DataFile, inputs: tuple[Tensor, ...], labels: bool) -> tuple[str | dict[str, str], str | None]:
    """(x, y) of a data set: each model input's array (by name, loosely; a model of one input also takes the
    file's only array, or one named x), and the label array when `labels`."""
    keys = list(f.arrays)
    found: dict[str, str] = {}
    for t in inputs:
        for level in range(3):
            hits = [k for k in keys if _same(k, t.name, level) and k not in found.values()]
            if len(hits) == 1:
                found[t.name] = hits[0]
                break
            if len(hits) > 1:
                raise InputError(f"{f.arg}: arrays {', '.join(hits)} could each be the input {t.name!r}: rename "
                                 "the one that is not")
    y = next((k for want in LABEL_KEYS for k in keys if _norm(k) == want and k not in found.values()), None)
    if len(inputs) == 1 and not found:
        rest = [k for k in keys if k != y]
        named = [k for k in rest if _norm(k) in INPUT_KEYS]
        pick = named if named else rest
        if len(pick) != 1:
            raise InputError(f"{f.arg}: cannot tell which array is the input {inputs[0].name!r} (it has: "
                             f"{', '.join(keys)}): name it {inputs[0].name!r} or x")
        found[inputs[0].name] = pick[0]
    missing = [t.name for t in inputs if t.name not in found]
    if missing:
        raise InputError(f"{f.arg}: no array for the model's input(s) {', '.join(missing)} (it has: "
                         f"{', '.join(keys)}); name each array after its input")
    for t in inputs:
        shape, want = f.arrays[found[t.name]], t.shape
        fits = len(shape) == len(want) and all(w <= 0 or s == w for s, w in zip(shape, want, strict=True))
        if want and not fits:
            raise InputError(f"{f.arg}: array {found[t.name]!r} has shape {list(shape)}, and the model's input "
                             f"{t.name!r} takes {list(want)} (-1: any size)")
    x: str | dict[str, str] = found[inputs[0].name] if len(inputs) == 1 else found
    return x, (y if labels else None)


# --- the spec


def guess_task(out: Output) -> tuple[str, str]:
    """(task, why) from the op that produces the prediction output."""
    shown = _shown(out.name)
    cols = f"{out.columns} columns" if out.columns else "its columns"
    if out.activation == "softmax":
        return "classification", f"{shown} is a softmax over {cols}"
    if out.activation == "sigmoid":
        if out.columns is not None and out.columns > 1:
            return "multilabel", f"{shown} is a sigmoid over {cols}, one decision each"
        return "binary", f"{shown} is one sigmoid probability"
    if out.activation is None:
        task = "regression" if out.columns == 1 else "classification"
        return task, f"the model file does not say what computes {shown}: check model.task"
    return "regression", (f"{shown} comes from a {out.activation} op, not a softmax or sigmoid (logits of a "
                          "classifier are model.task classification)")


def spec_document(model: ModelInfo, model_rel: str, files: list[DataFile], spec_dir: Path,
                  args: argparse.Namespace) -> tuple[dict[str, Any], dict[tuple[Any, ...], str], list[str]]:
    """(the spec as data, comments by key path, notes to print)."""
    pred = model.outputs[0]
    task, why = guess_task(pred)
    if args.task:
        task, why = args.task, "--task"
    else:
        why = f"guessed: {why}"
    comments: dict[tuple[Any, ...], str] = {}
    notes: list[str] = []
    m: dict[str, Any] = {"path": model_rel}
    comments[("model", "path")] = "inputs: " + _tensors(model.inputs)
    labels = _labels_file(model_rel, spec_dir, task, pred)
    if labels:
        m["labels"], comments[("model", "labels")] = labels
    m["task"], comments[("model", "task")] = task, why
    if len(model.outputs) > 1:
        m["prediction"] = pred.name
        comments[("model", "prediction")] = f"the output the gates judge, of {len(model.outputs)}: " + ", ".join(
            _shown(o.name) for o in model.outputs[:6])
    if args.allow_python_code:
        m["allow_python_code"] = True
        comments[("model", "allow_python_code")] = "its Lambda layers run when the build loads it: trusted files only"
    roles = assign_roles(files)
    data: dict[str, Any] = {}
    for role, f in roles.items():
        x, y = match_arrays(f, model.inputs, labels=role != "calibration")
        data[role] = {"path": f.rel, "x": x, **({"y": y} if y else {})}
    for source in ("train", "calibration"):
        if "eval" not in data and source in data:
            data["eval"] = _limited(data[source], roles[source], EVAL_ROWS)
            comments[("data", "eval")] = f"the {source} rows: a held-out file is better"
    mode, pass_why = _quantize_mode(model, "calibration" in data or "train" in data)
    if mode == "int8-static" and "calibration" not in data:
        data["calibration"] = _limited({"path": data["train"]["path"], "x": data["train"]["x"]}, roles["train"],
                                       CALIBRATION_ROWS)
        comments[("data", "calibration")] = "the first train rows: int8-static calibrates on them"
    data = {r: data[r] for r in ROLES if r in data}
    optimize = [{"quantize": {"mode": mode}}] if mode else []
    comments[("optimize", 0) if mode else ("optimize",)] = pass_why
    doc: dict[str, Any] = {"apiVersion": "deployc/v1", "name": args.name or _default_name(model_rel, spec_dir),
                           "version": "0.1.0", "model": m}
    if data:
        doc["data"] = data
    doc["optimize"] = optimize
    doc["gates"] = _gates(task, data.get("eval"), mode, _size_mb(spec_dir / model_rel), comments)
    doc["targets"] = {"local": {"port": 8080}}
    doc["slos"] = [{"kind": "availability", "objective": 99.9, "window": "30d"},
                   {"kind": "latency", "objective": 99, "threshold_ms": 50, "window": "30d"}]
    if "eval" in data and task in ("classification", "binary"):
        doc["slos"].append({"kind": "stability", "metric": "psi", "max_drift": 0.2, "window": "1h",
                            "min_requests": 200})
    if not data:
        found = sorted(p.relative_to(spec_dir).as_posix() for pattern in ("*.npz", "*/*.npz")
                       for p in spec_dir.glob(pattern) if not p.relative_to(spec_dir).parts[0].startswith("."))
        hint = f" (found in its folder: {', '.join(found[:6])})" if found else ""
        notes.append("no --data: the spec has no data.eval, so a build checks only the artifact's size, not what "
                     f"it predicts. Give the .npz files{hint}: remove the spec and run deployc init again with "
                     "--data, or add data.eval and the gates as its comments say")
    return doc, comments, notes


def _limited(ds: dict[str, Any], f: DataFile, rows: int) -> dict[str, Any]:
    """`ds` on the first `rows` rows of its file (a file of another role standing in)."""
    n = next(iter(f.arrays.values()))[:1]
    return {**ds, "limit": rows} if n and n[0] > rows else dict(ds)


def _quantize_mode(model: ModelInfo, calibration: bool) -> tuple[str | None, str]:
    """The quantize mode for the model (docs/optimize.md): int8-dynamic for dense and attention layers, int8-static
    for convolutions when there are rows to calibrate on, else float16; none for a model already int8."""
    if model.quantized:
        return None, "the model is already quantized (int8 ops): nothing to add"
    if not model.conv:
        return "int8-dynamic", "int8 weights for dense, attention and embedding layers; needs no data"
    if calibration:
        return "int8-static", "convolutions: int8 activations, calibrated on data.calibration"
    return "float16", "convolutions: int8-static is faster on CPUs, given a calibration file (--data calib.npz)"


def _gates(task: str, ev: dict[str, Any] | None, mode: str | None, size_mb: float,
           comments: dict[tuple[Any, ...], str]) -> dict[str, Any]:
    gates: dict[str, Any] = {}
    labelled = ev is not None and "y" in ev
    if ev is not None:
        if task == "classification" or task == "multilabel":
            if labelled:
                gates["max_accuracy_drop"] = 0.01
                comments[("gates", "max_accuracy_drop")] = "one point of accuracy on data.eval"
            gates["min_agreement"] = 0.97 if mode == "int8-static" else 0.98
            comments[("gates", "min_agreement")] = "share of rows whose decision matches the original model's"
        elif task == "binary" and labelled:
            gates["max_auc_drop"] = 0.005
            comments[("gates", "max_auc_drop")] = "ROC AUC on data.eval's labels"
        elif task == "binary":
            gates["min_agreement"] = 0.95
            comments[("gates", "min_agreement")] = "share of rows on the same side of the threshold"
        elif labelled:
            gates["max_r2_drop"] = 0.01
            comments[("gates", "max_r2_drop")] = "R² on data.eval's targets"
        else:
            gates["max_relative_error"] = 0.05
            comments[("gates", "max_relative_error")] = "||artifact - original|| / ||original|| on data.eval"
    gates["max_size_mb"] = next((s for s in SIZES_MB if s >= 1.5 * size_mb), SIZES_MB[-1])
    comments[("gates", "max_size_mb")] = f"an upper bound (the model: {size_mb:.3g} MB): set the size you need"
    if ev is None:
        more = _gates(task, {"y": "y"}, mode, size_mb, {})
        comments[("gates",)] = "without data.eval only the size; with it, add " + ", ".join(
            f"{k}: {v}" for k, v in more.items() if k != "max_size_mb")
    return gates


def _labels_file(model_rel: str, spec_dir: Path, task: str, pred: Output) -> tuple[str, str] | None:
    """labels.txt beside the model, when it names as many classes as the prediction output has."""
    from deployc.compiler.content import read_labels

    if task == "regression":
        return None
    folder = (spec_dir / model_rel).parent
    rel = (folder / "labels.txt").relative_to(spec_dir).as_posix()
    try:
        names = read_labels(spec_dir / rel)
    except (InputError, OSError):
        return None
    want = 2 if task == "binary" else pred.columns
    if want is not None and len(names) != want:
        return None
    return rel, f"found beside the model: {len(names)} class names"


def _default_name(model_rel: str, spec_dir: Path) -> str:
    """The model's file or folder name, else its folder's, else the spec folder's, as a spec name."""
    path = spec_dir / model_rel
    for raw in (path.stem, path.parent.name, spec_dir.name):
        slug = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", raw.lower())).strip("-")[:63].strip("-")
        if slug and slug not in GENERIC_NAMES and not slug.isdigit():
            return slug
    return "model"


def _size_mb(path: Path) -> float:
    """The model's size on disk (a folder's files summed; links not followed: validation walks them)."""
    if not path.is_dir():
        return path.stat().st_size / 1e6
    total = 0
    for folder, _, names in os.walk(path):
        for n in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, n)).st_size
    return total / 1e6


def _tensors(tensors: tuple[Tensor, ...]) -> str:
    shown = [f"{_shown(t.name)} {t.dtype} {list(t.shape) if t.shape else '(shape unknown)'}" for t in tensors[:4]]
    return ", ".join(shown) + (f" and {len(tensors) - 4} more" if len(tensors) > 4 else "")


def _shown(name: str) -> str:
    return name if _PLAIN.fullmatch(name) else json.dumps(name)


def _header(out: Path, spec_dir: Path) -> list[str]:
    schema = Path(__file__).resolve().parent / "schema" / "deploy.schema.json"
    try:
        ref = os.path.relpath(schema, spec_dir).replace(os.sep, "/")
    except ValueError:  # another drive
        ref = schema.as_uri()
    return [f"# yaml-language-server: $schema={ref}",
            f"# Written by `deployc init`: review the guesses, then `deployc validate {out.name}`, "
            f"`deployc build {out.name}`."]


# --- rendering and writing


def _scalar(value: Any) -> str:
    """A value as a YAML scalar that reads back as the same value: plain where that is safe, else JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in ("true", "false", "null", "yes", "no", "on", "off"):
        return text
    return json.dumps(text)


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_scalar(k)}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return _scalar(value)


def render(doc: dict[str, Any], comments: dict[tuple[Any, ...], str], header: list[str]) -> str:
    """The spec as YAML: top-level keys in blocks, each entry on one line, comments at the end of lines."""
    lines = [_UNSAFE.sub("?", h) for h in header]

    def add(line: str, path: tuple[Any, ...]) -> None:
        note = comments.get(path)
        lines.append(f"{line:<40}  # {_UNSAFE.sub('?', note)}" if note else line)

    for key, value in doc.items():
        if isinstance(value, dict) and value:
            add(f"{key}:", (key,))
            for k, v in value.items():
                add(f"  {_scalar(k)}: {_flow(v)}", (key, k))
        elif isinstance(value, list) and value:
            add(f"{key}:", (key,))
            for i, v in enumerate(value):
                one = isinstance(v, dict) and len(v) == 1  # a pass: `- quantize: {mode: ...}`
                item = f"{_scalar(next(iter(v)))}: {_flow(next(iter(v.values())))}" if one else _flow(v)
                add(f"  - {item}", (key, i))
        else:
            add(f"{key}: {_flow(value)}", (key,))
    return "\n".join(lines) + "\n"


class SpecNotValid(InputError):
    """The spec init composed does not validate (bad data values, say): nothing is written."""

    def __init__(self, problems: list[Problem], out: Path):
        self.problems, self.out = problems, out
        super().__init__("\n".join(str(p) for p in problems))

    def lines(self) -> list[str]:
        shown = [f"{self.out}: {p.path}: {p.message}" if p.path else f"{self.out}: {p.message}"
                 for p in self.problems]
        hints = []
        for p in self.problems:
            hint = ("rerun with --allow-python-code if you trust the file" if "Python code" in p.message else
                    "fix the labels, or choose the task with --task" if p.path.startswith("data.") and
                    p.path.endswith(".y") else "fix the data" if p.path.startswith("data.") else
                    "choose the task with --task" if p.path.startswith(("model.task", "model.labels")) else None)
            if hint and hint not in hints:
                hints.append(hint)
        return shown + [f"{self.out}: not written: the spec deployc init composed does not validate (above)"
                        + "".join(f"; {h}" for h in hints)]


def _write(out: Path, text: str, doc: dict[str, Any]) -> None:
    """Write `text` to a temporary file beside `out`, check that it parses back to `doc` and validates, then
    link it into place: a link never replaces a file, so an `out` that appeared meanwhile is kept."""
    import tempfile

    from deployc.compiler.load import load_spec
    from deployc.compiler.validate import validate
    from deployc.errors import SpecError

    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        loaded = load_spec(Path(tmp))
        if loaded.data != doc:
            raise DeploycError(f"{out}: internal error: the rendered spec does not read back as composed")
        try:
            validate(loaded)
        except SpecError as exc:
            raise SpecNotValid([Problem(str(out), p.line, p.column, p.path, p.message) for p in exc.problems],
                               out) from None
        try:
            os.link(tmp, out)
        except FileExistsError:
            raise InputError(f"{out}: already exists; deployc init never replaces a file") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP):  # no hard links here
                raise input_error(exc, str(out)) from None
            if os.path.lexists(out):
                raise InputError(f"{out}: already exists; deployc init never replaces a file") from None
            os.rename(tmp, out)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


