"""The paper's interventions as activation patches (see :mod:`refusal_jax.core.patches`).

- :class:`AblateDirection`: x <- x - (x.r) r at chosen layers, from a position onward.
- :class:`ClampFeatures`: SAE feature edits (multiply / set / hold at given values), global or
  per-sample feature sets, from a position onward, always preserving the SAE error term. Computed
  sparsely: only the edited features are encoded, x <- x + sum_i (f'_i - f_i) W_dec[i]
  (docs/METHOD.md section 5); :func:`clamp_dense_reference` is the straightforward encode -> edit ->
  decode + error version the tests hold it to.
- :class:`Interpolate`: x <- (1 - alpha) x + alpha x_patch[layer] + delta[layer], the SAE-free form
  of LA-IG's interpolated run (docs/METHOD.md section 3).

Patches compose with :class:`refusal_jax.core.patches.Compose`; wrap in
:class:`refusal_jax.core.patches.PromptOnly` to leave generated tokens alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from refusal_jax import sae as sae_lib
from refusal_jax.core.batching import batches
from refusal_jax.core.config import ModelConfig
from refusal_jax.core.model import forward
from refusal_jax.core.patches import _agree, _count_if, _rows_if
from refusal_jax.method.features import FeatureSet
from refusal_jax.sae import SAE


def unit(v: jax.Array, axis: int = -1) -> jax.Array:
    """``v`` scaled to unit norm along ``axis``: e.g. v [..., D] -> [..., D]."""
    return v / jnp.linalg.norm(v, axis=axis, keepdims=True)


def _position_gate(ctx, min_position) -> jax.Array:
    """[B, T, 1] float gate: valid tokens at position >= min_position (scalar or [B])."""
    mp = jnp.asarray(min_position, jnp.int32)
    mp = mp[:, None] if mp.ndim == 1 else mp
    return ((ctx.positions >= mp) & ctx.token_mask)[..., None]


@struct.dataclass
class AblateDirection:
    """Directional ablation x <- x - (x . r_l) r_l with unit r_l = directions[layer].

    directions [L, D] (normalised here), layer_mask [L] bool, min_position scalar or [B].
    """

    directions: jax.Array
    layer_mask: jax.Array
    min_position: jax.Array = struct.field(default_factory=lambda: jnp.int32(0))

    def __call__(self, x, layer, ctx):
        r = unit(self.directions[layer].astype(jnp.float32))
        proj = jnp.einsum("btd,d->bt", x.astype(jnp.float32), r)[..., None] * r
        gate = _position_gate(ctx, self.min_position) & self.layer_mask[layer]
        return jnp.where(gate, x - proj.astype(x.dtype), x)

    def rows(self, start, size):
        return self.replace(min_position=_rows_if(self.min_position, 1, start, size))

    def n_rows(self):
        return _count_if(self.min_position, 1)


def ablate_direction(
    direction: jax.Array,
    n_layers: int,
    layers: Sequence[int] | None = None,
    min_position: int | jax.Array = 0,
) -> AblateDirection:
    """Ablate one direction [D] at ``layers`` (default: every layer), every position."""
    mask = (
        jnp.ones((n_layers,), bool)
        if layers is None
        else (jnp.zeros((n_layers,), bool).at[jnp.asarray(list(layers), jnp.int32)].set(True))
    )
    dirs = jnp.broadcast_to(jnp.asarray(direction), (n_layers,) + jnp.shape(direction))
    return AblateDirection(dirs, mask, jnp.asarray(min_position, jnp.int32))


def _layer_features(fs: FeatureSet, layer):
    return fs.idx[..., layer, :], fs.mask[..., layer, :]


def _sparse_delta(sae_l, x, idx, new_fn, gate_mask):
    """x + decode-delta of editing features idx [K] on x [T, D] (one sample or shared set)."""
    f = sae_lib.encode_features(sae_l, x, idx)  # [T, K]
    df = (new_fn(f) - f) * gate_mask
    w = sae_l.W_dec[idx]  # [K, D]
    return jnp.einsum("tk,kd->td", df.astype(w.dtype), w)


def _decoder_scale(sae_l):
    return jnp.asarray(getattr(sae_l.cfg, "input_scale", 1.0), jnp.float32)


@struct.dataclass
class ClampFeatures:
    """Edit SAE features at every layer that has features in ``features``.

    saes: stacked SAE (leading layer axis L) at resid_post.
    features: FeatureSet, global [L, K] or per-sample [B, L, K].
    value: [L, ...] per layer, broadcastable to [B, T, K] (after the layer axis): the factor
      (mode "multiply") or the target activation (mode "set"; per-token values hold features
      at e.g. their clean activations: "retain").
    min_position: scalar or [B]; tokens at earlier positions are left alone.
    """

    saes: object
    features: FeatureSet
    value: jax.Array
    min_position: jax.Array = struct.field(default_factory=lambda: jnp.int32(0))
    mode: str = struct.field(pytree_node=False, default="multiply")

    def __call__(self, x, layer, ctx):
        sae_l = sae_lib.sae_layer(self.saes, layer)
        idx, fmask = _layer_features(self.features, layer)
        value = self.value[layer]
        gate = _position_gate(ctx, self.min_position)  # [B, T, 1]
        B, T, _ = x.shape
        value = jnp.broadcast_to(value, (B, T, idx.shape[-1]))
        fmask = jnp.broadcast_to(fmask, (B,) + fmask.shape[-1:])[:, None, :]
        if self.mode == "multiply":
            new_fn = lambda f, v: v * f
        elif self.mode == "set":
            new_fn = lambda f, v: v
        else:
            raise ValueError(f"unknown clamp mode {self.mode!r} (multiply or set)")
        gmask = (gate & fmask).astype(x.dtype)
        if self.features.per_sample:
            delta = jax.vmap(
                lambda xb, ib, vb, gb: _sparse_delta(sae_l, xb, ib, lambda f: new_fn(f, vb), gb)
            )(x, idx, value, gmask)
        else:
            delta = jax.vmap(
                lambda xb, vb, gb: _sparse_delta(sae_l, xb, idx, lambda f: new_fn(f, vb), gb)
            )(x, value, gmask)
        return x + (delta / _decoder_scale(sae_l)).astype(x.dtype)

    # Batch-axis fields: per-sample features [B, L, K], values [L, B, T, K], min_position [B].
    def rows(self, start, size):
        return self.replace(
            features=self.features.rows(start, size),
            value=_rows_if(self.value, 4, start, size, axis=1),
            min_position=_rows_if(self.min_position, 1, start, size),
        )

    def n_rows(self):
        fs = self.features
        return _agree(
            (
                int(fs.idx.shape[0]) if fs.per_sample else None,
                _count_if(self.value, 4, axis=1),
                _count_if(self.min_position, 1),
            ),
            "ClampFeatures",
        )


def _per_layer_value(value, n_layers):
    v = jnp.asarray(value, jnp.float32)
    return jnp.broadcast_to(v, (n_layers,) + v.shape)


def clamp_features(
    saes: SAE,
    features: FeatureSet,
    value: float | jax.Array,
    mode: str = "multiply",
    min_position: int | jax.Array = 0,
) -> ClampFeatures:
    """Multiply (c = -3 in the paper for Gemma) or set features to ``value`` at every position.

    ``value``: scalar, or [K] / [B, T, K] shared by all layers.
    """
    n_layers = features.n_layers
    return ClampFeatures(
        saes,
        features,
        _per_layer_value(value, n_layers),
        jnp.asarray(min_position, jnp.int32),
        mode,
    )


def hold_features(
    saes: SAE,
    features: FeatureSet,
    values: jax.Array,
    min_position: int | jax.Array = 0,
    prompt_only: bool = False,
) -> ClampFeatures | HoldOnPrompt:
    """Hold features at given per-layer, per-token values [L, B, T, K] (e.g. clean activations).

    ``prompt_only``: hold them at the T prompt positions only and leave generated tokens alone
    (the reference code's "retain", which has clean values for the prompt only). Returns the
    patch to pass as ``patch=`` to the model (stacked ``saes`` [L, ...])."""
    hold = ClampFeatures(
        saes,
        features,
        jnp.asarray(values, jnp.float32),
        jnp.asarray(min_position, jnp.int32),
        "set",
    )
    return HoldOnPrompt(hold) if prompt_only else hold


@struct.dataclass
class HoldOnPrompt:
    """A per-token hold (:func:`hold_features`, values [L, B, T, K]) applied while the T-token
    prompt is processed; generated tokens pass through unchanged."""

    hold: ClampFeatures

    def __call__(self, x, layer, ctx):
        if self.hold.value.ndim != 4:
            raise ValueError("HoldOnPrompt needs per-token values [L, B, T, K]")
        if x.shape[1] != self.hold.value.shape[2]:  # a generation step (static shapes)
            return x
        return jnp.where(ctx.is_prompt, self.hold(x, layer, ctx), x)

    def rows(self, start, size):
        return self.replace(hold=self.hold.rows(start, size))

    def n_rows(self):
        return self.hold.n_rows()


def clean_feature_values(
    params: dict,
    cfg: ModelConfig,
    saes: SAE,
    features: FeatureSet,
    ids: jax.Array,
    mask: jax.Array,
    batch_size: int = 32,
) -> jax.Array:
    """Activations of a global feature set on the unpatched model, per token: [L, N, T, K]
    (batched; the values :func:`hold_features` holds)."""

    if features.per_sample:
        raise ValueError("clean_feature_values takes a global feature set")
    out = []
    for b_ids, b_mask, n in batches(ids, mask, batch_size):
        resid = forward(params, cfg, b_ids, b_mask, return_residuals=True).resid_post
        out.append(np.asarray(_feature_values_jit(saes, features, resid))[:, :n])
    return np.concatenate(out, axis=1)


def feature_values(saes: SAE, features: FeatureSet, resid_post: jax.Array) -> jax.Array:
    """Activations of the set's features [L, B, T, K] from a run's resid_post [L, B, T, D]."""

    def one_layer(layer, x):
        sae_l = sae_lib.sae_layer(saes, layer)
        idx, _ = _layer_features(features, layer)
        if features.per_sample:
            return jax.vmap(lambda xb, ib: sae_lib.encode_features(sae_l, xb, ib))(x, idx)
        return sae_lib.encode_features(sae_l, x, idx)

    layers = jnp.arange(resid_post.shape[0])
    return jax.vmap(one_layer)(layers, resid_post)


_feature_values_jit = jax.jit(feature_values)


def clamp_dense_reference(
    sae_l: SAE, x: jax.Array, idx: jax.Array, mask: jax.Array, new_values: jax.Array
) -> jax.Array:
    """Straightforward clamp at one layer: encode all features, edit, decode, add the error.

    x [B, T, D]; idx/mask [K] (global) or [B, K]; new_values [B, T, K] the edited activations.
    """
    f = sae_lib.encode(sae_l, x)
    err = x - sae_lib.decode(sae_l, f)
    idx_b = jnp.broadcast_to(idx, (x.shape[0],) + idx.shape[-1:])
    mask_b = jnp.broadcast_to(mask, idx_b.shape)

    def edit(fb, ib, mb, vb):
        cur = fb[:, ib]
        return fb.at[:, ib].set(jnp.where(mb, vb, cur))

    f2 = jax.vmap(edit)(f, idx_b, mask_b, new_values)
    return sae_lib.decode(sae_l, f2) + err


@struct.dataclass
class Interpolate:
    """x <- (1 - alpha) x + alpha x_patch[layer] + delta[layer] at every layer.

    The SAE-free interpolated forward of LA-IG (decoders are affine, so the SAE cancels);
    ``delta`` (zeros) is the handle whose gradient is dm/d(out_l).
    """

    alpha: jax.Array
    x_patch: jax.Array  # [L, B, T, D]
    delta: jax.Array  # [L, B, T, D]

    def __call__(self, x, layer, ctx):
        a = jnp.asarray(self.alpha, x.dtype)
        return (1 - a) * x + a * self.x_patch[layer].astype(x.dtype) + self.delta[layer]
