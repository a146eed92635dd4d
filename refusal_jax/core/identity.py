"""One notion of identity: what a result depends on, recorded next to it and compared on reuse.

- :func:`file_digest`: sha256 of every byte of a file (streamed), remembered in a digest cache
  keyed by (absolute path, size, mtime_ns) so a 10 GB model is hashed once. The cache is one JSON
  file, ``$REFUSAL_JAX_CACHE_DIR/digests.json`` (default ``~/.cache/refusal_jax``), written
  atomically; a damaged cache file is ignored (and rewritten).
- :func:`folder_digest` / :func:`describe_input`: a folder's digest over its sorted relative
  paths and file digests (hidden files and folders left out), and a JSON record of it.
- :func:`tree_digest`: sha256 over ALL bytes of every leaf of a pytree (arrays of any layout,
  gathered across hosts), its structure (incl. static configs), shapes and dtypes.
- :class:`Identity`: model, SAEs, data, settings, other inputs and :data:`ALGORITHM_VERSION`;
  saved as ``identity.json``; :func:`diff` names what differs between two of them.
- :func:`save_checked_arrays` / :func:`load_checked_arrays` and the JSON pair: stored results that
  carry their checksum; a damaged or truncated file is named in a warning and read as missing.

    ident = Identity(model=describe_input("models/gemma"), saes=None, data=None,
                     settings={"layers": [1, 2]})
    ident.save(run_folder); diff(Identity.load(run_folder), ident)  # [] when the same
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import jax
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

from refusal_jax.core.errors import UserError
from refusal_jax.core.io import jsonable, save_arrays_atomic, write_json_atomic
from refusal_jax.core.sharding import to_host

# Bump when a change to the method alters results: every cache, sweep and run folder made by an
# older version is then refused on resume (or recomputed with --force).
ALGORITHM_VERSION = "2"
CACHE_ENV = "REFUSAL_JAX_CACHE_DIR"
IDENTITY_FILE = "identity.json"
_CHUNK = 1 << 22


class IdentityMismatch(UserError):
    """A stored result was made from other inputs; the message names what differs."""


# ----------------------------------------------------------------------------- digests
def cache_dir() -> Path:
    """The user cache folder: ``$REFUSAL_JAX_CACHE_DIR``, else ``~/.cache/refusal_jax``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "refusal_jax")


def _digest_db_path() -> Path:
    return cache_dir() / "digests.json"


def _read_db(path: Path) -> dict:
    try:
        db = json.loads(path.read_text())
        return db if isinstance(db, dict) else {}
    except (OSError, ValueError):
        return {}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | os.PathLike, *, use_cache: bool = True) -> str:
    """sha256 (hex) of every byte of ``path``. With ``use_cache`` the digest is looked up in and
    stored to the digest cache under (absolute path, size, mtime_ns): an unchanged file is not
    read again; a file changed in place (other size or mtime) is hashed anew."""
    p = Path(path).resolve()
    st = p.stat()
    stamp = [st.st_size, st.st_mtime_ns]
    db_path = _digest_db_path()
    if use_cache:
        hit = _read_db(db_path).get(str(p))
        if isinstance(hit, dict) and hit.get("stamp") == stamp:
            return hit["sha256"]
    digest = _sha256_file(p)
    st2 = p.stat()
    if use_cache and [st2.st_size, st2.st_mtime_ns] == stamp:  # not changed while hashing
        db = _read_db(db_path)  # re-read: other processes may have added entries
        db[str(p)] = {"stamp": stamp, "sha256": digest}
        try:
            write_json_atomic(db_path, db)
        except OSError as err:  # a read-only home must not stop a run
            warnings.warn(f"digest cache {db_path} not written: {err}", stacklevel=2)
    return digest


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append(p)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def folder_files(path: str | os.PathLike) -> dict[str, str]:
    """{relative path: sha256} of every (non-hidden) file under ``path`` (a file: its name)."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder")
    if root.is_file():
        return {root.name: file_digest(root)}
    return {p.relative_to(root).as_posix(): file_digest(p) for p in _files(root)}


def _combine(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel]}\n".encode())
    return h.hexdigest()


def folder_digest(path: str | os.PathLike) -> str:
    """sha256 over the sorted relative paths and full-content digests of a folder's files."""
    return _combine(folder_files(path))


def describe_input(path: str | os.PathLike, label: str | None = None) -> dict:
    """A JSON record of a file or folder input: ``{"path", "digest", "files"}``."""
    files = folder_files(path)
    return {"path": label or str(Path(path).resolve()), "digest": _combine(files), "files": files}


def describe_files(label: str, paths: Iterable[str | os.PathLike]) -> dict:
    """A JSON record of a set of files standing for one input (e.g. the code of a corpus)."""
    files = {Path(p).name: file_digest(p) for p in paths}
    return {"path": label, "digest": _combine(files), "files": files}


def tree_digest(tree: object) -> str:
    """sha256 over a pytree: its structure (static fields included), every leaf's dtype, shape
    and ALL of its bytes (sharded or multi-host arrays are gathered one leaf at a time)."""
    h = hashlib.sha256()
    if tree is None:
        h.update(b"none")
        return h.hexdigest()
    leaves, treedef = jax.tree.flatten(tree)
    h.update(str(treedef).encode())
    for x in leaves:
        a = np.ascontiguousarray(to_host(x) if hasattr(x, "dtype") else np.asarray(x))
        h.update(f"|{a.dtype.str}:{a.shape}|".encode())
        h.update(a.view(np.uint8).reshape(-1).data if a.size else b"")
    return h.hexdigest()


def describe_tree(tree: object, label: str) -> dict:
    """A JSON record of an in-memory input (e.g. loaded SAEs): ``{"path", "digest", "files"}``."""
    return {"path": label, "digest": tree_digest(tree), "files": {}}


def arrays_digest(arrays: dict) -> str:
    """:func:`tree_digest` of a flat dict of arrays (key order does not matter)."""
    return tree_digest({str(k): np.asarray(v) for k, v in arrays.items()})


# ----------------------------------------------------------------------------- identity
@dataclasses.dataclass(frozen=True)
class Identity:
    """Everything a result depends on. ``model``/``saes``/``data``: records of
    :func:`describe_input` / :func:`describe_tree` (None when not used); ``settings``: JSON-able
    flags and configs; ``inputs``: other input files by name (classifier, feature lists, ...);
    ``algorithm``: :data:`ALGORITHM_VERSION`."""

    model: dict | None
    saes: dict | None
    data: dict | None
    settings: dict
    inputs: dict = dataclasses.field(default_factory=dict)
    algorithm: str = ALGORITHM_VERSION

    def to_json(self) -> dict:
        return jsonable(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, d: dict) -> Identity:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def digest(self) -> str:
        """A short hex key of the whole identity (paths left out: content only)."""
        d = self.to_json()
        for part in ("model", "saes", "data"):
            if d[part]:
                d[part] = d[part]["digest"]
        d["inputs"] = {k: v["digest"] for k, v in d["inputs"].items()}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def save(self, folder) -> None:
        write_json_atomic(Path(folder) / IDENTITY_FILE, self.to_json())

    @classmethod
    def load(cls, folder) -> Identity | None:
        """The identity saved in ``folder`` (None if it has none)."""
        path = Path(folder) / IDENTITY_FILE
        if not path.exists():
            return None
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (ValueError, TypeError) as err:
            raise IdentityMismatch(f"{path}: unreadable identity record ({err})") from err


def _input_diff(what: str, a: dict | None, b: dict | None) -> list[str]:
    if a is None and b is None:
        return []
    if a is None or b is None:
        return [f"{what}: {a and a['path']} vs {b and b['path']}"]
    if a["digest"] == b["digest"]:
        return []
    fa, fb = a.get("files") or {}, b.get("files") or {}
    changed = sorted(k for k in fa.keys() & fb.keys() if fa[k] != fb[k])
    notes = [f"{k} changed" for k in changed]
    notes += [f"{k} removed" for k in sorted(fa.keys() - fb.keys())]
    notes += [f"{k} added" for k in sorted(fb.keys() - fa.keys())]
    more = f" and {len(notes) - 3} more" if len(notes) > 3 else ""
    detail = f" ({', '.join(notes[:3])}{more})" if notes else ""
    where = a["path"] if a["path"] == b["path"] else f"{a['path']} vs {b['path']}"
    return [f"{what} differ: {where}{detail}"]


def _settings_diff(prefix: str, a, b) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(a.keys() | b.keys(), key=str):
            if k not in a or k not in b:
                out.append(f"{prefix}.{k}: {a.get(k, '(unset)')} vs {b.get(k, '(unset)')}")
            else:
                out += _settings_diff(f"{prefix}.{k}", a[k], b[k])
        return out
    return [] if a == b else [f"{prefix}: {json.dumps(a)} vs {json.dumps(b)}"]


def diff(a: Identity, b: Identity) -> list[str]:
    """What differs from ``a`` (stored) to ``b`` (requested), one phrase each, e.g.
    ``"model weights differ: /m (model.safetensors changed)"``, ``"settings.layers: [1, 2] vs
    [3]"``; empty when they are the same (paths aside: content decides)."""
    a, b = a.to_json(), b.to_json()
    out = _input_diff("model weights", a["model"], b["model"])
    out += _input_diff("SAEs", a["saes"], b["saes"])
    out += _input_diff("data", a["data"], b["data"])
    for k in sorted(a["inputs"].keys() | b["inputs"].keys()):
        out += _input_diff(f"input {k}", a["inputs"].get(k), b["inputs"].get(k))
    out += _settings_diff("settings", a["settings"], b["settings"])
    if a["algorithm"] != b["algorithm"]:
        out.append(f"algorithm version: {a['algorithm']} vs {b['algorithm']}")
    return out


def bind_identity(
    folder: str | os.PathLike, identity: Identity, *, force: bool = False, what: str = ""
) -> bool:
    """Record ``identity`` in ``folder`` (new folder) or check it against the recorded one.

    Returns True when the folder was (re)bound: new, or ``force`` over another identity (its
    results must then all be recomputed; key them by :meth:`Identity.digest`). Raises
    :class:`IdentityMismatch` naming every difference otherwise, and for a folder holding results
    but no identity record."""
    folder = Path(folder)
    label = what or str(folder)
    try:
        old = Identity.load(folder)
    except IdentityMismatch:
        if not force:
            raise
        old = None
    if old is not None:
        diffs = diff(old, identity)
        if not diffs:
            return False
        if not force:
            raise IdentityMismatch(
                f"{label} was made from other inputs: {'; '.join(diffs)} "
                "(use another folder, or --force to recompute everything)"
            )
    elif folder.is_dir() and any(folder.iterdir()) and not force:
        raise IdentityMismatch(
            f"{label} holds results without an {IDENTITY_FILE} (made before identities were "
            "recorded): use another folder, or --force to recompute everything"
        )
    folder.mkdir(parents=True, exist_ok=True)
    identity.save(folder)
    return True


# ----------------------------------------------------------------------------- checked files
def _warn_damaged(path, reason) -> None:
    warnings.warn(f"{path}: damaged stored result ({reason}); recomputing it", stacklevel=3)


def save_checked_arrays(path: str | os.PathLike, arrays: dict, key: str | None = None) -> None:
    """Save a flat dict of arrays as safetensors (atomically) with its sha256 in the header
    (and ``key``, the identity of the inputs it was computed from, when given)."""
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in arrays.items()}
    meta = {"sha256": arrays_digest(arrays)} | ({"key": key} if key is not None else {})
    save_arrays_atomic(path, arrays, metadata=meta)


def load_checked_arrays(
    path: str | os.PathLike, key: str | None = None
) -> dict[str, np.ndarray] | None:
    """The arrays of a :func:`save_checked_arrays` file, or None (with a warning naming the
    file) when it is missing its checksum, truncated, unreadable, altered or (``key`` given)
    made from other inputs."""
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
        arrays = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for truncated files
        _warn_damaged(path, f"unreadable: {err}")
        return None
    if "sha256" not in meta:
        _warn_damaged(path, "no checksum")
        return None
    if arrays_digest(arrays) != meta["sha256"]:
        _warn_damaged(path, "checksum mismatch")
        return None
    if key is not None and meta.get("key") != key:
        _warn_damaged(path, f"made from other inputs: key {meta.get('key')} != {key}")
        return None
    return arrays


def _json_sum(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def write_checked_json(path: str | os.PathLike, value: object) -> None:
    """Write ``{"sha256": ..., "value": value}`` atomically (``value`` made JSON-able)."""
    value = jsonable(value)
    write_json_atomic(path, {"sha256": _json_sum(value), "value": value})


def read_checked_json(path: str | os.PathLike) -> tuple[bool, object]:
    """``(True, value)`` of a :func:`write_checked_json` file, or ``(False, None)`` with a warning
    naming the file when it is truncated, unreadable or altered."""
    try:
        d = json.loads(Path(path).read_text())
        value, want = d["value"], d["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        _warn_damaged(path, f"unreadable: {err}")
        return False, None
    if _json_sum(value) != want:
        _warn_damaged(path, "checksum mismatch")
        return False, None
    return True, value


__all__ = [
    "ALGORITHM_VERSION",
    "CACHE_ENV",
    "IDENTITY_FILE",
    "Identity",
    "IdentityMismatch",
    "arrays_digest",
    "bind_identity",
    "cache_dir",
    "describe_files",
    "describe_input",
    "describe_tree",
    "diff",
    "file_digest",
    "folder_digest",
    "folder_files",
    "load_checked_arrays",
    "read_checked_json",
    "save_checked_arrays",
    "tree_digest",
    "write_checked_json",
]
