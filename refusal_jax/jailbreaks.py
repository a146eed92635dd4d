"""Jailbreak analysis (section 4.3): how jailbreaks move harm and refusal features.

*Refusal features*: a feature set such as F* (the paper's refusal features). *Harm features*:
features that tell harmful from harmless requests, here the ``act`` baseline (largest gap of
mean max-activation between harmful and harmless prompts) minus the refusal features.

- :func:`pair_drops`: for adversarial prompts that jailbreak and their plain versions that are
  refused, the relative drop ``(plain - adversarial) / plain`` of the harm-feature activation
  (summed over the set, mean over the prompt's tokens) and of the refusal-feature activation
  (mean over the last 5 tokens).
- :func:`suffix_effects`: for prompts ending in an adversarial suffix, the refusal-feature
  activation with and without clamping the harm features from their first strong position
  onward (per prompt: the first token where the harm activation reaches half its maximum), and
  per suffix token the change in refusal-feature activation when that token is removed (the most
  suppressive suffix words are those whose removal raises it most).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from refusal_jax.direction import batches
from refusal_jax.features import FeatureSet
from refusal_jax.interventions import clamp_features, feature_values
from refusal_jax.model import forward_fn


@functools.partial(jax.jit, static_argnames=("cfg",))
def _set_activation(params, cfg, saes, features, ids, mask, patch):
    """Per-token summed activation of a feature set: [B, T]."""
    resid = forward_fn(params, cfg, ids, mask, patch, return_residuals=True).resid_post
    vals = feature_values(saes, features, resid)  # [L, B, T, K]
    m = features.mask.astype(vals.dtype)  # [L, K]
    return jnp.einsum("lbtk,lk->bt", vals, m)


def set_activation(params, cfg, saes, features: FeatureSet, ids, mask, patch=None, batch_size=32):
    """Per-token summed activation of ``features`` on every prompt: [N, T] (0 on padding)."""
    from refusal_jax.patches import Identity, check_patch_rows, patch_rows

    patch = patch or Identity()
    check_patch_rows(patch, len(ids))
    out = []
    for i, (b_ids, b_mask, n) in enumerate(batches(ids, mask, batch_size)):
        p = patch_rows(patch, i * batch_size, batch_size)
        a = _set_activation(params, cfg, saes, features, b_ids, b_mask, p)
        out.append(np.asarray(a * b_mask)[:n])
    return np.concatenate(out)


def sequence_mean(act, mask) -> np.ndarray:
    mask = np.asarray(mask, np.float32)
    return (np.asarray(act) * mask).sum(-1) / np.maximum(mask.sum(-1), 1)


def last_tokens_mean(act, k: int = 5) -> np.ndarray:
    return np.asarray(act)[:, -k:].mean(-1)  # left padding: the last k are real tokens


def pair_drops(params, cfg, saes, harm: FeatureSet, refusal: FeatureSet, adv, plain) -> dict:
    """Relative drops of harm and refusal activation from plain to adversarial prompts.
    ``adv`` and ``plain`` are (ids, mask) of the paired prompts, same order."""
    h_adv = sequence_mean(set_activation(params, cfg, saes, harm, *adv), adv[1])
    h_pl = sequence_mean(set_activation(params, cfg, saes, harm, *plain), plain[1])
    r_adv = last_tokens_mean(set_activation(params, cfg, saes, refusal, *adv))
    r_pl = last_tokens_mean(set_activation(params, cfg, saes, refusal, *plain))
    drop = lambda a, p: (p - a) / np.maximum(np.abs(p), 1e-6)
    return {
        "harm_plain": h_pl.tolist(),
        "harm_adversarial": h_adv.tolist(),
        "refusal_plain": r_pl.tolist(),
        "refusal_adversarial": r_adv.tolist(),
        "harm_relative_drop": float(np.mean(drop(h_adv, h_pl))),
        "refusal_relative_drop": float(np.mean(drop(r_adv, r_pl))),
    }


def first_strong_position(act, mask, fraction: float = 0.5) -> np.ndarray:
    """Per prompt, the position id (counting real tokens from 0) of the first token whose
    activation reaches ``fraction`` of that prompt's maximum: [N] int."""
    act, mask = np.asarray(act), np.asarray(mask).astype(bool)
    out = np.zeros(len(act), np.int32)
    for i in range(len(act)):
        a = act[i][mask[i]]
        if a.size and a.max() > 0:
            out[i] = int(np.argmax(a >= fraction * a.max()))
    return out


def suffix_effects(
    params, cfg, saes, harm: FeatureSet, refusal: FeatureSet, ids, mask, suffix_slots,
    clamp_value: float = 0.0,
) -> dict:  # fmt: skip
    """Refusal activation (last 5 tokens) with / without clamping the harm features from their
    first strong position onward, and per suffix token the refusal activation with that token
    removed (replaced by padding, i.e. masked out). ``suffix_slots`` [N, S] positions."""
    ids, mask = np.asarray(ids), np.asarray(mask)
    base = last_tokens_mean(set_activation(params, cfg, saes, refusal, ids, mask))
    start = first_strong_position(set_activation(params, cfg, saes, harm, ids, mask), mask)
    clamp = clamp_features(saes, harm, clamp_value, min_position=jnp.asarray(start))
    clamped = last_tokens_mean(set_activation(params, cfg, saes, refusal, ids, mask, clamp))
    slots = np.asarray(suffix_slots)
    removed = np.zeros(slots.shape, np.float32)
    for j in range(slots.shape[1]):
        m = mask.copy()
        m[np.arange(len(m)), slots[:, j]] = 0
        removed[:, j] = last_tokens_mean(set_activation(params, cfg, saes, refusal, ids, m))
    return {
        "refusal_with_suffix": base.tolist(),
        "refusal_harm_clamped": clamped.tolist(),
        "harm_start_position": start.tolist(),
        "refusal_token_removed": removed.tolist(),  # [N, S]
        "suppression_by_slot": (removed - base[:, None]).mean(0).tolist(),
    }


__all__ = [
    "first_strong_position",
    "last_tokens_mean",
    "pair_drops",
    "sequence_mean",
    "set_activation",
    "suffix_effects",
]
