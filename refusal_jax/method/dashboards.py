"""The numbers of a feature dashboard (SAE-Vis / Neuronpedia style), as pure functions.

- :func:`logit_lens`: the tokens a decoder direction promotes and suppresses, read through the
  model's final norm and unembedding.
- :func:`top_contexts`: the prompts (and token positions) where a feature fires most.
- :func:`density`: a histogram of a feature's activations on one prompt set, on shared bins.
- :func:`attribution_ranks`: a feature's attribution score and its rank within its layer and
  over all layers.

The per-token activations these start from come from :func:`feature_activations` (also used by
the jailbreak analysis); :mod:`refusal_jax.study.dashboards` sequences everything for a run
folder.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from refusal_jax.core.batching import batches, bucket
from refusal_jax.core.config import ModelConfig
from refusal_jax.core.model import forward_fn, unembed
from refusal_jax.core.patches import Identity, check_patch_rows, patch_rows
from refusal_jax.method.features import FeatureSet, pad_width
from refusal_jax.method.interventions import feature_values
from refusal_jax.sae import SAE


@functools.partial(jax.jit, static_argnames=("cfg",))
def _activations(params, cfg, saes, features, ids, mask, patch):
    resid = forward_fn(params, cfg, ids, mask, patch, return_residuals=True).resid_post
    vals = feature_values(saes, features, resid)  # [L, B, T, K]
    fmask = features.mask if features.per_sample else features.mask[None]  # [B|1, L, K]
    vals = vals * fmask.transpose(1, 0, 2)[:, :, None, :]
    vals = vals * mask.astype(vals.dtype)[None, :, :, None]
    return vals.transpose(1, 2, 0, 3)  # [B, T, L, K]


def feature_activations(
    params: dict,
    cfg: ModelConfig,
    saes: SAE,
    features: FeatureSet,
    ids: ArrayLike,
    mask: ArrayLike,
    patch: object | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Activations of every feature of a global or per-sample set at every token of
    ids [N, T] int, mask [N, T] (stacked ``saes`` [L, ...]): [N, T, L, K] (0 on padding and on
    the set's padding entries). The set is padded to a width bucket while computing
    (:func:`~refusal_jax.core.batching.bucket`), so sets of nearby widths share one program."""
    ids, mask = np.asarray(ids), np.asarray(mask)
    if features.per_sample and features.idx.shape[0] != len(ids):
        raise ValueError(
            f"per-sample feature set for {features.idx.shape[0]} prompts, got {len(ids)} prompts"
        )
    patch = patch or Identity()
    check_patch_rows(patch, len(ids))
    width = features.idx.shape[-1]
    features = pad_width(features, bucket(width))
    out = []
    for i, (b_ids, b_mask, n) in enumerate(batches(ids, mask, batch_size)):
        start = i * batch_size
        fs = features.rows(start, batch_size)
        p = patch_rows(patch, start, batch_size)
        acts = _activations(params, cfg, saes, fs, b_ids, b_mask, p)
        out.append(np.asarray(acts)[:n, ..., :width])
    return np.concatenate(out)


_unembed = jax.jit(unembed, static_argnums=1)


def lens_logits(params: dict, cfg: ModelConfig, directions: ArrayLike) -> np.ndarray:
    """Logits of directions [K, D] read as residual vectors: final norm, unembedding (and the
    final softcap where the model has one): [K, V] float32."""
    d = jnp.asarray(directions, params["embed"].dtype)
    return np.asarray(_unembed(params, cfg, d), np.float32)


def logit_lens(
    params: dict, cfg: ModelConfig, directions: ArrayLike, k: int = 10
) -> dict[str, np.ndarray]:
    """Top-``k`` promoted and suppressed tokens of each direction [K, D] (e.g. decoder rows
    ``W_dec[layer, feature]``) through the final norm and unembedding.

    Returns ``promoted_ids``/``promoted_logits`` [K, k] (largest logits first) and
    ``suppressed_ids``/``suppressed_logits`` [K, k] (smallest first)."""
    logits = lens_logits(params, cfg, directions)
    k = min(k, logits.shape[-1])
    up = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    down = np.argsort(logits, axis=-1, kind="stable")[:, :k]
    return {
        "promoted_ids": up.astype(np.int32),
        "promoted_logits": np.take_along_axis(logits, up, -1),
        "suppressed_ids": down.astype(np.int32),
        "suppressed_logits": np.take_along_axis(logits, down, -1),
    }


def top_contexts(acts: ArrayLike, mask: ArrayLike, k: int = 5) -> dict[str, np.ndarray]:
    """The ``k`` prompts where a feature's max activation over real tokens is largest.

    acts [N, T] (one feature's per-token activations), mask [N, T] (1 = real token). Returns
    ``prompt`` [k'] (indices into N, largest first, ties by index; k' = min(k, N)), ``position``
    [k'] (the argmax token of each), ``max`` [k'] and ``acts`` [k', T] (that prompt's per-token
    activations, 0 on padding). Prompts where the feature never fires still count (value 0)."""
    a = np.where(np.asarray(mask, bool), np.asarray(acts, np.float32), -np.inf)
    if a.ndim != 2:
        raise ValueError(f"top_contexts: acts must be [N, T], got shape {a.shape}")
    peak = a.max(axis=1)
    order = np.argsort(-peak, kind="stable")[: min(k, len(peak))]
    pos = a[order].argmax(axis=1)
    return {
        "prompt": order.astype(np.int32),
        "position": pos.astype(np.int32),
        "max": peak[order].astype(np.float32),
        "acts": np.where(np.isfinite(a[order]), a[order], 0.0).astype(np.float32),
    }


def max_per_prompt(acts: ArrayLike, mask: ArrayLike) -> np.ndarray:
    """A feature's max activation over each prompt's real tokens: acts [N, T], mask [N, T]
    -> [N]."""
    a = np.where(np.asarray(mask, bool), np.asarray(acts, np.float32), -np.inf)
    return np.maximum(a.max(axis=1), 0.0)


def density_bins(*value_sets: ArrayLike, n_bins: int = 20) -> np.ndarray:
    """Shared histogram edges [n_bins + 1] from 0 to the largest value of all sets (each
    [N_i]; 1 when all are 0), so densities of several prompt sets can be compared bar by bar."""
    hi = max((float(np.max(v)) for v in value_sets if np.size(v)), default=0.0)
    return np.linspace(0.0, hi if hi > 0 else 1.0, n_bins + 1).astype(np.float32)


def density(values: ArrayLike, edges: ArrayLike) -> np.ndarray:
    """Fraction of ``values`` [N] in each bin of ``edges`` [n_bins + 1] (the last bin closed):
    [n_bins] summing to 1 (all 0 for an empty set)."""
    v = np.asarray(values, np.float64).ravel()
    counts, _ = np.histogram(v, bins=np.asarray(edges, np.float64))
    return (counts / max(len(v), 1)).astype(np.float32)


def attribution_ranks(scores: ArrayLike, pairs: Iterable[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Attribution score of each (layer, feature) pair in ``scores`` [L, S] (e.g. LA-IG
    attributions averaged over prompts; ``pairs``: P (layer, feature) pairs), its rank within
    its layer and over all layers (0 = highest; ties by position as in feature selection).
    Returns ``score``, ``rank_layer``, ``rank_global`` [P] and ``layer_max`` [L] (each layer's
    largest score)."""
    s = np.asarray(scores, np.float64)
    L, S = s.shape
    pairs = [(int(a), int(b)) for a, b in pairs]
    for layer, f in pairs:
        if not (0 <= layer < L and 0 <= f < S):
            raise ValueError(f"attribution_ranks: feature ({layer}, {f}) outside scores {s.shape}")
    layer_order = np.argsort(-s, axis=1, kind="stable")
    rank_layer = np.empty_like(layer_order)
    np.put_along_axis(rank_layer, layer_order, np.arange(S)[None].repeat(L, 0), axis=1)
    flat = np.empty(L * S, np.int64)
    flat[np.argsort(-s, axis=None, kind="stable")] = np.arange(L * S)
    rank_global = flat.reshape(L, S)
    return {
        "score": np.array([s[a, b] for a, b in pairs], np.float32),
        "rank_layer": np.array([rank_layer[a, b] for a, b in pairs], np.int32),
        "rank_global": np.array([rank_global[a, b] for a, b in pairs], np.int32),
        "layer_max": s.max(axis=1).astype(np.float32),
    }


__all__ = [
    "attribution_ranks",
    "density",
    "density_bins",
    "feature_activations",
    "lens_logits",
    "logit_lens",
    "max_per_prompt",
    "top_contexts",
]
