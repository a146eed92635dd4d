"""Result files written atomically (a temporary file, then a rename), and read back.

JSON for numbers, lists and dicts; safetensors for arrays (never pickle).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
from jax.typing import ArrayLike
from safetensors.numpy import load_file, save_file

from refusal_jax.core.errors import UsageError, UserError, WeightsError


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_figure_atomic(fig: object, path: str | os.PathLike, **kw: object) -> None:
    """``fig.savefig(path, **kw)`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    fig.savefig(tmp, **kw)
    os.replace(tmp, path)


def check_separate(
    out: str | os.PathLike,
    src: str | os.PathLike,
    out_flag: str = "--out",
    src_flag: str = "the input",
) -> None:
    """Refuse an output path equal to, inside, or containing the input path (a conversion
    would overwrite or delete its own source): :class:`UsageError` naming both flags."""
    o, s = Path(out).resolve(), Path(src).resolve()
    if o == s or s in o.parents or o in s.parents:
        rel = "is" if o == s else "is inside" if s in o.parents else "contains"
        raise UsageError(
            f"{out_flag} {out} {rel} {src_flag} {src}: write the output somewhere else"
        )


def jsonable(obj: object) -> object:
    """``obj`` with dicts, lists/tuples, dataclasses, numpy scalars, numpy/jax arrays (any
    shape, as nested lists) and paths turned into plain JSON values."""
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


def write_json_atomic(path: str | os.PathLike, obj: object) -> None:
    """Write ``obj`` (dicts, lists, numbers, numpy/jax arrays, dataclasses) as JSON atomically."""
    write_text_atomic(path, json.dumps(jsonable(obj), indent=2))


def read_json(path: str | os.PathLike) -> object:
    """The JSON in ``path``; a malformed or non-UTF-8 file is a :class:`UserError` naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: malformed JSON ({e})") from None


def read_json_file(path, error: type[Exception] = ValueError, what: str = "file"):
    """The JSON value in ``path``; a missing file or malformed JSON raises ``error`` naming the
    path (``"<path>: no such <what>"``, ``"<path>: not valid JSON (...)"``)."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: no such {what}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a {what}") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from e


def save_arrays_atomic(
    path: str | os.PathLike, arrays: dict[str, ArrayLike], metadata: dict[str, str] | None = None
) -> None:
    """Save a flat dict of arrays as safetensors atomically (``metadata``: header strings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(
        {k: np.ascontiguousarray(np.asarray(v)) for k, v in arrays.items()}, str(tmp), metadata
    )
    os.replace(tmp, path)


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a safetensors file; a damaged file is a :class:`WeightsError` naming it."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise WeightsError(f"{path}: unreadable safetensors file ({e})") from None


__all__ = [
    "check_separate",
    "jsonable",
    "load_arrays",
    "read_json",
    "save_arrays_atomic",
    "save_figure_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
