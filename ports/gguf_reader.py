"""A GGUF file's metadata and tensor table, read straight from a memory map.

``gguf.GGUFReader`` builds a numpy view for every part of every metadata value; for the 262,144
token strings, scores and types of a Gemma 3 vocabulary that alone takes about 23 s. Here scalar
and numeric-array values are decoded with ``numpy.frombuffer`` and string arrays with one
Python loop, and tensors stay memory-mapped until dequantized (``gguf.quants`` still does that).
Layout (little-endian, GGUF v2/v3): magic ``GGUF``, version u32, tensor count u64, metadata count
u64; each metadata entry is a key string (u64 length + UTF-8), a value type u32 and the value;
each tensor entry is a name string, n_dims u32, dims u64[n_dims] (fastest-varying first), a
ggml type u32 and a data offset u64 relative to the data section, which starts at the next
multiple of ``general.alignment`` (default 32) after the tensor table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ports.safetensors_io import CheckpointError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# GGUF metadata value types -> numpy dtypes (8: string, 9: array)
_SCALARS = {
    0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
    6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64,
}  # fmt: skip
_STRING, _ARRAY = 8, 9
# ggml types stored as plain numpy arrays; every other type is handed on as raw bytes
_PLAIN = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8,
          "I16": np.int16, "I32": np.int32, "I64": np.int64}  # fmt: skip


class GGUFTensor(NamedTuple):
    """One tensor: ``shape`` in GGUF order (fastest-varying first), ``data`` a read-only view
    shaped as ``gguf.quants.dequantize`` expects (numpy order; bytes for block formats)."""

    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    shape: np.ndarray
    data: np.ndarray


class GGUFFile:
    """``fields``: metadata key -> value (Python int/float/bool/str, a numpy array for numeric
    arrays, a list of str for string arrays); ``tensors``: list of :class:`GGUFTensor`."""

    def __init__(self, path):
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import quant_shape_to_byte_shape

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no GGUF file at {self.path}")
        buf = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._buf, self._pos = buf, 0
        if bytes(self._take(4)) != MAGIC:
            raise CheckpointError(f"{self.path}: not a GGUF file (no 'GGUF' magic)")
        version = int(self._num(np.uint32))
        if version not in (2, 3):
            raise CheckpointError(
                f"{self.path}: GGUF version {version} is not supported (2, 3; little-endian)"
            )
        n_tensors, n_fields = int(self._num(np.uint64)), int(self._num(np.uint64))
        self.fields: dict[str, Any] = {}
        for _ in range(n_fields):
            key = self._str()
            self.fields[key] = self._value(int(self._num(np.uint32)), key)
        infos = []
        for _ in range(n_tensors):
            name = self._str()
            n_dims = int(self._num(np.uint32))
            dims = self._array(np.uint64, n_dims).astype(np.int64)
            infos.append((name, int(self._num(np.uint32)), dims, int(self._num(np.uint64))))
        align = int(self.fields.get("general.alignment", DEFAULT_ALIGNMENT))
        start = -(-self._pos // align) * align
        self.tensors: list[GGUFTensor] = []
        seen: set[str] = set()
        for name, raw_type, dims, offset in infos:
            if name in seen:
                raise CheckpointError(f"{self.path}: tensor {name!r} appears twice")
            seen.add(name)
            try:
                kind = GGMLQuantizationType(raw_type)
            except ValueError:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} has unknown ggml type {raw_type}"
                ) from None
            n = int(np.prod(dims))
            shape = tuple(int(d) for d in reversed(dims))
            if kind.name in _PLAIN:
                dtype = np.dtype(_PLAIN[kind.name])
                n_bytes = n * dtype.itemsize
            else:
                try:
                    block, size = GGML_QUANT_SIZES[kind]
                    shape = quant_shape_to_byte_shape(shape, kind)
                except (KeyError, ValueError) as e:
                    raise CheckpointError(f"{self.path}: tensor {name!r}: {e}") from None
                dtype, n_bytes = np.dtype(np.uint8), n * size // block
            lo = start + offset
            if lo + n_bytes > len(buf):
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} ends at byte {lo + n_bytes}, past the end of "
                    f"the file ({len(buf)} bytes): truncated?"
                )
            data = buf[lo : lo + n_bytes].view(dtype).reshape(shape)
            self.tensors.append(GGUFTensor(name, kind, dims, data))

    # -- readers over the memory map, each naming the file on a short read
    def _check_end(self, end: int) -> None:
        if end > len(self._buf):
            raise CheckpointError(
                f"{self.path}: the GGUF header ends early (byte {end} of {len(self._buf)}): "
                "truncated?"
            )

    def _take(self, n: int) -> np.ndarray:
        end = self._pos + n
        self._check_end(end)
        out = self._buf[self._pos : end]
        self._pos = end
        return out

    def _array(self, dtype, count: int) -> np.ndarray:
        dtype = np.dtype(dtype).newbyteorder("<")
        return self._take(count * dtype.itemsize).view(dtype)

    def _num(self, dtype):
        return self._array(dtype, 1)[0]

    def _str(self) -> str:
        n = int(self._num(np.uint64))
        try:
            return bytes(self._take(n)).decode("utf-8")
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{self.path}: metadata string is not UTF-8: {e}") from None

    def _value(self, kind: int, key: str):
        if kind in _SCALARS:
            return self._num(_SCALARS[kind]).item()
        if kind == _STRING:
            return self._str()
        if kind == _ARRAY:
            item, count = int(self._num(np.uint32)), int(self._num(np.uint64))
            if item in _SCALARS:
                return np.array(self._array(_SCALARS[item], count))
            if item == _STRING:
                return self._strings(count)
            raise CheckpointError(f"{self.path}: metadata {key!r}: array item type {item} unknown")
        raise CheckpointError(f"{self.path}: metadata {key!r} has unknown value type {kind}")

    def _strings(self, count: int) -> list[str]:
        """``count`` strings (u64 length + UTF-8 each) in one pass over the bytes."""
        mv = memoryview(self._buf)
        pos, out = self._pos, []
        for _ in range(count):
            self._check_end(pos + 8)
            n = int.from_bytes(mv[pos : pos + 8], "little")
            pos += 8
            self._check_end(pos + n)
            out.append(bytes(mv[pos : pos + n]).decode("utf-8", errors="replace"))
            pos += n
        self._pos = pos
        return out


__all__ = ["GGUFFile", "GGUFTensor"]
