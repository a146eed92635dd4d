"""Minimal safetensors reading/writing on numpy memmaps (no torch; BF16 via ml_dtypes).

The format is an 8-byte little-endian header length, a JSON header mapping tensor names to
``{"dtype", "shape", "data_offsets"}``, then the raw bytes. Reading through a memmap keeps large
sharded checkpoints off the heap until a tensor is used.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from refusal_jax.core.errors import WeightsError

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}


class CheckpointError(WeightsError):
    """A checkpoint file is missing, malformed, or does not match what the model expects."""


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise CheckpointError(f"{path}: not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: malformed safetensors header: {e}") from e
    header.pop("__metadata__", None)
    return header, 8 + n


def load_file(path: str | os.PathLike, names=None) -> dict[str, np.ndarray]:
    """Read tensors (all, or ``names``) from one safetensors file as numpy arrays (memmapped)."""
    header, start = read_header(path)
    size = Path(path).stat().st_size
    mm = np.memmap(path, dtype=np.uint8, mode="r") if size > start else np.zeros(0, np.uint8)
    out = {}
    for name, info in header.items():
        if names is not None and name not in names:
            continue
        try:
            dtype_name, shape, (b, e) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if dtype_name not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name}")
        dtype = DTYPES[dtype_name]
        need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not 0 <= b <= e or e - b != need:
            raise CheckpointError(
                f"{path}: tensor {name!r} spans bytes [{b}, {e}) but shape {shape} of "
                f"{dtype_name} needs {need}"
            )
        if start + e > size:
            raise CheckpointError(
                f"{path}: truncated file: tensor {name!r} needs bytes up to {start + e}, the "
                f"file has {size}"
            )
        arr = mm[start + b : start + e].view(dtype)
        out[name] = arr.reshape(shape)
    return out


def save_file(tensors: dict[str, np.ndarray], path: str | os.PathLike, metadata=None) -> None:
    """Write numpy arrays as a safetensors file (atomically: temp file, then rename)."""
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(np.asarray(tensors[name]))
        if arr.dtype not in _NAMES:
            raise CheckpointError(f"tensor {name!r}: dtype {arr.dtype} cannot be saved")
        blob = arr.tobytes()
        header[name] = {
            "dtype": _NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        offset += len(blob)
        blobs.append(blob)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)
