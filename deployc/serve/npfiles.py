"""`.npy` and `.npz` bodies for SageMaker's `/invocations`, read without trusting their headers.

numpy's own loader allocates the array a header declares before it reads a byte of data, and zipfile inflates
a member as far as its (declared) size. So every size is checked first: an `.npy` header's shape times its
itemsize must equal the bytes that follow it, and an `.npz` member's declared uncompressed size must fit what is
left of `server.max_body_bytes` before the member is opened. zipfile stops inflating at the declared size (a
member that inflates past it fails its CRC), so a small archive that claims little and inflates to gigabytes is
refused after at most the limit, never inflated whole. Object dtypes (pickles) are refused from the header.
"""
from __future__ import annotations

import io
import math
import struct
import zipfile
from typing import IO

import numpy as np
from numpy.lib import format as npformat

from deployc.serve.codec import ClientError, to_array
from deployc.serve.config import DATATYPES, TensorSpec

NPY_SUFFIX = ".npy"
# What np.savez (stored) and np.savez_compressed (deflate) write. zipfile inflates bzip2 and lzma members without
# an output bound, so they are refused rather than trusted.
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, NotImplementedError,
               RuntimeError, struct.error)


def _header(f: IO[bytes], what: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of an .npy stream, which is left at the first data byte."""
    try:
        version = npformat.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(f)
        else:
            raise ClientError(400, f"{what}: .npy format version {version[0]}.{version[1]} is not supported "
                                   "(np.save writes 1.0)")
    except (ClientError, zipfile.BadZipFile):  # a member's CRC can fail as soon as its first bytes are read
        raise
    except Exception:  # numpy raises ValueError (bad magic or header) and others for truncated streams
        raise ClientError(400, f"{what} is not a valid .npy array") from None
    return tuple(shape), bool(fortran), np.dtype(dtype)


def _check_dtype(dtype: np.dtype, spec: TensorSpec, what: str) -> None:
    """The array's dtype must turn into the model's by numpy's same_kind rule (bool inputs also take 0/1 ints)."""
    if dtype.hasobject:
        raise ClientError(400, f"{what}: dtype {dtype} holds Python objects (pickles are not accepted)")
    want = np.dtype(DATATYPES[spec.datatype])
    bool_ints = want.kind == "b" and dtype.kind in "iu"
    if dtype.kind not in "biuf" or not (bool_ints or np.can_cast(dtype, want, casting="same_kind")):
        raise ClientError(400, f"npy dtype {dtype} cannot be used for datatype {spec.datatype} ({what})")


def _array(data: bytes | memoryview, shape: tuple[int, ...], fortran: bool, dtype: np.dtype) -> np.ndarray:
    arr = np.frombuffer(data, dtype=dtype)
    return arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize  # Python ints: a hostile shape cannot overflow


def decode_npy(body: bytes, inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    """One .npy array, for a single-input model; read in place (no copy) once its sizes add up."""
    if len(inputs) != 1:
        raise ClientError(400, "application/x-npy bodies are only accepted for single-input models; send "
                               "application/x-npz (one array per input) or JSON")
    spec = inputs[0]
    f = io.BytesIO(body)
    shape, fortran, dtype = _header(f, "the body")
    _check_dtype(dtype, spec, "the body")
    start, need = f.tell(), _nbytes(shape, dtype)
    if need != len(body) - start:
        raise ClientError(400, f"the body is not a valid .npy array: its header declares shape {list(shape)} of "
                               f"{dtype} ({need} bytes), {len(body) - start} bytes follow it")
    return {spec.name: to_array(_array(memoryview(body)[start:], shape, fortran, dtype), spec, "npy body")}


def _members(zf: zipfile.ZipFile, inputs: tuple[TensorSpec, ...], limit: int) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by input name, checked (names, methods, declared sizes) before any is opened."""
    names = sorted(s.name for s in inputs)
    found: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        name = info.filename[:-len(NPY_SUFFIX)] if info.filename.endswith(NPY_SUFFIX) else info.filename
        if name in found:
            raise ClientError(400, f"npz array {name!r} is given twice")
        found[name] = info
    unknown = sorted(set(found) - set(names))
    missing = sorted(set(names) - set(found))
    if unknown or missing:
        parts = ([f"unknown array(s) {unknown}"] if unknown else []) + ([f"missing input(s) {missing}"]
                                                                         if missing else [])
        raise ClientError(400, f"npz body: {', '.join(parts)}; the model takes {names} (np.savez(f, name=array) "
                               "for each input)")
    left = limit
    for name, info in found.items():
        if info.compress_type not in _METHODS:
            raise ClientError(400, f"npz array {name!r}: compression method {info.compress_type} is not supported "
                                   "(np.savez stores, np.savez_compressed deflates)")
        if info.flag_bits & 0x1:
            raise ClientError(400, f"npz array {name!r} is encrypted")
        if info.file_size > left:
            raise ClientError(413, f"npz array {name!r} declares {info.file_size} bytes uncompressed: the body's "
                                   f"arrays would be larger than the limit of {limit} bytes")
        left -= info.file_size
    return found


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, spec: TensorSpec) -> np.ndarray:
    what = f"npz array {spec.name!r}"
    with zf.open(info) as f:
        shape, fortran, dtype = _header(f, what)
        _check_dtype(dtype, spec, what)
        need = _nbytes(shape, dtype)
        left = info.file_size - f.tell()
        if need != left:  # checked before reading: the header's shape cannot make a huge allocation
            raise ClientError(400, f"{what}: its header declares shape {list(shape)} of {dtype} ({need} bytes), "
                                   f"the member holds {left} bytes after the header")
        data = f.read(need)  # zipfile inflates at most the declared size, and checks the CRC at the end
        if len(data) != need or f.read(1):
            raise ClientError(400, f"{what} is truncated or longer than its declared size")
    return to_array(_array(data, shape, fortran, dtype), spec, what)


def decode_npz(body: bytes, inputs: tuple[TensorSpec, ...], limit: int) -> dict[str, np.ndarray]:
    """One .npy array per input, named by input (what `np.savez(f, input_ids=..., attention_mask=...)` writes);
    their decompressed sizes together at most `limit` (413 past it)."""
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            members = _members(zf, inputs, limit)
            return {s.name: _read_member(zf, members[s.name], s) for s in inputs}
    except ClientError:
        raise
    except _ZIP_ERRORS as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ClientError(400, f"the body is not a valid .npz archive ({why})") from None


def encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def encode_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed .npz (np.load reads it; Accept-Encoding compresses the response when asked)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            with zf.open(name + NPY_SUFFIX, "w") as f:
                npformat.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()
