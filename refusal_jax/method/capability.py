"""Capability under intervention: cross-entropy of given continuations with and without a patch.

The paper measures CE loss on harmless prompts with the *unpatched* model's own greedy rollouts
as targets, and CE on plain text; both reduce to :func:`masked_ce` over a token mask.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from refusal_jax.core.config import ModelConfig
from refusal_jax.core.losses import next_token_nll_sum
from refusal_jax.core.model import forward_fn
from refusal_jax.core.patches import Identity, check_patch_rows, patch_rows


@functools.partial(jax.jit, static_argnames=("cfg",))
def _ce_sums(params, cfg, ids, mask, target_mask, patch):
    logits = forward_fn(params, cfg, ids, mask, patch).logits
    return next_token_nll_sum(logits, ids, target_mask[:, 1:])


def masked_ce(
    params: dict,
    cfg: ModelConfig,
    ids: np.ndarray,
    mask: np.ndarray,
    target_mask: np.ndarray,
    patch: object | None = None,
    batch_size: int = 32,
) -> float:
    """Mean next-token CE (nats) over tokens where ``target_mask`` is 1 (each predicted from
    its prefix), in fixed-size batches. ids, mask, target_mask [B, T]."""
    ids, mask, target_mask = (np.asarray(a) for a in (ids, mask, target_mask))
    patch = patch or Identity()
    check_patch_rows(patch, len(ids))
    total, count = 0.0, 0.0
    for start in range(0, len(ids), batch_size):
        sl = slice(start, start + batch_size)
        b_ids, b_mask, b_tgt = ids[sl], mask[sl], target_mask[sl]
        fill = batch_size - len(b_ids)
        if fill:  # pad with all-masked rows: same shape, no contribution
            b_ids = np.concatenate([b_ids, np.zeros((fill, ids.shape[1]), ids.dtype)])
            b_mask = np.concatenate([b_mask, np.repeat(mask[:1], fill, 0)])
            b_tgt = np.concatenate([b_tgt, np.zeros((fill, ids.shape[1]), target_mask.dtype)])
        b_patch = patch_rows(patch, start, batch_size)
        s, c = _ce_sums(
            params, cfg, jnp.asarray(b_ids), jnp.asarray(b_mask), jnp.asarray(b_tgt), b_patch
        )
        total += float(s)
        count += float(c)
    if count == 0:
        raise ValueError("no target tokens to score")
    return total / count


def rollout_batch(
    prompt_ids: np.ndarray, prompt_mask: np.ndarray, tokens: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prompts followed by their generated continuations: (ids, mask, target_mask) where the
    target mask covers the continuation tokens (EOS included).

    prompt_ids, prompt_mask [B, T]; tokens [B, N], lengths [B] (as from ``generate``) ->
    three [B, T + N] arrays."""
    prompt_ids, prompt_mask = np.asarray(prompt_ids), np.asarray(prompt_mask)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    cont = (np.arange(tokens.shape[1])[None] < lengths[:, None]).astype(np.int32)
    ids = np.concatenate([prompt_ids, np.where(cont, tokens, 0)], axis=1).astype(np.int32)
    mask = np.concatenate([prompt_mask, cont], axis=1)
    target = np.concatenate([np.zeros_like(prompt_mask), cont], axis=1)
    return ids, mask, target
