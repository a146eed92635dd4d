"""Shared plumbing for experiment scripts: the subject (model, tokenizer, SAEs), run folders,
atomic result files and a content-keyed cache of intermediate results.

Every script under ``experiments/`` uses the same flags (:func:`add_subject_arguments`,
:func:`add_run_arguments`): with no flags it runs on the embedded organism, with ``--model-dir``,
``--sae-dir`` and ``--data-dir`` on a real converted model and the refusal_direction data.

Caching: :class:`Cache` stores arrays as safetensors and everything else as JSON under
``<run>/cache/<name>-<key>.*``, where ``key`` hashes the inputs that determine the result (never
pickle). Rerunning a script with ``--resume <run folder>`` reuses every finished entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


# ----------------------------------------------------------------------------- files
def write_text_atomic(path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, np.ndarray) or type(obj).__module__.startswith("jax"):
        return np.asarray(obj).tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path, obj) -> None:
    """Write ``obj`` (dicts, lists, numbers, numpy/jax arrays, dataclasses) as JSON atomically."""
    write_text_atomic(path, json.dumps(_jsonable(obj), indent=2))


def read_json(path):
    return json.loads(Path(path).read_text())


def save_arrays_atomic(path, arrays: dict) -> None:
    """Save a flat dict of arrays as safetensors atomically."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: np.ascontiguousarray(np.asarray(v)) for k, v in arrays.items()}, str(tmp))
    os.replace(tmp, path)


def load_arrays(path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


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
            return _jsonable(fn())
        path = self._path(name, key, ".json")
        if path.exists():
            return read_json(path)
        out = _jsonable(fn())
        write_json_atomic(path, out)
        return out


# ----------------------------------------------------------------------------- run folders
def add_run_arguments(p) -> None:
    p.add_argument("--out", default="runs", help="parent folder of the run folder")
    p.add_argument(
        "--resume", default=None, help="an existing run folder: reuse its cached results"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_folder(args, name: str) -> Path:
    """``--resume DIR`` if given (must exist), else a new ``<out>/<name>-seed<seed>-<time>``."""
    if getattr(args, "resume", None):
        folder = Path(args.resume)
        if not folder.is_dir():
            raise FileNotFoundError(f"--resume {folder}: no such run folder")
        return folder
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(args.out) / f"{name}-seed{args.seed}-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ----------------------------------------------------------------------------- the subject
@dataclasses.dataclass
class Subject:
    """What an experiment runs on. ``organism`` is True for the embedded model organism, whose
    corpus (``refusal_jax.organism.corpus.build_corpus``) stands in for the datasets."""

    cfg: object
    params: dict
    tokenizer: object
    saes: object
    organism: bool
    data_dir: str | None
    # Default multiply-clamp factor: the paper's -3 (Gemma) on real models; -0.5 on the organism.
    clamp_value: float
    # A harmful-prompt response counts as a jailbreak when it is no refusal and, if given, opens
    # with one of these (the organism's helpful openers).
    compliance_prefixes: tuple[str, ...] | None
    skip_positions: int = 1
    # F0: candidate features per layer (the paper's 10; 40 on the organism, see ORGANISM_METHOD)
    n_candidates: int = 10

    def describe(self) -> dict:
        return {
            "organism": self.organism,
            "family": self.cfg.family,
            "n_layers": self.cfg.n_layers,
            "d_model": self.cfg.d_model,
            "d_sae": int(self.saes.W_dec.shape[-2]),
            "sae_architecture": self.saes.cfg.architecture,
        }


def add_subject_arguments(p) -> None:
    p.add_argument("--model-dir", help="converted (python -m ports.hf) or HF model folder")
    p.add_argument("--sae-dir", help="per-layer SAE folder (GemmaScope tree, SAELens, ...)")
    p.add_argument("--sae-width", help="GemmaScope width folder, e.g. 65k (auto if only one)")
    p.add_argument("--target-l0", type=float, default=100.0)
    p.add_argument("--data-dir", help="refusal_direction data (or $REFUSAL_JAX_DATA)")
    p.add_argument(
        "--skip-positions",
        type=int,
        default=None,
        help="positions after padding excluded from attribution (default 1: BOS)",
    )


ORGANISM_COMPLIANCE = ("Sure", "Here", "Great question", "Of course", "Certainly", "Happy to help")
# The organism's method hyperparameters, as the paper sets c per model (-3 Gemma, -1 Llama):
# chosen on the organism's *validation* split (experiments/calibrate.py) from c in
# {0, -0.5, -1, -2, -3} and F0 size in {10, 20, 40, 80} per layer (F0 40 with c = -0.5 or -1
# jailbreaks 0.97 of the validation prompts; the paper's F0 = 10 0.96 at c = -1; c = -3, the
# paper's Gemma value, pushes the residual stream off distribution: 0.06).
ORGANISM_METHOD = {"clamp_value": -0.5, "n_candidates": 40}


def _only_width(root: Path):
    widths = {p.name for p in root.glob("layer_*/width_*") if p.is_dir()}
    if len(widths) == 1:
        return widths.pop().split("_", 1)[1]
    return None


def load_saes(sae_dir, n_layers: int, width=None, target_l0: float = 100):
    """Stacked SAEs (leading layer axis) from a folder of per-layer SAEs (any supported format)."""
    from ports.sae import load_sae_set
    from refusal_jax.sae import stack_sae_set

    root = Path(sae_dir)
    width = width or _only_width(root)
    stacked, _ = stack_sae_set(load_sae_set(root, width=width, target_l0=target_l0), n_layers)
    return stacked


def load_subject(args) -> Subject:
    """The organism (no ``--model-dir``) or a converted real model with ``--sae-dir``."""
    skip = 1 if getattr(args, "skip_positions", None) is None else args.skip_positions
    width = getattr(args, "sae_width", None)
    target_l0 = getattr(args, "target_l0", 100.0)
    if getattr(args, "model_dir", None):
        from transformers import AutoTokenizer

        from refusal_jax.checkpoint import load_model

        if not args.sae_dir:
            raise SystemExit("--model-dir needs --sae-dir (SAEs for that model)")
        cfg, params = load_model(args.model_dir)
        tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
        saes = load_saes(args.sae_dir, cfg.n_layers, width, target_l0)
        return Subject(cfg, params, tokenizer, saes, False, args.data_dir, -3.0, None, skip)
    from refusal_jax.organism import ARTIFACTS, load_organism

    cfg, params, tokenizer = load_organism()
    sae_dir = getattr(args, "sae_dir", None) or ARTIFACTS / "saes"
    saes = load_saes(sae_dir, cfg.n_layers, width, target_l0)
    return Subject(
        cfg,
        params,
        tokenizer,
        saes,
        True,
        None,
        ORGANISM_METHOD["clamp_value"],
        ORGANISM_COMPLIANCE,
        skip,
        ORGANISM_METHOD["n_candidates"],
    )


__all__ = [
    "ORGANISM_COMPLIANCE",
    "ORGANISM_METHOD",
    "Cache",
    "Subject",
    "add_run_arguments",
    "add_subject_arguments",
    "content_key",
    "load_arrays",
    "load_saes",
    "load_subject",
    "read_json",
    "run_folder",
    "save_arrays_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
