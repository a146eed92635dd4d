"""Activation patches: interventions passed to the model as data.

A patch is a pytree (a ``flax.struct`` dataclass) with a ``__call__(x, layer, ctx)`` method that
maps the residual stream ``x`` ``[B, T, D]`` after layer ``layer`` (a traced int32 scalar) to a new
one. The forward pass calls it inside its ``lax.scan`` over layers, so per-layer data is held as
arrays with a leading layer axis and indexed with ``layer``. Patches are ordinary jit/vmap inputs:
changing their *values* does not recompile; changing their *type or shapes* does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class PatchContext:
    """What a patch may know about the tokens it edits.

    positions:  [B, T] int32 position ids (from the attention mask; pads get 0).
    token_mask: [B, T] bool, False on padding.
    is_prompt:  bool scalar, True while the prompt is processed, False for generated tokens.
    """

    positions: jax.Array
    token_mask: jax.Array
    is_prompt: jax.Array


@struct.dataclass
class Identity:
    """The patch that changes nothing."""

    def __call__(self, x, layer, ctx):
        return x


@struct.dataclass
class AddVector:
    """Add ``coeff * vectors[layer]`` at the layers where ``layer_mask`` is set.

    vectors:    [L, D] one vector per layer (e.g. the refusal direction per layer).
    layer_mask: [L] float or bool, which layers are steered (scales the addition).
    coeff:      scalar or [B] per-sample coefficient.
    """

    vectors: jax.Array
    layer_mask: jax.Array
    coeff: jax.Array = struct.field(default_factory=lambda: jnp.float32(1.0))

    def __call__(self, x, layer, ctx):
        scale = jnp.asarray(self.layer_mask[layer], x.dtype) * jnp.asarray(self.coeff, x.dtype)
        scale = jnp.reshape(scale, scale.shape + (1,) * (x.ndim - scale.ndim))
        return x + scale * self.vectors[layer].astype(x.dtype)


@struct.dataclass
class Compose:
    """Apply several patches in order at every layer (left to right)."""

    patches: tuple

    def __call__(self, x, layer, ctx):
        for p in self.patches:
            x = p(x, layer, ctx)
        return x


@struct.dataclass
class PromptOnly:
    """Apply ``inner`` while the prompt is processed; pass generated tokens through unchanged."""

    inner: object

    def __call__(self, x, layer, ctx):
        return jnp.where(ctx.is_prompt, self.inner(x, layer, ctx), x)


def add_at_layers(vector: jax.Array, layers, n_layers: int, coeff: float = 1.0) -> AddVector:
    """Steering patch adding one ``vector`` [D] at the given layer indices."""
    layers = list(layers)
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} out of range for a model with {n_layers} layers")
    mask = jnp.zeros((n_layers,), jnp.float32).at[jnp.asarray(layers, jnp.int32)].set(1.0)
    vectors = jnp.broadcast_to(jnp.asarray(vector), (n_layers,) + jnp.shape(vector))
    return AddVector(vectors=vectors, layer_mask=mask, coeff=jnp.float32(coeff))
