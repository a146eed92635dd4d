"""Run folders and the content-keyed cache of intermediate results that experiments resume from.

Caching: :class:`Cache` stores arrays as safetensors and everything else as JSON under
``<run>/cache/<name>-<key>.*``, where ``key`` hashes the inputs that determine the result (never
pickle). Rerunning a script with ``--resume <run folder>`` reuses every finished entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from refusal_jax.core.io import (
    jsonable,
    load_arrays,
    read_json,
    save_arrays_atomic,
    write_json_atomic,
)


# ----------------------------------------------------------------------------- cache
def content_key(*parts) -> str:
    """A short hex digest of the inputs that determine a result: JSON-able values, strings and
    arrays (hashed by dtype, shape and bytes)."""
    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, (np.ndarray, np.generic)) or type(x).__module__.startswith("jax"):
            a = np.ascontiguousarray(np.asarray(x))
            h.update(f"array:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=str):
                feed(str(k))
                feed(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                feed(v)
            h.update(b"]")
        elif dataclasses.is_dataclass(x) and not isinstance(x, type):
            feed(dataclasses.asdict(x))
        else:
            h.update(json.dumps(x).encode())
        h.update(b";")

    for p in parts:
        feed(p)
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Cache:
    """Content-keyed results under ``folder``: ``arrays(name, key, fn)`` returns the cached dict of
    arrays or computes ``fn()`` and stores it (safetensors); ``json(name, key, fn)`` likewise
    for JSON-able results. ``folder=None`` disables caching."""

    folder: Path | None

    def _path(self, name: str, key: str, suffix: str) -> Path:
        return Path(self.folder) / f"{name}-{key}{suffix}"

    def arrays(self, name: str, key: str, fn: Callable[[], dict]) -> dict[str, np.ndarray]:
        if self.folder is None:
            return {k: np.asarray(v) for k, v in fn().items()}
        path = self._path(name, key, ".safetensors")
        if path.exists():
            return load_arrays(path)
        out = {k: np.asarray(v) for k, v in fn().items()}
        save_arrays_atomic(path, out)
        return out

    def json(self, name: str, key: str, fn: Callable[[], object]):
        if self.folder is None:
            return jsonable(fn())
        path = self._path(name, key, ".json")
        if path.exists():
            return read_json(path)
        out = jsonable(fn())
        write_json_atomic(path, out)
        return out


def new_run_folder(parent, name: str, seed: int) -> Path:
    """A new run folder ``<parent>/<name>-seed<seed>-<time>`` (created)."""
    folder = Path(parent) / f"{name}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


__all__ = ["Cache", "content_key", "new_run_folder"]
