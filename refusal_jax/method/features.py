"""Feature sets: which SAE features (layer, index) an intervention or analysis is about.

A :class:`FeatureSet` is padded per-layer index arrays, so it is a fixed-shape pytree that patches
can take under jit: ``idx [L, K]`` (global) or ``[B, L, K]`` (one set per sample), with ``mask``
marking the real entries. Every selection method in :mod:`refusal_jax.method.selection` returns one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from refusal_jax.core.patches import take_rows


@struct.dataclass
class FeatureSet:
    idx: jax.Array  # [L, K] or [B, L, K] int32; padding entries hold 0
    mask: jax.Array  # same shape, bool

    @property
    def per_sample(self) -> bool:
        return self.idx.ndim == 3

    @property
    def n_layers(self) -> int:
        return self.idx.shape[-2]

    def size(self) -> np.ndarray:
        """Number of features (per sample for per-sample sets)."""
        return np.asarray(self.mask).sum(axis=(-1, -2))

    def pairs(self, sample: int | None = None) -> list[tuple[int, int]]:
        """Sorted (layer, feature) pairs; ``sample`` picks one row of a per-sample set."""
        idx, mask = np.asarray(self.idx), np.asarray(self.mask)
        if self.per_sample:
            if sample is None:
                raise ValueError("per-sample FeatureSet: pass sample=")
            idx, mask = idx[sample], mask[sample]
        return sorted((int(layer), int(idx[layer, k])) for layer, k in zip(*np.nonzero(mask)))

    def counts_per_layer(self) -> np.ndarray:
        return np.asarray(self.mask).sum(-1)

    def rows(self, start: int, size: int) -> FeatureSet:
        """Samples ``start .. start+size`` of a per-sample set (the last repeated past the end,
        as batches pad prompts); a global set is returned unchanged."""
        if not self.per_sample:
            return self
        return FeatureSet(take_rows(self.idx, start, size), take_rows(self.mask, start, size))


def feature_set(
    pairs: Iterable[tuple[int, int]],
    n_layers: int,
    d_sae: int | None = None,
    width: int | None = None,
) -> FeatureSet:
    """Build a global :class:`FeatureSet` from (layer, feature) pairs: idx, mask [L, K], K the
    most features of any layer (at least ``width``), sorted indices, masked padding.

    Raises ``ValueError`` naming the offending pair when a layer or feature is out of range.
    """
    pairs = [(int(a), int(b)) for a, b in pairs]
    per_layer: list[list[int]] = [[] for _ in range(n_layers)]
    for layer, f in pairs:
        if not 0 <= layer < n_layers:
            raise ValueError(f"feature ({layer}, {f}): layer out of range [0, {n_layers})")
        if f < 0 or (d_sae is not None and f >= d_sae):
            raise ValueError(f"feature ({layer}, {f}): index out of range [0, {d_sae})")
        if f not in per_layer[layer]:
            per_layer[layer].append(f)
    k = max(width or 0, max((len(x) for x in per_layer), default=0), 1)
    idx = np.zeros((n_layers, k), np.int32)
    mask = np.zeros((n_layers, k), bool)
    for layer, fs in enumerate(per_layer):
        idx[layer, : len(fs)] = sorted(fs)
        mask[layer, : len(fs)] = True
    return FeatureSet(idx=jnp.asarray(idx), mask=jnp.asarray(mask))


def per_sample_feature_set(
    pair_lists: Sequence[Iterable[tuple[int, int]]],
    n_layers: int,
    d_sae: int | None = None,
    width: int | None = None,
) -> FeatureSet:
    """One feature set per sample, padded to a common width (default: the widest sample's):
    idx/mask [B, L, K]."""
    if width is None:
        width = max(feature_set(p, n_layers, d_sae).idx.shape[-1] for p in pair_lists)
    sets = [feature_set(p, n_layers, d_sae, width=width) for p in pair_lists]
    return FeatureSet(idx=jnp.stack([s.idx for s in sets]), mask=jnp.stack([s.mask for s in sets]))


def pad_width(fs: FeatureSet, width: int) -> FeatureSet:
    """The same set with its per-layer axis padded to ``width`` (masked entries), so sets of
    different sizes share one shape (and jitted patches one compilation)."""
    k = fs.idx.shape[-1]
    if width < k:
        raise ValueError(f"pad_width: width {width} is less than the set's width {k}")
    pad = [(0, 0)] * (fs.idx.ndim - 1) + [(0, width - k)]
    return FeatureSet(idx=jnp.pad(fs.idx, pad), mask=jnp.pad(fs.mask, pad))


def union(*sets: FeatureSet) -> FeatureSet:
    """Union of global feature sets."""
    n = sets[0].n_layers
    return feature_set([p for s in sets for p in s.pairs()], n)


def difference(a: FeatureSet, b: FeatureSet) -> FeatureSet:
    """Features of ``a`` not in ``b`` (global sets)."""
    drop = set(b.pairs())
    return feature_set([p for p in a.pairs() if p not in drop], a.n_layers)


def intersection(*sets: FeatureSet) -> FeatureSet:
    """Features in every one of the global sets."""
    common = set(sets[0].pairs())
    for s in sets[1:]:
        common &= set(s.pairs())
    return feature_set(sorted(common), sets[0].n_layers)
