"""Activation patches: interventions passed to the model as data.

A patch is a pytree (a ``flax.struct`` dataclass) with a ``__call__(x, layer, ctx)`` method that
maps the residual stream ``x`` ``[B, T, D]`` after layer ``layer`` (a traced int32 scalar) to a new
one. The forward pass calls it inside its ``lax.scan`` over layers, so per-layer data is held as
arrays with a leading layer axis and indexed with ``layer``. Patches are ordinary jit/vmap inputs:
changing their *values* does not recompile; changing their *type or shapes* does.

Per-sample patches (one feature set, coefficient or start position per prompt) carry a batch
axis. Helpers that run a prompt set in fixed-size batches slice them with :func:`patch_rows`
(each patch class knows its batch-axis fields through ``rows`` / ``n_rows``), so a per-sample
patch built for N prompts works with any ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


def take_rows(a: jax.Array, start: int, size: int, axis: int = 0) -> jax.Array:
    """Rows ``start .. start+size`` of ``a`` along ``axis`` ([N, ...] -> [size, ...] for
    axis 0), the last row repeated past the end (the padding
    :func:`refusal_jax.core.batching.batches` applies to prompts)."""
    a = jnp.asarray(a)
    idx = np.minimum(np.arange(start, start + size), a.shape[axis] - 1)
    return jnp.take(a, idx, axis=axis)


def _rows_if(a, ndim: int, start: int, size: int, axis: int = 0):
    """Slice ``a`` if it has a batch axis (``ndim`` dimensions), else leave it."""
    return take_rows(a, start, size, axis) if jnp.ndim(a) == ndim else a


def _count_if(a, ndim: int, axis: int = 0):
    return int(jnp.shape(a)[axis]) if jnp.ndim(a) == ndim else None


def _agree(counts, what: str) -> int | None:
    counts = {c for c in counts if c is not None}
    if len(counts) > 1:
        raise ValueError(f"{what}: per-sample fields disagree on the number of prompts {counts}")
    return counts.pop() if counts else None


def patch_rows(patch: object | None, start: int, size: int) -> object | None:
    """The patch for prompts ``start .. start+size`` of the set it was built for (per-sample
    fields sliced, shared ones unchanged; ``None`` stays ``None``)."""
    if patch is None or not hasattr(patch, "rows"):
        return patch
    return patch.rows(start, size)


def patch_n_rows(patch: object | None) -> int | None:
    """Number of prompts a per-sample patch was built for (``None``: not per-sample)."""
    if patch is None or not hasattr(patch, "n_rows"):
        return None
    return patch.n_rows()


def check_patch_rows(patch: object | None, n_prompts: int) -> None:
    """Raise a clear error when a per-sample patch was built for a different prompt count."""
    n = patch_n_rows(patch)
    if n is not None and n != n_prompts:
        raise ValueError(
            f"per-sample patch built for {n} prompts applied to a set of {n_prompts} prompts"
        )


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

    def rows(self, start, size):
        return self.replace(coeff=_rows_if(self.coeff, 1, start, size))

    def n_rows(self):
        return _count_if(self.coeff, 1)


class _OfPatches:
    """Row slicing and row count of a patch made of the patches in ``self.patches``."""

    def rows(self, start, size):
        return self.replace(patches=tuple(patch_rows(p, start, size) for p in self.patches))

    def n_rows(self):
        return _agree((patch_n_rows(p) for p in self.patches), type(self).__name__)


@struct.dataclass
class Compose(_OfPatches):
    """Apply several patches in order at every layer (left to right)."""

    patches: tuple

    def __call__(self, x, layer, ctx):
        for p in self.patches:
            x = p(x, layer, ctx)
        return x


@struct.dataclass
class Simultaneous(_OfPatches):
    """Apply several patches to the same input and add their edits: x + sum_i (p_i(x) - x).

    For SAE feature edits of disjoint feature sets at one layer this is one encode -> edit every
    set -> decode (decoders are linear in the features), where :class:`Compose` would encode the
    second set after the first edit."""

    patches: tuple

    def __call__(self, x, layer, ctx):
        out = x
        for p in self.patches:
            out = out + (p(x, layer, ctx) - x)
        return out


@struct.dataclass
class PromptOnly:
    """Apply ``inner`` while the prompt is processed; pass generated tokens through unchanged."""

    inner: object

    def __call__(self, x, layer, ctx):
        return jnp.where(ctx.is_prompt, self.inner(x, layer, ctx), x)

    def rows(self, start, size):
        return self.replace(inner=patch_rows(self.inner, start, size))

    def n_rows(self):
        return patch_n_rows(self.inner)


def add_at_layers(
    vector: jax.Array, layers: Sequence[int], n_layers: int, coeff: float = 1.0
) -> AddVector:
    """Steering patch adding one ``vector`` [D] at the given layer indices (vectors [L, D])."""
    layers = list(layers)
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} out of range for a model with {n_layers} layers")
    mask = jnp.zeros((n_layers,), jnp.float32).at[jnp.asarray(layers, jnp.int32)].set(1.0)
    vectors = jnp.broadcast_to(jnp.asarray(vector), (n_layers,) + jnp.shape(vector))
    return AddVector(vectors=vectors, layer_mask=mask, coeff=jnp.float32(coeff))
