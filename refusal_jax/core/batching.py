"""Fixed-shape batching of left-padded prompt arrays (one shape per batch: one compilation)."""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np


def batches(
    ids: np.ndarray, mask: np.ndarray, batch_size: int
) -> Iterator[tuple[jax.Array, jax.Array, int]]:
    """Yield (ids, mask, n_real) batches, padding the last one to ``batch_size`` rows so every
    batch has one shape (one compilation): ids, mask [N, T] -> [batch_size, T] each, the first
    ``n_real`` rows real (the padding repeats the last prompt)."""
    ids, mask = np.asarray(ids), np.asarray(mask)
    if len(ids) == 0:
        raise ValueError("empty prompt set")
    for start in range(0, len(ids), batch_size):
        b_ids, b_mask = ids[start : start + batch_size], mask[start : start + batch_size]
        n = len(b_ids)
        if n < batch_size:
            fill = batch_size - n
            b_ids = np.concatenate([b_ids, np.repeat(b_ids[-1:], fill, 0)])
            b_mask = np.concatenate([b_mask, np.repeat(b_mask[-1:], fill, 0)])
        yield jnp.asarray(b_ids), jnp.asarray(b_mask), n


def fit_batch_size(batch_size: int, n: int, multiple: int = 8) -> int:
    """The batch size to use for prompt sets of at most ``n`` prompts: ``batch_size``, or ``n``
    rounded up to a multiple of ``multiple`` when that is smaller (a set that fits in one batch
    is not padded to ``batch_size`` rows). Rows are computed independently, so results agree up
    to float rounding; the work on padding rows is saved (8x for 4 prompts and batch_size 32)."""
    if batch_size < 1 or n < 1 or multiple < 1:
        raise ValueError(f"batch_size {batch_size}, n {n} and multiple {multiple} must be >= 1")
    return min(batch_size, -(-n // multiple) * multiple)


def bucket(n: int, minimum: int = 8) -> int:
    """The power of two (at least ``minimum``) that ``n`` is rounded up to when a size is
    padded so that nearby sizes share one compiled program (generation lengths, feature-set
    widths)."""
    if n < 0 or minimum < 1:
        raise ValueError(f"bucket: n {n} must be >= 0 and minimum {minimum} >= 1")
    size = minimum
    while size < n:
        size *= 2
    return size


__all__ = ["batches", "bucket", "fit_batch_size"]
