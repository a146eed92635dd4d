"""Sparse autoencoders as pure functions over a pytree (ReLU, JumpReLU, TopK, BatchTopK).

encode: pre = (x * input_scale - b_dec * apply_b_dec_to_input) @ W_enc + b_enc, then the
architecture's activation; decode: (f @ W_dec + b_dec) / input_scale. Arrays may carry a leading
layer axis (a stacked multi-layer set); :func:`sae_layer` slices one layer.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

ARCHITECTURES = ("relu", "jumprelu", "topk", "batchtopk")


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None
    apply_b_dec_to_input: bool = False
    input_scale: float = 1.0

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown SAE architecture {self.architecture!r}; known {ARCHITECTURES}"
            )
        if self.architecture in ("topk", "batchtopk") and not self.k:
            raise ValueError(f"{self.architecture} SAE needs k")


@struct.dataclass
class SAE:
    W_enc: jax.Array  # [..., d_in, d_sae]
    b_enc: jax.Array  # [..., d_sae]
    W_dec: jax.Array  # [..., d_sae, d_in]
    b_dec: jax.Array  # [..., d_in]
    threshold: jax.Array  # [..., d_sae]
    cfg: SAEConfig = struct.field(pytree_node=False)


def _prep(sae: SAE, x):
    x = x.astype(sae.W_enc.dtype) * sae.cfg.input_scale
    if sae.cfg.apply_b_dec_to_input:
        x = x - sae.b_dec
    return x


def encode_pre(sae: SAE, x):
    return _prep(sae, x) @ sae.W_enc + sae.b_enc


def activation(sae: SAE, pre, threshold=None):
    threshold = sae.threshold if threshold is None else threshold
    arch = sae.cfg.architecture
    if arch == "relu":
        return jax.nn.relu(pre)
    if arch in ("jumprelu", "batchtopk"):
        return jnp.where(pre > threshold, pre, 0.0)
    vals, idx = jax.lax.top_k(jax.nn.relu(pre), sae.cfg.k)
    onehot = jax.nn.one_hot(idx, pre.shape[-1], dtype=pre.dtype)
    return jnp.einsum("...k,...kf->...f", vals, onehot)


def encode(sae: SAE, x):
    return activation(sae, encode_pre(sae, x))


def decode(sae: SAE, f):
    return (f @ sae.W_dec + sae.b_dec) / sae.cfg.input_scale


def reconstruct(sae: SAE, x):
    return decode(sae, encode(sae, x))


def error_term(sae: SAE, x):
    return x - reconstruct(sae, x)


def encode_features(sae: SAE, x, idx):
    """Activations of the features ``idx`` [K] only: [..., K], equal to encode(x)[..., idx]."""
    if sae.cfg.architecture == "topk":
        raise ValueError("TopK SAE features cannot be encoded one by one (the top-k couples them)")
    pre = _prep(sae, x) @ sae.W_enc[:, idx] + sae.b_enc[idx]
    return activation(sae, pre, sae.threshold[idx])


def stack_saes(saes) -> SAE:
    cfgs = {s.cfg for s in saes}
    if len(cfgs) != 1:
        raise ValueError(f"cannot stack SAEs with different configs: {cfgs}")
    return jax.tree.map(lambda *a: jnp.stack(a), *saes)


def sae_layer(sae: SAE, layer) -> SAE:
    return jax.tree.map(lambda a: a[layer], sae)
