"""Next-token cross-entropy over a mask: the one loss the model, SAE and capability code share."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def next_token_nll_sum(
    logits: ArrayLike, ids: ArrayLike, weights: ArrayLike
) -> tuple[jax.Array, jax.Array]:
    """Weighted next-token negative log-likelihood, summed.

    logits [B, T, V] (any float dtype; log-softmax in float32), ids [B, T] int, weights [B, T-1]:
    the weight of predicting ``ids[:, t+1]`` from position ``t``. Returns (sum of weight * nll,
    sum of weights), both float32 scalars."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    w = weights.astype(jnp.float32)
    return jnp.sum(nll * w), jnp.sum(w)


def next_token_ce(logits: jax.Array, ids: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy (nats) over the weighted targets (see
    :func:`next_token_nll_sum`): logits [B, T, V], ids [B, T] int, weights [B, T-1] -> a float32
    scalar; 0 when every weight is 0."""
    total, count = next_token_nll_sum(logits, ids, weights)
    return total / jnp.maximum(count, 1.0)


__all__ = ["next_token_ce", "next_token_nll_sum"]
