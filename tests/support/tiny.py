"""The tiny Gemma-2-shaped model and SAEs most tests run on (fixtures in tests/conftest.py).

One shape, so that jit caches are shared across test files: vocab 64, d_model 32, 4 query heads
over 2 KV heads of width 8, MLP 64, sliding window 6, EOS 1. ``TINY`` has 3 layers, ``TINY4`` 4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from refusal_jax import sae as sae_lib
from refusal_jax.core.config import ModelConfig, gemma2_config, shape_kw
from refusal_jax.core.model import init_params


def tiny_config(n_layers: int = 3, **kw) -> ModelConfig:
    """The tests' tiny Gemma-2 config with ``n_layers`` layers; ``kw`` overrides fields."""
    return gemma2_config(
        **shape_kw(64, 32, n_layers, 4, 2, 8, 64), sliding_window=6, eos_token_ids=(1,), **kw
    )


TINY = tiny_config(3)
TINY4 = tiny_config(4)
TINY_D_SAE = 96  # SAE width of the ``tiny_saes`` fixture


def tiny_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Random weights (scale 0.3, embeddings shrunk to 0.2 of that) that give varied logits."""
    p = init_params(cfg, jax.random.PRNGKey(seed), scale=0.3)
    return p | {"embed": p["embed"] * 0.2}


def jumprelu_saes(cfg: ModelConfig, d_sae: int, seed: int = 7, threshold: float = 0.3):
    """Stacked JumpReLU SAEs [n_layers, ...] whose thresholds leave a realistic fraction of
    features active: unit-norm decoder rows, encoder = 0.5 W_dec^T + noise, random b_dec."""
    keys = jax.random.split(jax.random.PRNGKey(seed), cfg.n_layers)
    sae_cfg = sae_lib.SAEConfig(architecture="jumprelu", d_in=cfg.d_model, d_sae=d_sae)
    layers = []
    for k in keys:
        k1, k2, k3 = jax.random.split(k, 3)
        w_dec = jax.random.normal(k1, (d_sae, cfg.d_model))
        w_dec = w_dec / jnp.linalg.norm(w_dec, axis=-1, keepdims=True)
        layers.append(
            sae_lib.SAE(
                W_enc=w_dec.T * 0.5 + 0.05 * jax.random.normal(k2, (cfg.d_model, d_sae)),
                b_enc=jnp.zeros((d_sae,)),
                W_dec=w_dec,
                b_dec=0.1 * jax.random.normal(k3, (cfg.d_model,)),
                threshold=jnp.full((d_sae,), threshold),
                cfg=sae_cfg,
            )
        )
    return sae_lib.stack_saes(layers)


def padded_batch(vocab_size: int, seed: int = 0, pads=(0, 2, 4), t: int = 9):
    """(ids [B, t] int, mask [B, t]) of random tokens >= 3, row i left-padded by ``pads[i]``."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, vocab_size, size=(len(pads), t))
    mask = np.ones_like(ids)
    for row, n in enumerate(pads):
        ids[row, :n], mask[row, :n] = 0, 0
    return jnp.asarray(ids), jnp.asarray(mask)
