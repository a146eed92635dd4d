"""One entry point for every model folder a user may name: :func:`load_model`."""

from __future__ import annotations

import jax.numpy as jnp

from ports.hf import load_hf
from ports.registry import resolve_model
from refusal_jax.core.checkpoint import CONFIG_NAME, is_converted, load_converted
from refusal_jax.core.config import ModelConfig


def load_model(folder, mesh=None, dtype=None) -> tuple[ModelConfig, dict]:
    """(config, params) of a converted folder (orbax, fast) or a Hugging Face folder (read
    through :func:`ports.hf.load_hf`, float32 unless ``dtype`` says otherwise). ``mesh`` places
    every array on its shards while it loads; ``dtype`` casts while loading. A hub id
    (``google/gemma-2-2b-it``) is read from the local Hugging Face cache
    (:func:`ports.registry.resolve_model`)."""
    folder = resolve_model(folder)
    if is_converted(folder):
        return load_converted(folder, mesh=mesh, dtype=dtype)
    if (folder / "config.json").exists():
        return load_hf(folder, dtype=jnp.float32 if dtype is None else dtype, mesh=mesh)
    raise FileNotFoundError(
        f"{folder}: neither a converted model ({CONFIG_NAME}) nor an HF folder (config.json)"
    )


__all__ = ["load_model"]
