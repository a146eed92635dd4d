"""Gradient-based adversarial suffixes (GCG, Zou et al. 2023), universal over a prompt set.

A suffix of ``n_tokens`` tokens is appended to every user request (inside the chat template).
The objective, averaged over the training prompts, is LA-IG's metric turned into a loss:
``logit(refusal token) - logit(target token)`` at the last position (e.g. "I" vs "Sure"), so the
suffix pushes the first response token from refusing to complying.

Each step: (1) the gradient of the loss with respect to the one-hot suffix tokens, exactly, by
giving each suffix slot its own embedding row (rows V.. of an extended table, each row the
one-hot mix of the real rows; the tokens it decodes to are unchanged); (2) for every slot the
top-k tokens with the most negative gradient; (3) ``n_candidates`` suffixes, each with one slot
replaced by one of its top-k tokens, evaluated exactly in one batched, jitted forward; (4) the
best candidate is kept if it lowers the loss.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from refusal_jax.model import forward_fn


@dataclasses.dataclass(frozen=True)
class GCGConfig:
    n_tokens: int = 8
    n_steps: int = 60
    top_k: int = 64
    n_candidates: int = 128
    seed: int = 0


def suffix_template(tokenizer, instructions, n_tokens: int, placeholder: int):
    """Token ids of each chat prompt with ``n_tokens`` copies of ``placeholder`` after the
    request: (ids [N, T] left padded, mask, slot positions [N, n_tokens])."""
    marker = "\u2063MARK\u2063"
    rows, slots = [], []
    for text in instructions:
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{text} {marker}"}], tokenize=False,
            add_generation_prompt=True,
        )  # fmt: skip
        head, tail = chat.split(marker)
        a = tokenizer(head, add_special_tokens=False)["input_ids"]
        b = tokenizer(tail, add_special_tokens=False)["input_ids"]
        rows.append(a + [placeholder] * n_tokens + b)
        slots.append(len(a))
    T = max(len(r) for r in rows)
    ids = np.zeros((len(rows), T), np.int32)
    mask = np.zeros_like(ids)
    pos = np.zeros((len(rows), n_tokens), np.int32)
    for i, (r, s) in enumerate(zip(rows, slots)):
        off = T - len(r)
        ids[i, off:], mask[i, off:] = r, 1
        pos[i] = off + s + np.arange(n_tokens)
    return ids, mask, pos


def _loss_from_logits(logits, refusal_token, target_token):
    last = logits[:, -1]
    return jnp.mean(last[:, refusal_token] - last[:, target_token])


@functools.partial(jax.jit, static_argnames=("cfg",))
def suffix_loss_and_grad(params, cfg, ids, mask, pos, suffix, refusal_token, target_token):
    """Loss of ``suffix`` [n] and its gradient w.r.t. the one-hot suffix [n, V] (exact)."""
    V = params["embed"].shape[0]
    n = suffix.shape[0]
    onehot = jax.nn.one_hot(suffix, V, dtype=params["embed"].dtype)

    def loss_fn(oh):
        extra = oh @ params["embed"]  # [n, D]: slot j's embedding row
        p = {**params, "embed": jnp.concatenate([params["embed"], extra])}
        slot_ids = ids.at[jnp.arange(ids.shape[0])[:, None], pos].set(V + jnp.arange(n))
        logits = forward_fn(p, cfg, slot_ids, mask, last_logits_only=True).logits
        return _loss_from_logits(logits[..., :V], refusal_token, target_token)

    return jax.value_and_grad(loss_fn)(onehot)


@functools.partial(jax.jit, static_argnames=("cfg",))
def candidate_losses(params, cfg, ids, mask, pos, candidates, refusal_token, target_token):
    """Exact loss of every candidate suffix [C, n] (mean over prompts): [C]."""

    def one(s):
        full = ids.at[jnp.arange(ids.shape[0])[:, None], pos].set(s[None, :])
        logits = forward_fn(params, cfg, full, mask, last_logits_only=True).logits
        return _loss_from_logits(logits, refusal_token, target_token)

    return jax.lax.map(one, candidates)


def gcg_search(
    params, cfg, tokenizer, instructions, *, refusal_token: int, target_token: int,
    gc: GCGConfig, allowed=None, init_token: int | None = None, progress: bool = False,
) -> dict:  # fmt: skip
    """Optimise one suffix for all ``instructions``; returns {"suffix_ids", "suffix", "losses"}.

    ``allowed`` [V] bool: tokens the suffix may use (default: all but ids < 6 and the special
    tokens of the tokenizer)."""
    V = params["embed"].shape[0]
    if allowed is None:
        allowed = np.ones(V, bool)
        allowed[: max(tokenizer.all_special_ids + [0]) + 1] = False
    allowed = jnp.asarray(allowed)
    init = init_token if init_token is not None else int(np.flatnonzero(np.asarray(allowed))[0])
    ids, mask, pos = suffix_template(tokenizer, instructions, gc.n_tokens, init)
    ids, mask, pos = jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pos)
    suffix = jnp.full((gc.n_tokens,), init, jnp.int32)
    key = jax.random.PRNGKey(gc.seed)
    loss, _ = suffix_loss_and_grad(params, cfg, ids, mask, pos, suffix, refusal_token, target_token)
    losses = [float(loss)]
    for _ in tqdm(range(gc.n_steps), desc="GCG", disable=not progress):
        _, grad = suffix_loss_and_grad(
            params, cfg, ids, mask, pos, suffix, refusal_token, target_token
        )
        grad = jnp.where(allowed[None, :], grad, jnp.inf)
        top = jnp.argsort(grad, axis=-1)[:, : gc.top_k]  # [n, k] most loss-lowering tokens
        key, k1, k2 = jax.random.split(key, 3)
        slot = jax.random.randint(k1, (gc.n_candidates,), 0, gc.n_tokens)
        choice = jax.random.randint(k2, (gc.n_candidates,), 0, gc.top_k)
        cands = jnp.tile(suffix, (gc.n_candidates, 1))
        cands = cands.at[jnp.arange(gc.n_candidates), slot].set(top[slot, choice])
        cl = candidate_losses(params, cfg, ids, mask, pos, cands, refusal_token, target_token)
        best = int(jnp.argmin(cl))
        if float(cl[best]) < losses[-1]:
            suffix = cands[best]
            losses.append(float(cl[best]))
        else:
            losses.append(losses[-1])
    ids_out = [int(t) for t in np.asarray(suffix)]
    return {"suffix_ids": ids_out, "suffix": tokenizer.decode(ids_out), "losses": losses}


__all__ = [
    "GCGConfig",
    "candidate_losses",
    "gcg_search",
    "suffix_loss_and_grad",
    "suffix_template",
    "with_suffix",
]


def with_suffix(tokenizer, instructions, suffix_ids, return_slots: bool = False):
    """Chat prompts with suffix tokens after each request: (ids, mask[, slots]), left padded.
    ``suffix_ids``: one list for every prompt, or one list per prompt (equal lengths)."""
    per_prompt = len(suffix_ids) > 0 and isinstance(suffix_ids[0], (list, tuple, np.ndarray))
    rows = np.asarray([list(s) for s in suffix_ids] if per_prompt else [list(suffix_ids)])
    ids, mask, pos = suffix_template(tokenizer, instructions, rows.shape[1], 0)
    ids[np.arange(len(ids))[:, None], pos] = rows if per_prompt else rows[0][None, :]
    return (ids, mask, pos) if return_slots else (ids, mask)
