"""Run folders and the content-keyed cache of intermediate results that experiments resume from.

Caching: :class:`Cache` stores arrays as safetensors and everything else as JSON under
``<run>/cache/<name>-<key>.*``, where ``key`` hashes the inputs that determine the result (never
pickle) together with the run's identity (:class:`refusal_jax.core.identity.Identity`: model,
SAEs, data, settings, algorithm version, recorded in ``<run>/identity.json``). Every entry carries
a checksum checked on read; a damaged one is named in a warning and recomputed. Rerunning a script
with ``--resume <run folder>`` reuses every finished entry made from the same inputs, and refuses a
folder made from others (:func:`open_run`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from refusal_jax.core.identity import (
    Identity,
    bind_identity,
    load_checked_arrays,
    read_checked_json,
    save_checked_arrays,
    write_checked_json,
)
from refusal_jax.core.io import jsonable


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
    for JSON-able results. ``folder=None`` disables caching. ``salt`` (the run's
    :meth:`Identity.digest`) enters every key: entries made from other inputs are never found.
    Entries carry a checksum; a damaged one is named in a warning and recomputed."""

    folder: Path | None
    salt: str = ""

    def _path(self, name: str, key: str, suffix: str) -> Path:
        key = content_key(self.salt, key) if self.salt else key
        return Path(self.folder) / f"{name}-{key}{suffix}"

    def arrays(self, name: str, key: str, fn: Callable[[], dict]) -> dict[str, np.ndarray]:
        if self.folder is None:
            return {k: np.asarray(v) for k, v in fn().items()}
        path = self._path(name, key, ".safetensors")
        if path.exists() and (got := load_checked_arrays(path)) is not None:
            return got
        out = {k: np.asarray(v) for k, v in fn().items()}
        save_checked_arrays(path, out)
        return out

    def json(self, name: str, key: str, fn: Callable[[], object]):
        if self.folder is None:
            return jsonable(fn())
        path = self._path(name, key, ".json")
        if path.exists():
            ok, value = read_checked_json(path)
            if ok:
                return value
        out = jsonable(fn())
        write_checked_json(path, out)
        return out


def new_run_folder(parent, name: str, seed: int) -> Path:
    """A new run folder ``<parent>/<name>-seed<seed>-<time>`` (created)."""
    folder = Path(parent) / f"{name}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_run(
    parent, name: str, seed: int, identity: Identity, *, resume=None, force: bool = False
) -> tuple[Path, Cache]:
    """The run folder and its :class:`Cache`: ``resume`` (an existing run folder) if given, else
    a new ``<parent>/<name>-seed<seed>-<time>``; ``identity`` is recorded in ``identity.json``.
    Resuming a folder made from other inputs raises
    :class:`~refusal_jax.core.identity.IdentityMismatch` naming what differs; with ``force`` the
    folder is rebound and every result recomputed (old cache entries are left, never reused)."""
    if resume is not None:
        folder = Path(resume)
        if not folder.is_dir():
            raise FileNotFoundError(f"--resume {folder}: no such run folder")
        bind_identity(folder, identity, force=force, what=f"--resume {folder}")
    else:
        folder = new_run_folder(parent, name, seed)
        bind_identity(folder, identity)
    return folder, Cache(folder / "cache", salt=identity.digest())


__all__ = ["Cache", "content_key", "new_run_folder", "open_run"]
