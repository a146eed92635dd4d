"""Result files written atomically (a temporary file, then a rename), and read back.

JSON for numbers, lists and dicts; safetensors for arrays (never pickle).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, np.ndarray) or type(obj).__module__.startswith("jax"):
        return np.asarray(obj).tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path, obj) -> None:
    """Write ``obj`` (dicts, lists, numbers, numpy/jax arrays, dataclasses) as JSON atomically."""
    write_text_atomic(path, json.dumps(jsonable(obj), indent=2))


def read_json(path):
    return json.loads(Path(path).read_text())


def save_arrays_atomic(path, arrays: dict, metadata: dict[str, str] | None = None) -> None:
    """Save a flat dict of arrays as safetensors atomically (``metadata``: header strings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(
        {k: np.ascontiguousarray(np.asarray(v)) for k, v in arrays.items()}, str(tmp), metadata
    )
    os.replace(tmp, path)


def load_arrays(path) -> dict[str, np.ndarray]:
    return load_file(str(path))


__all__ = [
    "jsonable",
    "load_arrays",
    "read_json",
    "save_arrays_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
