"""The main job. Until the embedded model organism lands this runs the core on a small model:
forward pass with residuals, greedy generation, and generation under a steering patch."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from refusal_jax.checkpoint import load_model
from refusal_jax.config import gemma2_config
from refusal_jax.model import forward, generate, init_params
from refusal_jax.patches import add_at_layers


def run_demo(args) -> None:
    if args.model_dir:
        cfg, params = load_model(args.model_dir)
    else:
        cfg = gemma2_config(
            vocab_size=512,
            d_model=64,
            n_layers=4,
            n_heads=4,
            n_kv_heads=2,
            head_dim=16,
            d_mlp=128,
            sliding_window=8,
        )
        params = init_params(cfg, jax.random.PRNGKey(args.seed), scale=0.2)
    ids = jax.random.randint(jax.random.PRNGKey(args.seed + 1), (4, 12), 3, cfg.vocab_size)
    mask = jnp.ones_like(ids).at[1, :3].set(0)
    t0 = time.perf_counter()
    out = forward(params, cfg, ids, mask, return_residuals=True)
    jax.block_until_ready(out.logits)
    print(
        f"forward: logits {out.logits.shape}, resid_post {out.resid_post.shape} "
        f"({time.perf_counter() - t0:.2f}s incl. compile)"
    )
    base = generate(params, cfg, ids, mask, max_new_tokens=8)
    direction = out.resid_post[cfg.n_layers // 2, :, -1].mean(0)
    steer = add_at_layers(-4.0 * direction, [cfg.n_layers // 2], cfg.n_layers)
    steered = generate(params, cfg, ids, mask, max_new_tokens=8, patch=steer)
    changed = int((base.tokens != steered.tokens).any(axis=1).sum())
    print(f"greedy generation: {base.tokens.shape}; steering changed {changed}/4 continuations")
