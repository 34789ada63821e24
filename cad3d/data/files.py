"""Readers of untrusted dataset files that fail with `DatasetError`, never another exception.

Invariants: a `.npy` is read only after its header's shape and dtype are checked against the
file's size (a header claiming billions of rows costs nothing); no pickle is ever loaded; JSON is
size-capped and its nesting depth cannot crash the reader; a sample stem taken from a manifest is
a plain file name, so joining it to a dataset sub-folder never leaves that folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import reprlib
import tokenize
from pathlib import Path

import numpy as np

from cad3d.errors import DatasetError

MAX_NPY_BYTES = 1 << 30  # 1 GiB: far above any cloud, depth map or dense sample we write
MAX_JSON_BYTES = 256 << 20  # a manifest of a million samples is ~100 MB
MAX_STEM_BYTES = 200  # leaves room for the extension under the usual 255-byte name limit
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60


def describe(value) -> str:
    """A short repr of a value read from a file, for error messages."""
    return _short.repr(value)


def plain_stem(stem, where: str) -> str:
    """``stem`` if it is a usable sample name: a non-empty string that is a single file name (no
    path separator, no ``.``/``..``, no drive colon, no control characters, encodable, short).
    Anything else raises DatasetError naming ``where`` (the manifest)."""
    if not isinstance(stem, str) or not stem:
        raise DatasetError(f"{where}: sample stem must be a non-empty string, got {describe(stem)}")
    try:
        size = len(stem.encode("utf-8"))
    except UnicodeEncodeError:
        raise DatasetError(f"{where}: sample stem {describe(stem)} is not valid text") from None
    if (
        stem in (".", "..")
        or any(c in stem for c in "/\\:")
        or any(ord(c) < 32 or ord(c) == 127 for c in stem)
        or size > MAX_STEM_BYTES
    ):
        raise DatasetError(
            f"{where}: sample stem {describe(stem)} is not a plain file name "
            f"(no path separators, '..', ':' or control characters; at most {MAX_STEM_BYTES} bytes)"
        )
    return stem


@contextlib.contextmanager
def _dataset_errors(path: Path, what: str, errors: tuple, cause: str):
    """Turn the ``errors`` raised inside into DatasetError "<path>: <cause> (...)"."""
    try:
        yield
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing {what}") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: {what} is a folder, not a file") from None
    except errors as exc:
        raise DatasetError(f"{path}: {cause} ({type(exc).__name__}: {exc})") from None


# numpy's header parser (literal_eval, and tokenize for old headers) reports a malformed header
# with any of these.
_NPY_ERRORS = (ValueError, SyntaxError, TypeError, OverflowError, RecursionError, EOFError, OSError,
               tokenize.TokenError)
# ValueError covers JSONDecodeError and over-long integer literals.
_JSON_ERRORS = (ValueError, UnicodeDecodeError, RecursionError, OSError)


def read_npy(path: Path, what: str, *, kinds: str = "f") -> np.ndarray:
    """The array of ``path`` (a `.npy` file) whose dtype kind is one of ``kinds``.

    The header is parsed first (bounded size, no pickle) and must describe exactly the bytes the
    file holds, so a forged shape is refused before anything is allocated.
    """
    path = Path(path)
    with _dataset_errors(path, what, _NPY_ERRORS, "corrupt or unreadable .npy"), open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise DatasetError(f"{path}: empty {what} file (0 bytes)")
        if size > MAX_NPY_BYTES:
            raise DatasetError(f"{path}: {what} file too large ({size:,} bytes; at most {MAX_NPY_BYTES:,})")
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise DatasetError(f"{path}: unsupported .npy format version {version}")
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
            raise DatasetError(f"{path}: {what} must be a plain numeric array, got dtype {dtype}")
        if dtype.kind not in kinds:
            raise DatasetError(f"{path}: {what} has the wrong dtype {dtype}")
        if any(d < 0 for d in shape):
            raise DatasetError(f"{path}: corrupt .npy header (negative shape {shape})")
        count = math.prod(shape)
        expected, present = count * dtype.itemsize, size - f.tell()
        if expected != present:
            raise DatasetError(
                f"{path}: corrupt or truncated .npy: its header says shape {describe(shape)} "
                f"({expected:,} bytes of data) but the file holds {present:,}"
            )
        arr = np.fromfile(f, dtype=dtype, count=count)
    if arr.size != count:
        raise DatasetError(f"{path}: corrupt or truncated .npy (read {arr.size} of {count} values)")
    return arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)


def read_json(path: Path, what: str):
    """The JSON value of ``path``; DatasetError for a missing, oversized, undecodable or
    pathologically nested file."""
    path = Path(path)
    with _dataset_errors(path, what, _JSON_ERRORS, f"corrupt {what} JSON"):
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise DatasetError(f"{path}: {what} too large ({size:,} bytes; at most {MAX_JSON_BYTES:,})")
        return json.loads(path.read_bytes().decode("utf-8"))
