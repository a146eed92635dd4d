"""The refusal direction (difference in means) and refusal judges (docs/METHOD.md section 1)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from refusal_jax.core.batching import batches
from refusal_jax.core.config import ModelConfig
from refusal_jax.core.model import forward_fn
from refusal_jax.method.interventions import ablate_direction
from refusal_jax.method.judges import first_token_refuses, refusal_token
from refusal_jax.method.prompts import encode_prompts


@functools.partial(jax.jit, static_argnames=("cfg", "positions"))
def _last_positions_resid(params, cfg: ModelConfig, ids, mask, positions):
    out = forward_fn(params, cfg, ids, mask, return_residuals=True)
    pos = jnp.asarray(positions)
    return out.resid_post[:, :, pos].transpose(2, 0, 1, 3)  # [P, L, B, D]


def mean_activations(
    params: dict,
    cfg: ModelConfig,
    ids: jax.Array,
    mask: jax.Array,
    positions: tuple[int, ...] = (-1,),
    batch_size: int = 32,
) -> jax.Array:
    """Mean resid_post over prompts at the given (end-aligned, left padding) positions:
    ids, mask [B, T] -> [P, L, D] float32 for every layer, from one forward pass per batch."""
    total, count = None, 0
    for b_ids, b_mask, n in batches(ids, mask, batch_size):
        acts = _last_positions_resid(params, cfg, b_ids, b_mask, tuple(positions))[:, :, :n]
        s = acts.astype(jnp.float32).sum(axis=2)
        total = s if total is None else total + s
        count += n
    return total / count


def refusal_directions(
    params: dict,
    cfg: ModelConfig,
    harmful: tuple[jax.Array, jax.Array],
    harmless: tuple[jax.Array, jax.Array],
    positions: tuple[int, ...] = (-1,),
    batch_size: int = 32,
) -> jax.Array:
    """Difference-in-means refusal directions r[p, l] = mean_harmful - mean_harmless, [P, L, D].

    ``harmful`` and ``harmless`` are (ids, mask) pairs of left-padded prompts, [B, T] each.
    """
    return mean_activations(params, cfg, *harmful, positions, batch_size) - mean_activations(
        params, cfg, *harmless, positions, batch_size
    )


def filter_by_refusal(
    params: dict,
    cfg: ModelConfig,
    tokenizer: object,
    prompts: list[str],
    refused: bool,
    batch_size: int = 32,
    pad_multiple: int = 8,
) -> list[str]:
    """The prompts whose greedy first response token is (``refused``) or is not the refusal
    token - the paper's filter of training prompts."""
    ids, mask = encode_prompts(
        tokenizer, prompts, multiple=pad_multiple, max_length=cfg.max_position_embeddings
    )
    hit = first_token_refuses(params, cfg, ids, mask, [refusal_token(tokenizer)], None, batch_size)
    return [p for p, h in zip(prompts, hit) if bool(h) == refused]


def choose_best_layer(
    params: dict,
    cfg: ModelConfig,
    directions: jax.Array,
    ids: jax.Array,
    mask: jax.Array,
    refusal_token: int,
    batch_size: int = 32,
    margin: float = 0.2,
) -> tuple[int, list[float]]:
    """Layer whose direction, ablated at every layer, leaves the fewest first-token refusals
    (layers in the outer ``margin`` fraction are skipped, as in refusal_direction's filter).

    directions [L, D] (one candidate per layer); ids, mask [B, T]. Returns the layer and the
    refusal rate [L] after ablating each layer's direction (NaN for skipped layers)."""
    n = cfg.n_layers
    lo, hi = int(n * margin), max(int(n * (1 - margin)), int(n * margin) + 1)
    rates = []
    for layer in range(n):
        if not lo <= layer < hi:
            rates.append(float("nan"))
            continue
        patch = ablate_direction(directions[layer], n)
        rates.append(
            float(
                first_token_refuses(
                    params, cfg, ids, mask, [refusal_token], patch, batch_size
                ).mean()
            )
        )
    return int(np.nanargmin(rates)), rates
