"""Stage 2: validate the loaded document against the schema and the filesystem; collect every problem."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from deployc.compiler.load import LoadedSpec, position, value_position
from deployc.errors import Problem, SpecError
from deployc.schema.base import NAME_RE
from deployc.schema.envref import ALLOWED_HINT, ENV_KEY, credential_ref_problem, is_env_ref
from deployc.schema.spec import CrossFieldErrors, DeploySpec

_TOKENS = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----|\bgh[pousr]_[A-Za-z0-9]{36}\b|\bxox[abpr]-[A-Za-z0-9-]{10,}"
                     r"|\bsk-[A-Za-z0-9]{32,}\b")


def scan_secrets(loaded: LoadedSpec) -> list[Problem]:
    """Anything in the spec that looks like a credential, wherever it sits: refused with its position."""
    from deployc.targets.sagemaker import credential_problem

    problems: list[Problem] = []

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            if isinstance(v, (dict, list)):
                walk(v, path + (k,))
            elif isinstance(v, str):
                msg = credential_problem(str(k), v)
                if msg is None and _TOKENS.search(v):
                    msg = (f"{str(k)!r} holds what looks like a private key or access token; "
                           "secrets never go in the spec")
                if msg:
                    line, col = value_position(loaded.tree, path + (k,))
                    problems.append(Problem(loaded.display, line, col, dotted(path + (k,)), msg))

    walk(loaded.tree, ())
    return problems


def env_ref_problems(loaded: LoadedSpec) -> list[Problem]:
    """`!ENV` anywhere but a value of targets.sagemaker.environment, or naming the deployer's AWS credentials:
    refused at its own position (the schema, which checks the latter too, can only point at the mapping)."""
    problems: list[Problem] = []

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if is_env_ref(node):
            allowed = len(path) == 4 and path[:3] == ("targets", "sagemaker", "environment")
            msg = credential_ref_problem(node[ENV_KEY]) if allowed else ALLOWED_HINT
            if msg:
                line, col = value_position(loaded.tree, path)
                problems.append(Problem(loaded.display, line, col, dotted(path), msg))
            return
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            walk(v, path + (k,))

    walk(loaded.data, ())
    return problems


def validate(loaded: LoadedSpec) -> DeploySpec:
    """The validated spec, or a SpecError listing every problem with file:line:col."""
    secrets = scan_secrets(loaded) + env_ref_problems(loaded)
    try:
        spec = DeploySpec.model_validate(loaded.data)
    except ValidationError as exc:
        problems = _problems(loaded, exc)
        # a misplaced !ENV is reported once, as such, not as a wrong type at (or inside) its field
        misplaced = [s.path for s in secrets if s.message == ALLOWED_HINT]
        problems = [p for p in problems if p.message == "unknown field" or not any(
            p.path == m or p.path.startswith((m + ".", m + "[")) for m in misplaced)]
        # a refused reference is reported at its entry, not (again) at the environment mapping
        problems = [p for p in problems if not any(s.path.startswith(p.path + ".") and s.message in p.message
                                                   for s in secrets)]
        # a secret found by the scan is reported at its own entry, not at the mapping pydantic points to
        problems = [p for p in problems
                    if not any(s.path.startswith(p.path + ".") and "looks like" in p.message for s in secrets)]
        known = {(p.line, p.path) for p in problems}
        raise SpecError(problems + [p for p in secrets if (p.line, p.path) not in known]) from None
    if secrets:
        raise SpecError(secrets)
    problems = check_paths(loaded, spec)
    if problems:
        raise SpecError(problems)
    return spec


def _problems(loaded: LoadedSpec, exc: ValidationError) -> list[Problem]:
    out: list[Problem] = []
    seen: set[tuple[int, int, str, str]] = set()
    for err in exc.errors(include_url=False):
        cross = (err.get("ctx") or {}).get("error")
        items = ([(tuple(err["loc"]) + loc, msg) for loc, msg in cross.problems]
                 if isinstance(cross, CrossFieldErrors) else [(tuple(err["loc"]), _message(err))])
        for loc, msg in items:
            line, col, path = position(loaded.tree, loc)
            key = (line, col, path, msg)
            if key not in seen:
                seen.add(key)
                out.append(Problem(loaded.display, line, col, path, msg))
    return out


def _message(err: ErrorDetails) -> str:
    kind, msg = err["type"], err["msg"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == NAME_RE:
        return "use lower-case letters, digits and '-' (at most 63, starting and ending with a letter or digit)"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind == "union_tag_invalid":
        return f"unknown {ctx.get('discriminator', 'kind').strip(chr(39))} {ctx.get('tag')!r}: use one of " \
               f"{ctx.get('expected_tags')}"
    if kind == "literal_error":
        return f"{msg} (got {err.get('input')!r})"
    got = err.get("input")
    if kind.endswith("_type") and not isinstance(got, (dict, list)):
        return f"{msg} (got {got!r})"
    return msg


def check_paths(loaded: LoadedSpec, spec: DeploySpec) -> list[Problem]:
    """Every path is relative to the spec's folder, stays inside it (symlinks resolved, folders walked whole),
    names regular files only; then what those files reveal (data arrays, labels, ONNX external data)."""
    from deployc.compiler.inputs import check_tree
    from deployc.schema.spec import resolved_format

    base = loaded.path.parent.resolve()
    wanted: list[tuple[tuple[Any, ...], str, str]] = [(("model", "path"), spec.model.path, "any")]
    if spec.model.labels:
        wanted.append((("model", "labels"), spec.model.labels, "file"))
    for which in ("eval", "calibration", "train"):
        ds = getattr(spec.data, which)
        if ds is not None:
            wanted.append((("data", which, "path"), ds.path, "file"))
    for i, item in enumerate(spec.optimize):
        student = getattr(getattr(item, "distill", None), "student", None)
        if student:
            wanted.append((("optimize", i, "distill", "student"), student, "file"))
    found: list[tuple[tuple[Any, ...], str]] = []
    for loc, rel, kind in wanted:
        msg = check_tree(base, rel, kind)
        if msg:
            found.append((loc, msg))
    if not found:
        found = _content_problems(base, spec, resolved_format(spec.model))
    problems = []
    for loc, msg in found:
        line, col = value_position(loaded.tree, loc)
        problems.append(Problem(loaded.display, line, col, dotted(loc), msg))
    return problems


def _content_problems(base: Path, spec: DeploySpec, fmt: str) -> list[tuple[tuple[Any, ...], str]]:
    from deployc.compiler import content

    found: list[tuple[tuple[Any, ...], str]] = []
    if fmt == "onnx":
        msg = content.onnx_problem(base, spec.model.path)
        if msg:
            found.append((("model", "path"), msg))
    elif fmt == "keras" and spec.model.path.endswith(".keras") and not spec.model.allow_python_code:
        msg = content.keras_code_problem(base, spec.model.path)
        if msg:
            found.append((("model", "path"), msg))
    if spec.model.labels:
        msg = content.labels_problem(base, spec.model.labels) or content.labels_count_problem(base, spec, fmt)
        if msg:
            found.append((("model", "labels"), msg))
    msg = content.task_shape_problem(base, spec, fmt)
    if msg:
        found.append((("model", "task"), msg))
    from deployc.compiler.resolved import model_inputs

    sets = [(w, ds) for w in ("eval", "calibration", "train") if (ds := getattr(spec.data, w)) is not None]
    inputs = model_inputs(spec, base) if sets or _openvino_shapes(spec) else ()
    dtypes = {t.name: t.dtype for t in inputs}
    for which, ds in sets:
        found += content.data_problems(base, which, ds, dtypes, spec.model.task)
    return (found + _declared_inputs_problems(base, spec) + _input_mapping_problems(sets, [t.name for t in inputs])
            + _prediction_problems(base, spec, fmt) + _explain_input_problems(spec, inputs)
            + _watched_feature_problems(spec, inputs) + _capture_model_problems(base, spec, fmt)
            + _openvino_shape_problems(spec, inputs))


def _openvino_shapes(spec: DeploySpec) -> list[tuple[int, dict[str, list[int]]]]:
    """(optimize index, openvino.shapes) of each quantize item that declares static shapes."""
    found = []
    for i, item in enumerate(spec.optimize):
        cfg = getattr(item, "quantize", None)
        shapes = getattr(getattr(cfg, "openvino", None), "shapes", None)
        if shapes:
            found.append((i, shapes))
    return found


def _openvino_shape_problems(spec: DeploySpec, inputs: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], str]]:
    """`quantize.openvino.shapes` must name the model's inputs, with their rank, keeping the axes the model fixes."""
    if not inputs:
        return []
    known = {t.name: tuple(t.shape) for t in inputs}
    found: list[tuple[tuple[Any, ...], str]] = []
    for i, shapes in _openvino_shapes(spec):
        for name, dims in shapes.items():
            at = ("optimize", i, "quantize", "openvino", "shapes", name)
            if name not in known:
                found.append((at, f"the model has no input named {name!r} (its inputs: {', '.join(known)})"))
            elif len(dims) != len(known[name]):
                found.append((at, f"{dims} has {len(dims)} axes; input {name} has {len(known[name])} "
                              f"(shape {list(known[name])})"))
            elif any(m > 0 and d > 0 and m != d for m, d in zip(known[name], dims, strict=True)):
                found.append((at, f"{dims} changes an axis the model fixes (input {name} has shape "
                              f"{list(known[name])})"))
    return found


def _capture_model_problems(base: Path, spec: DeploySpec, fmt: str) -> list[tuple[tuple[Any, ...], str]]:
    """`monitoring.capture` must name the model's inputs and outputs (where the model file or the spec names
    them), mask only what it captures, and round or bucket numbers, not booleans."""
    from deployc.compiler import content
    from deployc.compiler.resolved import model_inputs

    cap = spec.monitoring.capture if spec.monitoring is not None else None
    if cap is None:
        return []
    at = ("monitoring", "capture")
    ins = {t.name: t.dtype for t in model_inputs(spec, base)}
    outs = content.output_names(base, spec, fmt)
    found: list[tuple[tuple[Any, ...], str]] = []
    for which, known in (("inputs", list(ins)), ("outputs", outs)):
        for i, name in enumerate(getattr(cap, which) or ()):
            if known and name not in known:
                found.append((at + (which, i), f"the model has no {which[:-1]} named {name!r} (its {which}: "
                              f"{', '.join(known)})"))
    captured_ins = list(ins) if cap.inputs is None else list(cap.inputs)
    captured_outs = list(outs) if cap.outputs is None else list(cap.outputs)
    for name, rule in cap.fields.items():
        if ins and outs and name not in ins and name not in outs:
            found.append((at + ("fields", name), f"the model has no input or output named {name!r} (inputs: "
                          f"{', '.join(ins)}; outputs: {', '.join(outs)})"))
        elif (cap.inputs is not None or ins) and (cap.outputs is not None or outs) \
                and name not in captured_ins + captured_outs and rule.mask != "drop":
            found.append((at + ("fields", name), f"{name} is not captured (monitoring.capture.inputs and outputs "
                          "do not list it), so its rule would never apply"))
        if rule.mask in ("round", "bucket") and ins.get(name) == "bool":
            found.append((at + ("fields", name, "mask"), f"{name} holds booleans: {rule.mask} applies to numbers "
                          "(use drop or hash)"))
    return found


def _watched_feature_problems(spec: DeploySpec, inputs: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], str]]:
    """An input-drift SLO's `features` must name elements of the model's inputs (where their shapes are known)."""
    from deployc.schema.slo import InputDriftSLO

    shapes = {t.name: t.shape[1:] for t in inputs}
    found: list[tuple[tuple[Any, ...], str]] = []
    for i, s in enumerate(spec.slos):
        if not isinstance(s, InputDriftSLO) or not s.features or not shapes:
            continue
        for j, f in enumerate(s.features):
            name, _, rest = f.rpartition("[")
            index = int(rest.rstrip("]"))
            if name not in shapes:
                found.append((("slos", i, "features", j), f"no model input named {name!r} (its inputs: "
                              f"{', '.join(shapes)})"))
                continue
            size = 1
            for d in shapes[name]:
                size *= d
            if all(d > 0 for d in shapes[name]) and index >= size:
                found.append((("slos", i, "features", j), f"{name} holds {size} values a row: indices 0 to "
                              f"{size - 1}"))
    return found


def _explain_input_problems(spec: DeploySpec, inputs: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], str]]:
    """What the model's inputs (where the spec or the model file names them) rule out for `explain:`: integrated
    gradients of integer inputs, heatmaps of inputs it lacks or of the wrong size."""
    ex = spec.explain
    if ex is None or not inputs:
        return []
    found: list[tuple[tuple[Any, ...], str]] = []
    if ex.method == "integrated-gradients":
        ints = [t.name for t in inputs if not t.dtype.startswith("float")]
        if ints:
            found.append((("explain", "method"), f"integrated-gradients follows gradients, and input(s) "
                          f"{', '.join(ints)} hold integers (ids, tokens): use kernel-shap or occlusion"))
    shapes = {t.name: t.shape[1:] for t in inputs}
    for name, (h, w) in ex.images.items():
        if name not in shapes:
            found.append((("explain", "images", name), f"the model has no input named {name!r} (its inputs: "
                          f"{', '.join(shapes)})"))
            continue
        row = shapes[name]
        size = 1
        for d in row:
            size *= d
        if all(d > 0 for d in row) and size != h * w:
            found.append((("explain", "images", name), f"{h}x{w} = {h * w} pixels, and one row of {name} holds "
                          f"{size} values (shape {list(row)})"))
    return found


def _input_mapping_problems(sets: list[tuple[str, Any]], names: list[str]) -> list[tuple[tuple[Any, ...], str]]:
    """Each data set (`sets`: (which, data set)) must give every model input its array: one key for a model of
    one input, else a mapping of each input's name (`names`: as `model.inputs` or the model file says) to a key."""
    found: list[tuple[tuple[Any, ...], str]] = []
    for w, ds in sets:
        if not isinstance(ds.x, dict):
            if len(names) > 1:
                found.append((("data", w, "x"), f"the model has {len(names)} inputs ({', '.join(names)}), and "
                              f"data.{w}.x names one array: map each input to its array's key, "
                              f"x: {{{', '.join(f'{n}: ...' for n in names)}}}"))
            continue
        if not names:  # the model file does not say before the build (a SavedModel, a Sequential model)
            continue
        found += [(("data", w, "x", n), f"the model has no input named {n!r} (its inputs: {', '.join(names)})")
                  for n in ds.x if n not in names]
        unmapped = [n for n in names if n not in ds.x]
        if unmapped:
            found.append((("data", w, "x"), f"no array for the model's input(s) {', '.join(unmapped)}"))
    return found


def _declared_inputs_problems(base: Path, spec: DeploySpec) -> list[tuple[tuple[Any, ...], str]]:
    """`model.inputs` must use the names of a `.keras` functional model's own inputs: the build feeds the
    Keras model by those names."""
    from deployc.compiler.resolved import keras_file_inputs

    path = base / spec.model.path
    if not spec.model.inputs or spec.model.resolved_format() != "keras" or path.suffix != ".keras":
        return []
    st = path.stat()
    own = [t.name for t in keras_file_inputs(path.resolve(), st.st_mtime_ns, st.st_size)]
    declared = [t.name for t in spec.model.inputs]
    if not own or sorted(own) == sorted(declared):
        return []
    return [(("model", "inputs"), f"the model's inputs are named {', '.join(own)}, and model.inputs names "
             f"{', '.join(declared)}: use the model's names")]


def _prediction_problems(base: Path, spec: DeploySpec, fmt: str) -> list[tuple[tuple[Any, ...], str]]:
    """`model.prediction` must name one of the model's outputs, where the model file names them."""
    from deployc.compiler import content

    if spec.model.prediction is None:
        return []
    outputs = content.output_names(base, spec, fmt)
    if not outputs or spec.model.prediction in outputs or (len(outputs) == 1 and spec.model.prediction == "output"):
        return []
    return [(("model", "prediction"), f"the model has no output named {spec.model.prediction!r} (its outputs: "
             f"{', '.join(outputs)})")]


def dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for elem in loc:
        out += f"[{elem}]" if isinstance(elem, int) else (f".{elem}" if out else str(elem))
    return out
