"""Golden files: what deployc emits, compared file by file with the reviewed copies under tests/golden/.

`assert_golden(files, folder)` fails with a unified diff for every file that differs and names the files that
are missing or extra. With `DEPLOYC_UPDATE_GOLDEN=1` it rewrites the folder instead (only the files that
changed; stale files are removed), fails nothing, and says in a warning which files it wrote: review the result
with `git diff` before committing it.

`normalize_build` is the one place that decides what of a real build is machine-dependent (timings, hashes of
artifacts that converters do not make byte-identical, library versions, absolute paths) and replaces exactly
that with placeholders; everything else is compared byte for byte.
"""
from __future__ import annotations

import base64
import difflib
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

UPDATE_ENV = "DEPLOYC_UPDATE_GOLDEN"
HINT = f"run with {UPDATE_ENV}=1 to rewrite the golden files, then review `git diff`"
ROOT = Path(__file__).resolve().parents[1]
MAX_DIFF_LINES = 200  # per file, so one rewritten file cannot bury the others

Files = dict[str, bytes]
Normalizer = Callable[[Files], Files]


class GoldenUpdated(UserWarning):
    """Raised as a warning (never an error) when DEPLOYC_UPDATE_GOLDEN=1 rewrote golden files."""


def updating() -> bool:
    return os.environ.get(UPDATE_ENV) == "1"


def read_tree(folder: Path) -> Files:
    """Every file under `folder`, by its relative POSIX path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_golden(actual: Mapping[str, bytes] | Path, golden_dir: Path, *,
                  normalize: Normalizer | None = None) -> None:
    """Compare `actual` ({relative path: bytes}, or a folder) with the files under `golden_dir`."""
    files = read_tree(actual) if isinstance(actual, Path) else dict(actual)
    if normalize is not None:
        files = normalize(files)
    expected = read_tree(golden_dir) if golden_dir.is_dir() else {}
    if updating():
        _rewrite(golden_dir, files, expected)
        return
    if not expected:
        raise AssertionError(f"{_shown(golden_dir)}: no golden files ({HINT})")
    problems = [f"missing: {rel} (in the golden folder, not emitted)" for rel in sorted(set(expected) - set(files))]
    problems += [f"extra: {rel} (emitted, not in the golden folder)" for rel in sorted(set(files) - set(expected))]
    problems += [_diff(rel, expected[rel], files[rel]) for rel in sorted(set(files) & set(expected))
                 if files[rel] != expected[rel]]
    if problems:
        raise AssertionError(f"{_shown(golden_dir)} differs from what is emitted ({HINT}):\n\n"
                             + "\n".join(problems))


def assert_golden_file(actual: bytes | str, golden_file: Path) -> None:
    """The same comparison for one pinned file (`golden_file` is its path)."""
    data = actual.encode() if isinstance(actual, str) else actual
    if updating():
        if not golden_file.is_file() or golden_file.read_bytes() != data:
            golden_file.parent.mkdir(parents=True, exist_ok=True)
            golden_file.write_bytes(data)
            warnings.warn(GoldenUpdated(f"{_shown(golden_file)}: wrote it"), stacklevel=2)
        return
    if not golden_file.is_file():
        raise AssertionError(f"{_shown(golden_file)}: no golden file ({HINT})")
    expected = golden_file.read_bytes()
    if data != expected:
        raise AssertionError(f"{_shown(golden_file)} differs ({HINT}):\n\n{_diff(golden_file.name, expected, data)}")


def _rewrite(golden_dir: Path, files: Files, expected: Files) -> None:
    wrote = sorted(rel for rel, data in files.items() if expected.get(rel) != data)
    removed = sorted(set(expected) - set(files))
    for rel in wrote:
        (golden_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (golden_dir / rel).write_bytes(files[rel])
    for rel in removed:
        (golden_dir / rel).unlink()
    for d in sorted((p for p in golden_dir.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    if wrote or removed:
        parts = [f"wrote {', '.join(wrote)}"] if wrote else []
        parts += [f"removed {', '.join(removed)}"] if removed else []
        warnings.warn(GoldenUpdated(f"{_shown(golden_dir)}: {'; '.join(parts)}"), stacklevel=3)


def _text(data: bytes) -> str | None:
    if b"\0" in data:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def _diff(rel: str, expected: bytes, actual: bytes) -> str:
    old, new = _text(expected), _text(actual)
    if old is None or new is None:
        return (f"differs: {rel} (binary; golden {len(expected)} bytes sha256 {_sha(expected)[:16]}, "
                f"emitted {len(actual)} bytes sha256 {_sha(actual)[:16]})")
    lines = list(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                      fromfile=f"golden/{rel}", tofile=f"emitted/{rel}"))
    if len(lines) > MAX_DIFF_LINES:
        lines = lines[:MAX_DIFF_LINES] + [f"... {len(lines) - MAX_DIFF_LINES} more diff lines\n"]
    body = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)
    return f"differs: {rel}\n{body}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _shown(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


# --- what of a real build is machine-dependent ----------------------------------------------------------------

TIMING = "<timing>"  # measured on this machine, never the same twice
MEASURED = "<measured>"  # a figure measured on a model that is not byte-identical across machines
SIZE = "<size>"
HASH = "<hash>"
TIMING_FIGURES = frozenset({"latency_p50_ms", "latency_p99_ms", "throughput_rows_s", "speedup_p50"})
INVARIANCE_FIGURES = frozenset({"max_abs_diff", "relative_diff", "changed_predictions"})  # float rounding
MODEL_FIGURES = frozenset({"accuracy", "agreement", "max_abs_error", "relative_error", "auc", "r2",
                           "non_finite_outputs", "attribution_rank_correlation", "attribution_top_k_overlap",
                           "attribution_example_correlation", "attribution_agreement", "target"})
# arrays measured on the model (the confusion matrix, attributions), and the explanation's ranking of features
MODEL_RANKINGS = frozenset({"top", "confusion", "global", "per_class", "attributions"})
TIMING_DISTRIBUTIONS = frozenset({"latency_percentiles_ms"})
DRAWN = ("report.html", "charts/")  # drawn from report.json, timings included: compared through report.json
SIZE_FIGURES = frozenset({"size_bytes", "gzip_bytes", "size_ratio", "size"})
TIMING_COLUMNS = frozenset({"p50 ms", "p99 ms", "rows/s", "speed-up"})  # report.md
MODEL_COLUMNS = frozenset({"accuracy", "AUC", "R²", "agreement", "max abs err", "rel err", "size", "gzip",
                           "size ×", "attribution agr."})
MODEL_SUFFIXES = (".onnx", ".tflite", ".keras", ".pb", ".index", ".data-00000-of-00001")
# 12 to 64 hex digits with a letter among them, not part of a float such as 1.9310287804798353e-06 (a hash
# may well read like 34e379298105, which has no sign)
_HEX = re.compile(r"(?<![0-9A-Za-z.])(?=[0-9]*[a-f])[0-9a-f]{12,64}(?![0-9A-Za-z]|e?[-+][0-9])")
# a step key shown with digits only (about 1 in 300 keys): replaced only where it is the start of a step key
_DIGITS = re.compile(r"(?<![0-9A-Za-z.])[0-9]{12,64}(?![0-9A-Za-z.]|e?[-+][0-9])")
_B64_SHA = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{43}=")
_NUM = r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?"
_CELL_NUM = r"-?\d[\d.,]*(?:e[+-]?\d+)?"  # as report.md formats figures: 127,504 or 1.49e-02
_INVARIANCE_TEXT = re.compile(rf"(\(| )({_NUM})( of \d+ eval predictions changed class)|"
                              rf"((?:by up to|relative) )({_NUM})")


def normalize_build(files: Files, *, reproducible: bool, paths: Mapping[Path, str] | None = None,
                    inputs: Mapping[str, bytes] | None = None) -> Files:
    """A build's files with what is machine-dependent replaced by placeholders; the rest untouched.

    Always replaced: timings (latency, throughput, speed-up), the batch-invariance differences (float rounding
    of this machine's kernels), library versions in manifest.json, step keys (they hash library versions and
    deployc's own source) as `<key:STEP>`, the `paths` given (absolute folders of this run) by their label, and
    the sha256 (and size) of every file this function changed, wherever it appears, and in a file that names
    such a hash, every other hash that is not one of something compared exactly (an input in `inputs`, or a
    file left unchanged): names derived from it. A `.tar.gz` becomes a listing of its members (names, modes,
    owners, times), each normalized the same way.

    With `reproducible=False` (models trained or converted by the build, which converters do not make
    byte-identical across machines and library versions) also: the model files themselves and the figures
    measured on them (accuracy, agreement, errors, sizes).
    """
    keys = _step_keys(files)
    given = {_sha(data) for data in (inputs or {}).values()}
    hashes = Hashes(keys, set(), given)
    out: Files = {}
    exact: set[str] = set()
    for _ in range(len(files) + 1):  # until the set of exactly compared files stops changing
        out = {rel: _normalize_file(rel, data, reproducible, hashes, paths or {})
               for rel, data in files.items() if rel != "manifest.json"}
        exact = {rel for rel in out if _is_exact(rel, files[rel], out[rel], hashes, paths or {})}
        changed = {_sha(files[rel]) for rel in out if rel not in exact}
        if changed == hashes.changed:
            break
        hashes = Hashes(keys, changed, given | {_sha(files[rel]) for rel in exact})
    if "manifest.json" in files:
        out["manifest.json"] = _manifest(files, set(out) - exact)
    return out


class Hashes:
    """Which hashes a text keeps: step keys get their label; hashes of changed files, and the other hashes of a
    text that names one of those (unless they are hashes of exact files), become HASH."""

    def __init__(self, keys: dict[str, str], changed: set[str], exact: set[str]):
        self.keys, self.changed, self.exact = keys, changed, exact
        self._b64 = {base64.b64encode(bytes.fromhex(h)).decode() for h in changed}

    def sub(self, text: str) -> str:
        names_changed = any(h in text for h in self.changed) or any(b in text for b in self._b64)

        def hex_hash(m: re.Match[str]) -> str:
            h = m.group(0)
            label = next((v for k, v in self.keys.items() if k.startswith(h)), None)
            if label is not None:
                return label
            if any(k.startswith(h) for k in self.changed):
                return HASH
            if names_changed and not any(k.startswith(h) for k in self.exact):
                return HASH
            return h

        def b64_hash(m: re.Match[str]) -> str:
            return HASH if base64.b64decode(m.group(0)).hex() in self.changed else m.group(0)

        def digit_key(m: re.Match[str]) -> str:
            return next((v for k, v in self.keys.items() if k.startswith(m.group(0))), m.group(0))

        return _B64_SHA.sub(b64_hash, _DIGITS.sub(digit_key, _HEX.sub(hex_hash, text)))


def _is_exact(rel: str, data: bytes, normalized: bytes, hashes: Hashes, paths: Mapping[Path, str]) -> bool:
    """True when the normalized file still says all the original says (a tarball: when no member changed)."""
    if rel.endswith(".tar.gz"):
        return normalized == _tar_listing(rel, data, True, hashes, paths, normalize_members=False)
    return normalized == data


def _step_keys(files: Files) -> dict[str, str]:
    if "plan.json" not in files:
        return {}
    return {s["key"]: f"<key:{s['id']}>" for s in json.loads(files["plan.json"])["steps"]}


def _normalize_file(rel: str, data: bytes, reproducible: bool, hashes: Hashes, paths: Mapping[Path, str]
                    ) -> bytes:
    if rel.startswith(DRAWN):
        return f"<drawn from report.json: {rel}>\n".encode()
    if not reproducible and rel.endswith(MODEL_SUFFIXES):
        return f"<model file, {rel.rsplit('/', 1)[-1]}: not byte-identical across machines>\n".encode()
    if rel.endswith(".tar.gz"):
        return _tar_listing(rel, data, reproducible, hashes, paths)
    text = _text(data)
    if text is None:
        return data
    for path, label in paths.items():
        text = text.replace(str(path), label)
    if rel.endswith(".json"):
        doc = json.loads(text)
        walked = _walk(doc, reproducible)
        if walked != doc:
            text = json.dumps(walked, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    elif rel.endswith(".md"):
        text = _markdown(text, reproducible)
    return hashes.sub(text).encode()


def _walk(value: Any, reproducible: bool, key: str = "") -> Any:
    if key in TIMING_DISTRIBUTIONS:
        return TIMING
    if not reproducible and (key in MODEL_RANKINGS or (key == "features" and isinstance(value, list) and value
                                                       and isinstance(value[0], dict) and "edges" in value[0])):
        return MEASURED  # the explanation's ranking, and the watched features chosen by it
    if isinstance(value, dict):
        gate = value.get("gate")
        if isinstance(gate, str) and "value" in value and (not reproducible or _timing_gate(gate)):
            value = {**value, "value": MEASURED if not reproducible else TIMING}
        return {k: _walk(v, reproducible, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, reproducible, key) for v in value]
    if isinstance(value, str):
        return _INVARIANCE_TEXT.sub(_invariance_placeholder, value) if key == "reason" else value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if key in TIMING_FIGURES:
        return TIMING
    if key in INVARIANCE_FIGURES:
        return MEASURED
    if not reproducible and key in MODEL_FIGURES:
        return MEASURED
    if not reproducible and key in SIZE_FIGURES:
        return SIZE
    return value


def _timing_gate(gate: str) -> bool:
    return "latency" in gate or "throughput" in gate


def _invariance_placeholder(m: re.Match[str]) -> str:
    if m.group(2) is not None:
        return f"{m.group(1)}{MEASURED}{m.group(3)}"
    return f"{m.group(4)}{MEASURED}"


def _markdown(text: str, reproducible: bool) -> str:
    """Tables: cells under a measured column (by its header); prose: the batch-invariance figures."""
    lines, header = [], None
    for line in text.split("\n"):
        if not line.startswith("|"):
            header = None
            lines.append(_INVARIANCE_TEXT.sub(_invariance_placeholder, line))
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(line) <= set("|-"):
            shown = [_cell(header, cells, i, reproducible) for i in range(len(cells))]
            if shown != cells:
                line = "| " + " | ".join(shown) + " |"
        lines.append(line)
    return "\n".join(lines)


def _cell(header: list[str], cells: list[str], i: int, reproducible: bool) -> str:
    value = cells[i]
    if not reproducible and i < len(header) and header[i].startswith("top ") and "features" in header[i]:
        return MEASURED  # the explanation's ranking of features
    if i >= len(header) or not re.fullmatch(rf"{_CELL_NUM}(?: KiB| MiB|x)?( / {_CELL_NUM})?", value):
        return value
    column, row = header[i], dict(zip(header, cells, strict=False))
    if column in TIMING_COLUMNS or (header == ["figure", "value"] and "latency" in row["figure"]):
        return TIMING
    if column == "measured" and _timing_gate(row.get("gate", "")):
        return TIMING
    if not reproducible and (column in MODEL_COLUMNS or column == "measured" or header == ["figure", "value"]):
        return MEASURED
    return value


def _tar_listing(rel: str, data: bytes, reproducible: bool, hashes: Hashes, paths: Mapping[Path, str], *,
                 normalize_members: bool = True) -> bytes:
    """A tarball as the list of its members (name, mode, owner, time) and their normalized contents."""
    lines = [f"<{rel}: a gzip-compressed tar; its members, normalized>"]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        for m in tar.getmembers():
            member = tar.extractfile(m)
            content = member.read() if member is not None else b""
            lines.append(f"== {m.name} mode={m.mode:o} uid={m.uid} gid={m.gid} uname={m.uname!r} "
                         f"gname={m.gname!r} mtime={m.mtime} type={m.type.decode()}")
            shown = _normalize_file(m.name, content, reproducible, hashes, paths) if normalize_members \
                else content
            if _text(shown) is None:
                shown = f"<binary, {len(content)} bytes, sha256 {_sha(content)}>\n".encode()
                if normalize_members:
                    shown = hashes.sub(shown.decode()).encode()
            lines.append(shown.decode().rstrip("\n"))
    return ("\n".join(lines) + "\n").encode()


def _manifest(files: Files, changed: set[str]) -> bytes:
    """manifest.json: a file's sha256 and size stay exact when the file is compared exactly; library versions
    (all but deployc's own) are the environment's."""
    doc = json.loads(files["manifest.json"])
    for rel, meta in doc.get("files", {}).items():
        if rel in changed:
            meta["sha256"], meta["size"] = HASH, SIZE
    doc["versions"] = {k: (v if k == "deployc" else "<version>") for k, v in doc.get("versions", {}).items()}
    return (json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
