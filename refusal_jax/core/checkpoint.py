"""Saving and restoring converted models and other pytrees with orbax-checkpoint.

A converted model folder holds ``refusal_jax_config.json`` (the :class:`ModelConfig`), ``params/``
(an orbax checkpoint) and, when given, the tokenizer files copied from the source folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.sharding import Mesh
from jax.typing import DTypeLike

from refusal_jax.core.config import ModelConfig
from refusal_jax.core.errors import check_finite_tree
from refusal_jax.core.sharding import param_shardings

CONFIG_NAME = "refusal_jax_config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "generation_config.json",
)


def save_pytree(path: str | os.PathLike, tree: object) -> None:
    """Save a pytree of arrays with orbax (overwrites)."""
    path = Path(path).absolute()
    if path.exists():
        shutil.rmtree(path)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, tree)


def load_pytree(path: str | os.PathLike, abstract: object | None = None) -> object:
    """Restore a pytree saved by :func:`save_pytree` (optionally onto given shardings/dtypes)."""
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path, abstract) if abstract is not None else ckptr.restore(path)


def replace_folder(tmp: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Swap the finished folder ``tmp`` in as ``folder``: the previous ``folder`` (if any) is
    renamed aside, ``tmp`` renamed in, then the previous one deleted. Until the swap the old
    folder is untouched; a crash between the two renames leaves it as ``.<name>.old``, which
    :func:`recover_folder` (called by every save) moves back."""
    tmp, folder = Path(tmp), Path(folder)
    old = folder.with_name(f".{folder.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if folder.exists():
        os.rename(folder, old)
    os.rename(tmp, folder)
    if old.exists():
        shutil.rmtree(old)


def recover_folder(folder: str | os.PathLike) -> None:
    """Undo a swap interrupted between its renames (see :func:`replace_folder`)."""
    folder = Path(folder)
    old = folder.with_name(f".{folder.name}.old")
    if old.exists() and not folder.exists():
        os.rename(old, folder)


def save_model(
    folder: str | os.PathLike,
    cfg: ModelConfig,
    params: dict,
    tokenizer_dir: str | os.PathLike | None = None,
) -> None:
    """Write a converted model folder (config, orbax params, tokenizer files copied from
    ``tokenizer_dir``). Everything is written into the temporary sibling ``.<name>.converting``
    and swapped in at the end (:func:`replace_folder`): an interrupted conversion never
    destroys an existing ``folder``; a rerun gives the same folder."""
    folder = Path(folder).absolute()
    recover_folder(folder)
    tmp = folder.with_name(f".{folder.name}.converting")
    if tmp.exists():
        shutil.rmtree(tmp)  # a previous interrupted conversion
    tmp.mkdir(parents=True)
    save_pytree(tmp / "params", params)
    (tmp / CONFIG_NAME).write_text(json.dumps(cfg.to_dict(), indent=2))
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.exists():
                shutil.copy(src, tmp / name)
    replace_folder(tmp, folder)


def is_converted(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a model converted by ``ports`` (an orbax checkpoint)."""
    return (Path(folder) / CONFIG_NAME).exists()


def load_converted(
    folder: str | os.PathLike, mesh: Mesh | None = None, dtype: DTypeLike | None = None
) -> tuple[ModelConfig, dict]:
    """Restore a converted model folder (``python -m ports.hf`` / ``ports.gguf`` output).

    With a ``mesh`` (:func:`refusal_jax.core.sharding.make_mesh`) every array is restored straight
    onto its shards (:func:`refusal_jax.core.sharding.param_specs`; multi-host: every process
    calls this with the same mesh). ``dtype`` (e.g. ``jnp.bfloat16``) casts while restoring; None
    keeps the stored dtype. Any folder kind (converted, Hugging Face): :func:`ports.load_model`."""
    folder = Path(folder)
    if not is_converted(folder):
        raise FileNotFoundError(f"{folder}: not a converted model (no {CONFIG_NAME})")
    cfg = ModelConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text()))
    if mesh is None:
        params = jax.tree.map(jnp.asarray, load_pytree(folder / "params"))
        check_finite_tree(params, str(folder / "params"))
        return cfg, params if dtype is None else jax.tree.map(lambda a: a.astype(dtype), params)
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(Path(folder / "params").absolute())
    meta = getattr(meta, "item_metadata", meta)
    abstract = jax.tree.map(
        lambda sh, m: jax.ShapeDtypeStruct(
            tuple(m.shape), m.dtype if dtype is None else jnp.dtype(dtype), sharding=sh
        ),
        param_shardings(cfg, mesh),
        dict(meta),
    )
    params = load_pytree(folder / "params", abstract)
    check_finite_tree(params, str(folder / "params"))
    return cfg, params
