"""Sparse autoencoders as pure functions over a pytree (ReLU, JumpReLU, TopK, BatchTopK).

One SAE is an :class:`SAE` pytree of arrays plus a static :class:`SAEConfig`::

    x_in = x * input_scale - b_dec * apply_b_dec_to_input          [..., d_in]
    pre  = x_in @ W_enc + b_enc                                     [..., d_sae]
    f    = activation(pre)                                          [..., d_sae]
    dec  = (f @ W_dec + b_dec) / input_scale                        [..., d_in]

with the activation, by architecture:

- ``relu``:      f = relu(pre)
- ``jumprelu``:  f = relu(pre) * (pre > threshold)          (GemmaScope, LlamaScope)
- ``topk``:      the k largest of relu(pre) per token, others 0
- ``batchtopk``: at inference the same as jumprelu with a learned global threshold; in training
                 the k * n_tokens largest of relu(pre) over the batch (:func:`batchtopk_train`).

Arrays may carry extra leading axes (a stacked multi-layer set: ``W_enc [L, d_in, d_sae]``).
Every function here is written for one SAE; use ``jax.vmap`` over the leading axis, or
:func:`sae_layer` to slice one layer (also with a traced index, inside a ``lax.scan``).
Layers with different widths cannot be stacked: keep them in a dict ``{layer: SAE}``
(:data:`SAESet`) and use :func:`stack_sae_set` when the widths do match.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import struct

ARCHITECTURES = ("relu", "jumprelu", "topk", "batchtopk")
# Constant (dataset-wise) input normalizations; per-token ones are not representable here.
NORMALIZATIONS = ("none", "expected_average_only_in")


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """Static description of one SAE (hashable: safe as a jit static argument).

    architecture: one of :data:`ARCHITECTURES`.
    d_in, d_sae: input width (the model's d_model) and dictionary width.
    k: active latents per token (topk) or per token on average (batchtopk); None otherwise.
    apply_b_dec_to_input: subtract b_dec from the (scaled) input before the encoder.
    input_scale: constant normalization; encode sees ``x * input_scale`` and the decoder output
      is divided by it (SAELens ``expected_average_only_in`` with its scaling factor).
    normalization: name of the normalization for writers; ``None`` picks "none" when
      input_scale is 1 and "expected_average_only_in" otherwise.
    """

    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None
    apply_b_dec_to_input: bool = False
    input_scale: float = 1.0
    normalization: str | None = None

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown SAE architecture {self.architecture!r}; known {ARCHITECTURES}"
            )
        for name in ("d_in", "d_sae"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"SAEConfig.{name} must be a positive int, got {v!r}")
        if self.architecture in ("topk", "batchtopk"):
            if self.k is None:
                raise ValueError(f"{self.architecture} SAE needs k (active latents per token)")
            if not isinstance(self.k, int) or not 0 < self.k <= self.d_sae:
                raise ValueError(f"k must be an int in [1, d_sae={self.d_sae}], got {self.k!r}")
        elif self.k is not None:
            raise ValueError(
                f"k={self.k} given for a {self.architecture} SAE (k is for topk and batchtopk)"
            )
        scale = float(self.input_scale)
        if not (scale > 0 and scale < float("inf")):
            raise ValueError(f"input_scale must be positive and finite, got {self.input_scale!r}")
        object.__setattr__(self, "input_scale", scale)
        norm = self.normalization
        if norm is None:
            norm = "none" if scale == 1.0 else "expected_average_only_in"
        if norm not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {norm!r}; supported {NORMALIZATIONS}")
        if norm == "none" and scale != 1.0:
            raise ValueError(f"normalization 'none' with input_scale {scale} (must be 1)")
        object.__setattr__(self, "normalization", norm)


@struct.dataclass
class SAE:
    """SAE parameters (any leading axes, e.g. a layer axis L) and their static config."""

    W_enc: jax.Array  # [..., d_in, d_sae]
    b_enc: jax.Array  # [..., d_sae]
    W_dec: jax.Array  # [..., d_sae, d_in]
    b_dec: jax.Array  # [..., d_in]
    threshold: jax.Array  # [..., d_sae] (zeros when unused)
    cfg: SAEConfig = struct.field(pytree_node=False)


SAESet = dict  # {layer: SAE}; layers may have different widths


def param_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """Expected shape of every array of one (unstacked) SAE."""
    return {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "b_enc": (cfg.d_sae,),
        "W_dec": (cfg.d_sae, cfg.d_in),
        "b_dec": (cfg.d_in,),
        "threshold": (cfg.d_sae,),
    }


def zeros(cfg: SAEConfig, dtype: jnp.dtype = jnp.float32) -> SAE:
    """An all-zero SAE of the given config (a placeholder for layers without an SAE)."""
    return SAE(**{k: jnp.zeros(s, dtype) for k, s in param_shapes(cfg).items()}, cfg=cfg)


def check_shapes(sae: SAE, n_lead: int = 0) -> None:
    """Raise ValueError naming the array when shapes disagree with the config: after
    ``n_lead`` leading axes (e.g. 1 for a stack [L, ...]) W_enc [d_in, S], b_enc [S],
    W_dec [S, d_in], b_dec [d_in], threshold [S]."""
    for name, shape in param_shapes(sae.cfg).items():
        got = tuple(getattr(sae, name).shape)
        if got[n_lead:] != shape or len(got) != n_lead + len(shape):
            raise ValueError(f"SAE {name}: shape {got}, expected {shape} after {n_lead} lead axes")


# ----------------------------------------------------------------------------- encode / decode
def _prep(sae: SAE, x):
    if x.shape[-1] != sae.cfg.d_in:
        raise ValueError(f"SAE input has width {x.shape[-1]}, the SAE expects d_in={sae.cfg.d_in}")
    x = x.astype(sae.W_enc.dtype)
    if sae.cfg.input_scale != 1.0:
        x = x * jnp.asarray(sae.cfg.input_scale, x.dtype)
    if sae.cfg.apply_b_dec_to_input:
        x = x - sae.b_dec
    return x


def encode_pre(sae: SAE, x: jax.Array) -> jax.Array:
    """Pre-activations: [..., d_in] -> [..., d_sae]."""
    return _prep(sae, x) @ sae.W_enc + sae.b_enc


def topk_mask(values: jax.Array, k: int) -> jax.Array:
    """values [..., n] -> the same with all but the k largest per row set to 0 (exact k)."""
    lead, n = values.shape[:-1], values.shape[-1]
    flat = values.reshape(-1, n)
    top, idx = jax.lax.top_k(flat, k)
    rows = jnp.arange(flat.shape[0])[:, None]
    out = jnp.zeros_like(flat).at[rows, idx].set(top)
    return out.reshape(lead + (n,))


def activation(sae: SAE, pre: jax.Array, threshold: jax.Array | None = None) -> jax.Array:
    """Inference activation of the SAE's architecture: [..., d_sae] -> [..., d_sae].

    ``threshold`` overrides ``sae.threshold`` (used for feature subsets).
    """
    threshold = sae.threshold if threshold is None else threshold
    arch = sae.cfg.architecture
    r = jax.nn.relu(pre)
    if arch == "relu":
        return r
    if arch in ("jumprelu", "batchtopk"):
        return jnp.where(pre > threshold, r, jnp.zeros_like(r))
    return topk_mask(r, sae.cfg.k)


def batchtopk_train(pre: jax.Array, k: int) -> jax.Array:
    """BatchTopK training activation: keep the k * n_tokens largest of relu(pre) over all tokens.

    pre [N, d_sae] (all tokens of the batch; flatten first). Returns [N, d_sae].
    """
    r = jax.nn.relu(pre)
    flat = r.reshape(-1)
    n_keep = min(k * pre.shape[0], flat.shape[0])
    top, idx = jax.lax.top_k(flat, n_keep)
    return jnp.zeros_like(flat).at[idx].set(top).reshape(r.shape)


def encode(sae: SAE, x: jax.Array) -> jax.Array:
    """Feature activations: [..., d_in] -> [..., d_sae]."""
    return activation(sae, encode_pre(sae, x))


def decode(sae: SAE, f: jax.Array) -> jax.Array:
    """Reconstruction from features: [..., d_sae] -> [..., d_in] (affine in f)."""
    out = f.astype(sae.W_dec.dtype) @ sae.W_dec + sae.b_dec
    if sae.cfg.input_scale != 1.0:
        out = out / jnp.asarray(sae.cfg.input_scale, out.dtype)
    return out


def reconstruct(sae: SAE, x: jax.Array) -> jax.Array:
    """decode(encode(x)): [..., d_in] -> [..., d_in]."""
    return decode(sae, encode(sae, x))


def error_term(sae: SAE, x: jax.Array) -> jax.Array:
    """The SAE error x - decode(encode(x)): [..., d_in]."""
    return x - reconstruct(sae, x).astype(x.dtype)


def encode_features(sae: SAE, x: jax.Array, idx: jax.Array) -> jax.Array:
    """Activations of the features ``idx`` [K] only: [..., d_in] -> [..., K].

    Computes ``x @ W_enc[:, idx]`` instead of the full d_sae-wide matmul, and equals
    ``encode(sae, x)[..., idx]`` exactly for relu, jumprelu and batchtopk (inference). TopK couples
    all features through the per-token top k, so it raises ValueError: use ``encode`` and index.
    """
    if sae.cfg.architecture == "topk":
        raise ValueError(
            "TopK SAE features cannot be encoded one by one (the per-token top k couples all "
            "features); use encode(sae, x)[..., idx]"
        )
    idx = jnp.asarray(idx)
    pre = _prep(sae, x) @ sae.W_enc[..., idx] + sae.b_enc[..., idx]  # [..., K]
    return activation(sae, pre, sae.threshold[..., idx])


# ----------------------------------------------------------------------------- exact rewrites
def fold_input_scale(sae: SAE) -> SAE:
    """The same function with input_scale folded into the weights (input_scale becomes 1).

    encode sees x*s: (x*s - b_dec)W_enc = (x - b_dec/s)(s W_enc); decode (f W_dec + b_dec)/s =
    f (W_dec/s) + b_dec/s. Pre-activations, hence thresholds, are unchanged.
    """
    s = sae.cfg.input_scale
    if s == 1.0:
        return sae
    cfg = dataclasses.replace(sae.cfg, input_scale=1.0, normalization="none")
    return sae.replace(W_enc=sae.W_enc * s, W_dec=sae.W_dec / s, b_dec=sae.b_dec / s, cfg=cfg)


def fold_b_dec_into_b_enc(sae: SAE) -> SAE:
    """The same function with apply_b_dec_to_input False: b_enc <- b_enc - b_dec W_enc."""
    if not sae.cfg.apply_b_dec_to_input:
        return sae
    b_enc = sae.b_enc - jnp.einsum("...d,...ds->...s", sae.b_dec, sae.W_enc)
    cfg = dataclasses.replace(sae.cfg, apply_b_dec_to_input=False)
    return sae.replace(b_enc=b_enc, cfg=cfg)


# ----------------------------------------------------------------------------- sets of layers
def stack_saes(saes: Sequence[SAE]) -> SAE:
    """Stack SAEs with identical configs (same widths) along a new leading layer axis:
    W_enc [L, d_in, d_sae], b_enc [L, d_sae], W_dec [L, d_sae, d_in], b_dec [L, d_in]."""
    saes = list(saes)
    if not saes:
        raise ValueError("stack_saes: no SAEs given")
    cfgs = {s.cfg for s in saes}
    if len(cfgs) != 1:
        widths = sorted({(c.d_in, c.d_sae) for c in cfgs})
        raise ValueError(
            f"cannot stack SAEs with different configs (d_in, d_sae: {widths}): {cfgs}; "
            "keep them in a dict {layer: SAE} instead"
        )
    for s in saes:
        check_shapes(s)
    return jax.tree.map(lambda *a: jnp.stack(a), *saes)


def sae_layer(sae: SAE, layer: int | jax.Array) -> SAE:
    """One layer of a stacked SAE [L, ...] -> an SAE without the L axis (``layer`` may be a
    traced int)."""
    return jax.tree.map(lambda a: a[layer], sae)


def unstack_saes(sae: SAE) -> list[SAE]:
    """The inverse of :func:`stack_saes`: a stacked SAE [L, ...] -> L single SAEs."""
    return [sae_layer(sae, i) for i in range(sae.W_enc.shape[0])]


def stack_sae_set(saes: Mapping[int, SAE], n_layers: int) -> tuple[SAE, jax.Array]:
    """Stack a ``{layer: SAE}`` set over all ``n_layers`` model layers.

    Layers without an SAE get an all-zero placeholder. Returns the stacked SAE [n_layers, ...]
    and a bool mask [n_layers] of the layers that have a real SAE. All SAEs must share a config.
    """
    if not saes:
        raise ValueError("stack_sae_set: empty SAE set")
    for layer in saes:
        if not 0 <= int(layer) < n_layers:
            raise ValueError(f"SAE at layer {layer} out of range for {n_layers} layers")
    first = next(iter(saes.values()))
    filler = zeros(first.cfg, first.W_enc.dtype)
    stacked = stack_saes([saes.get(i, filler) for i in range(n_layers)])
    mask = jnp.asarray([i in saes for i in range(n_layers)])
    return stacked, mask


# ----------------------------------------------------------------------------- model patches
@struct.dataclass
class SpliceSAE:
    """Patch replacing resid_post by the SAE reconstruction (error term removed).

    sae: stacked SAE [L, ...] (one per model layer; see :func:`stack_sae_set`), or one unstacked
      SAE used at every layer in the mask (cheap for a single-layer splice).
    layer_mask: [L] bool, the layers that are spliced; other layers pass through (the
      reconstruction is only computed where the mask is set).
    """

    sae: SAE
    layer_mask: jax.Array

    def __call__(self, x, layer, ctx):
        sae_l = self.sae if self.sae.W_enc.ndim == 2 else sae_layer(self.sae, layer)
        return jax.lax.cond(
            self.layer_mask[layer],
            lambda v: reconstruct(sae_l, v).astype(v.dtype),
            lambda v: v,
            x,
        )


@struct.dataclass
class ZeroAblate:
    """Patch setting resid_post to zero at the layers in ``layer_mask`` [L] (CE baseline)."""

    layer_mask: jax.Array

    def __call__(self, x, layer, ctx):
        return jnp.where(self.layer_mask[layer], jnp.zeros_like(x), x)


def splice_patch(
    saes: Mapping[int, SAE] | SAE, n_layers: int, layers: Sequence[int] | None = None
) -> SpliceSAE:
    """A :class:`SpliceSAE` from a ``{layer: SAE}`` set or a stacked SAE [n_layers, ...].

    A single-layer set stays unstacked (no zero placeholders for the other layers).

    ``layers`` restricts the splice to a subset (default: every layer that has an SAE).
    """
    if isinstance(saes, Mapping) and len(saes) == 1:
        ((layer, stacked),) = saes.items()  # one layer: keep it unstacked
        if not 0 <= int(layer) < n_layers:
            raise ValueError(f"SAE at layer {layer} out of range for {n_layers} layers")
        mask = jnp.zeros((n_layers,), bool).at[int(layer)].set(True)
    elif isinstance(saes, SAE):
        if saes.W_enc.ndim != 3 or saes.W_enc.shape[0] != n_layers:
            raise ValueError(f"stacked SAE must have a leading axis of {n_layers} layers")
        stacked, mask = saes, jnp.ones((n_layers,), bool)
    else:
        stacked, mask = stack_sae_set(saes, n_layers)
    if layers is not None:
        sel = jnp.zeros((n_layers,), bool).at[jnp.asarray(list(layers), jnp.int32)].set(True)
        mask = mask & sel
    return SpliceSAE(stacked, mask)
