"""Feature selection (docs/METHOD.md section 4): candidates F0, the paper's F* (per sample and
global) and the baselines cs, act, la and random. Every function returns a :class:`FeatureSet`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from refusal_jax import sae as sae_lib
from refusal_jax.core.batching import batches
from refusal_jax.core.config import ModelConfig
from refusal_jax.core.model import forward
from refusal_jax.core.positions import ContentPositions
from refusal_jax.method.features import FeatureSet, feature_set, per_sample_feature_set
from refusal_jax.sae import SAE


def decoder_cosines(saes: SAE, direction: jax.Array) -> jax.Array:
    """Cosine similarity of every layer's decoder rows with one direction [D]: [L, d_sae]."""
    r = jnp.asarray(direction, jnp.float32)
    r = r / jnp.linalg.norm(r)
    w = saes.W_dec.astype(jnp.float32)  # [L, S, D]
    return jnp.einsum("lsd,d->ls", w, r) / jnp.maximum(jnp.linalg.norm(w, axis=-1), 1e-12)


def _top_pairs(scores: np.ndarray, n: int, allowed: np.ndarray | None = None):
    """Top-n (layer, feature) pairs of a [L, S] score array (ties broken by position)."""
    s = np.asarray(scores, np.float64).copy()
    if allowed is not None:
        s[~allowed] = -np.inf
    n = min(n, int(np.isfinite(s).sum()))
    flat = np.argsort(-s, axis=None, kind="stable")[:n]
    return [tuple(int(v) for v in np.unravel_index(i, s.shape)) for i in flat]


def candidate_features(saes: SAE, direction: jax.Array, k: int = 10) -> FeatureSet:
    """F0: per layer, the k decoder rows most cosine-similar to ``direction`` [D] (r at the
    best layer, compared against every layer's decoder of the stacked ``saes`` [L, ...])."""
    cos = np.asarray(decoder_cosines(saes, direction))
    top = np.argsort(-cos, axis=-1, kind="stable")[:, :k]
    return feature_set(
        [(layer, int(f)) for layer in range(cos.shape[0]) for f in top[layer]],
        cos.shape[0],
        cos.shape[1],
    )


def _allowed(fs: FeatureSet | None, shape) -> np.ndarray | None:
    if fs is None:
        return None
    allowed = np.zeros(shape, bool)
    for layer, f in fs.pairs():
        allowed[layer, f] = True
    return allowed


def top_features(
    scores: np.ndarray, n: int = 20, candidates: FeatureSet | None = None
) -> FeatureSet:
    """Global set: the top ``n`` of a [L, S] score array (restricted to ``candidates``)."""
    scores = np.asarray(scores)
    pairs = _top_pairs(scores, n, _allowed(candidates, scores.shape))
    return feature_set(pairs, scores.shape[0], scores.shape[1])


def select_features(
    attributions: np.ndarray,
    n: int = 20,
    candidates: FeatureSet | None = None,
    per_sample: bool = False,
) -> FeatureSet:
    """The paper's F*: from position-averaged attributions [L, B, S] (see
    :func:`refusal_jax.method.laig.feature_attributions`), restricted to F0 ``candidates``, the top
    ``n`` per sample (``per_sample``) or of the mean over samples (global)."""
    a = np.asarray(attributions)
    L, B, S = a.shape
    if not per_sample:
        return top_features(a.mean(axis=1), n, candidates)
    allowed = _allowed(candidates, (L, S))
    return per_sample_feature_set([_top_pairs(a[:, b], n, allowed) for b in range(B)], L, S)


def cs_features(saes: SAE, direction: jax.Array, n: int = 20) -> FeatureSet:
    """Baseline ``cs``: top n over all layers by decoder cosine with the direction.

    Stacked ``saes`` [L, ...] (decoder rows W_dec [L, S, D]), direction [D] -> a global set of
    n (layer, feature) pairs."""
    return top_features(np.asarray(decoder_cosines(saes, direction)), n)


def la_features(attributions: np.ndarray, n: int = 20) -> FeatureSet:
    """Baseline ``la``: top n by attribution [L, B, S] averaged over samples, all features (no
    F0 restriction)."""
    return top_features(np.asarray(attributions).mean(axis=1), n)


def act_features(
    max_act_harmful: np.ndarray, max_act_harmless: np.ndarray, n: int = 20
) -> FeatureSet:
    """Baseline ``act``: top n by mean-over-prompts of max-over-positions activation on harmful
    minus the same on harmless ([L, S] each; see :func:`max_activation_means`)."""
    return top_features(np.asarray(max_act_harmful) - np.asarray(max_act_harmless), n)


def random_features(like: FeatureSet, d_sae: int, seed: int = 0) -> FeatureSet:
    """Random baseline with the same number of features per layer as ``like``."""
    rng = np.random.default_rng(seed)
    counts = like.counts_per_layer() if not like.per_sample else like.counts_per_layer()[0]
    pairs = [
        (layer, int(f))
        for layer, c in enumerate(counts)
        for f in rng.choice(d_sae, size=int(c), replace=False)
    ]
    return feature_set(pairs, like.n_layers, d_sae)


@jax.jit
def _max_acts(saes, resid_post, mask):
    def one_layer(args):
        layer, x = args
        f = sae_lib.encode(sae_lib.sae_layer(saes, layer), x)  # [B, T, S]
        f = jnp.where(mask[..., None].astype(bool), f, -jnp.inf).max(axis=1)  # [B, S]
        return jnp.where(jnp.isfinite(f), f, 0.0)  # a row without content positions: 0

    return jax.lax.map(one_layer, (jnp.arange(resid_post.shape[0]), resid_post))


def max_activation_means(
    params: dict,
    cfg: ModelConfig,
    saes: SAE,
    ids: ArrayLike,
    mask: ArrayLike,
    batch_size: int = 16,
    positions: ContentPositions | None = None,
) -> jax.Array:
    """Mean over prompts of each feature's max activation over positions: ids [N, T] int,
    mask [N, T], stacked ``saes`` [L, ...] -> [L, S].

    positions: a :class:`refusal_jax.core.positions.ContentPositions` (the max is taken over
    its content positions only, so sinks such as BOS cannot win it); None: every real token."""

    total, count = None, 0
    for b_ids, b_mask, n in batches(ids, mask, batch_size):
        resid = forward(params, cfg, b_ids, b_mask, return_residuals=True).resid_post
        where = b_mask if positions is None else positions.mask(b_ids, b_mask)
        m = _max_acts(saes, resid, where)[:, :n].sum(axis=1)
        total = m if total is None else total + m
        count += n
    return total / count
