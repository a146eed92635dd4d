"""Gradient-based adversarial suffixes (GCG, Zou et al. 2023), universal over a prompt set.

A suffix of ``n_tokens`` tokens is appended to every user request, right after its text and
inside the chat template; as text, the suffixed request is ``request + decode(suffix)``
(:func:`suffixed`). The objective, averaged over the training prompts, is LA-IG's metric turned
into a loss: ``logit(refusal token) - logit(target token)`` at the last position (e.g. "I" vs
"Sure"), so the suffix pushes the first response token from refusing to complying.

Each step: (1) the gradient of the loss with respect to the one-hot suffix tokens, exactly, by
giving each suffix slot its own embedding row (rows V.. of an extended table, each row the
one-hot mix of the real rows; the tokens it decodes to are unchanged); (2) for every slot the
top-k allowed tokens with the most negative gradient; (3) ``n_candidates`` suffixes, each with
one slot replaced by one of its top-k tokens, evaluated exactly in batched, jitted forwards
(``candidate_batch`` candidates x all prompts per forward); (4) the best candidate is kept if it
lowers the loss. Candidates whose text does not encode back to the same tokens are dropped
(``retokenize``), so the suffix found works when typed as text.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from tqdm.auto import tqdm

from refusal_jax.core.config import ModelConfig
from refusal_jax.core.model import forward_fn
from refusal_jax.method.prompts import chat_texts

_MARK = "\u2063MARK\u2063"


@dataclasses.dataclass(frozen=True)
class GCGConfig:
    n_tokens: int = 8
    n_steps: int = 60
    top_k: int = 64
    n_candidates: int = 128
    candidate_batch: int = 32  # candidates scored per vmapped forward
    seed: int = 0
    retokenize: bool = True  # drop candidates whose text encodes to other tokens

    def __post_init__(self):
        for name in ("n_tokens", "top_k", "n_candidates", "candidate_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"GCGConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_steps < 0:
            raise ValueError(f"GCGConfig.n_steps must be >= 0, got {self.n_steps}")


def allowed_tokens(tokenizer: object, vocab_size: int, ascii_only: bool = True) -> np.ndarray:
    """[vocab_size] bool: tokens a suffix may use - not special or added tokens (chat markers,
    padding, unused slots), not beyond the tokenizer, decoding to printable text without line
    breaks (``ascii_only``: printable ASCII) and not to whitespace only."""
    ok = np.zeros(vocab_size, bool)
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    for t in range(min(vocab_size, len(tokenizer))):
        if t in special:
            continue
        s = tokenizer.decode([t])
        if not s.strip() or "\ufffd" in s or not s.isprintable():
            continue
        if ascii_only and not s.isascii():
            continue
        ok[t] = True
    if not ok.any():
        raise ValueError("no token is allowed in a suffix")
    return ok


def _head_tail(tokenizer, instruction: str) -> tuple[list[int], list[int]]:
    chat = chat_texts(tokenizer, [f"{instruction}{_MARK}"])[0]
    if chat.count(_MARK) != 1:
        raise ValueError("the chat template altered the request text; cannot place a suffix")
    head, tail = chat.split(_MARK)
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]
    return enc(head), enc(tail)


def suffix_template(
    tokenizer: object, instructions: Sequence[str], n_tokens: int, placeholder: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids of each chat prompt with ``n_tokens`` copies of ``placeholder`` right after
    the request: (ids [N, T] int left padded, mask [N, T], slot positions [N, n_tokens] int)."""
    rows, slots = [], []
    for text in instructions:
        head, tail = _head_tail(tokenizer, text)
        rows.append(head + [placeholder] * n_tokens + tail)
        slots.append(len(head))
    T = max(len(r) for r in rows)
    ids = np.zeros((len(rows), T), np.int32)
    mask = np.zeros_like(ids)
    pos = np.zeros((len(rows), n_tokens), np.int32)
    for i, (r, s) in enumerate(zip(rows, slots)):
        off = T - len(r)
        ids[i, off:], mask[i, off:] = r, 1
        pos[i] = off + s + np.arange(n_tokens)
    return ids, mask, pos


def suffixed(instructions: Iterable[str], suffix_text: str) -> list[str]:
    """The requests with the suffix appended as text (GCG's suffix text carries its own leading
    space, if any)."""
    return [f"{q}{suffix_text}" for q in instructions]


def retokenizes(tokenizer: object, instruction: str, candidates: ArrayLike) -> np.ndarray:
    """candidates [C, n_tokens] int -> [C] bool: the chat prompt of
    ``instruction + decode(candidate)`` encodes to exactly the template's tokens with the
    candidate in the suffix slots."""
    head, tail = _head_tail(tokenizer, instruction)
    cands = [list(map(int, c)) for c in np.asarray(candidates)]
    texts = chat_texts(tokenizer, [instruction + tokenizer.decode(c) for c in cands])
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return np.array([e == head + c + tail for e, c in zip(enc, cands)], bool)


def _loss_from_logits(logits, refusal_token, target_token):
    last = logits[:, -1]
    return jnp.mean(last[:, refusal_token] - last[:, target_token])


@functools.partial(jax.jit, static_argnames=("cfg",))
def suffix_loss_and_grad(
    params: dict,
    cfg: ModelConfig,
    ids: jax.Array,
    mask: jax.Array,
    pos: jax.Array,
    suffix: jax.Array,
    refusal_token: int,
    target_token: int,
) -> tuple[jax.Array, jax.Array]:
    """Loss of ``suffix`` [n] and its gradient w.r.t. the one-hot suffix [n, V] (exact).

    ids, mask [B, T]: the prompts with the suffix slots at positions ``pos`` [B, n]."""
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


@functools.partial(jax.jit, static_argnames=("cfg", "candidate_batch"))
def candidate_losses(
    params: dict,
    cfg: ModelConfig,
    ids: jax.Array,
    mask: jax.Array,
    pos: jax.Array,
    candidates: jax.Array,
    refusal_token: int,
    target_token: int,
    candidate_batch: int = 32,
) -> jax.Array:
    """Exact loss of every candidate suffix [C, n] (mean over prompts): [C]. Candidates are
    scored ``candidate_batch`` at a time, each chunk one vmapped forward over all prompts."""

    def one(s):
        full = ids.at[jnp.arange(ids.shape[0])[:, None], pos].set(s[None, :])
        logits = forward_fn(params, cfg, full, mask, last_logits_only=True).logits
        return _loss_from_logits(logits, refusal_token, target_token)

    return jax.lax.map(one, candidates, batch_size=candidate_batch)


def _initial_token(tokenizer, instruction, allowed: np.ndarray, n_tokens: int, check: bool):
    for t in np.flatnonzero(allowed)[:500]:
        if not check or retokenizes(tokenizer, instruction, [[int(t)] * n_tokens])[0]:
            return int(t)
    raise ValueError(f"no allowed token repeats {n_tokens} times and encodes back to itself")


def gcg_search(
    params: dict, cfg: ModelConfig, tokenizer: object, instructions: Sequence[str], *,
    refusal_token: int, target_token: int, gc: GCGConfig, allowed: ArrayLike | None = None,
    init_token: int | None = None, progress: bool = False,
) -> dict:  # fmt: skip
    """Optimise one suffix for all ``instructions``.

    Returns {"suffix_ids" (list of n_tokens ints), "suffix" (its text: append it to a
    request), "losses" (per step, the current suffix's mean loss), "n_dropped" (candidates
    dropped because their text encodes to other tokens)}. ``allowed`` [V] bool: tokens the
    suffix may use (default :func:`allowed_tokens`)."""
    if not instructions:
        raise ValueError("gcg_search needs at least one instruction")
    V = params["embed"].shape[0]
    allowed = allowed_tokens(tokenizer, V) if allowed is None else np.asarray(allowed, bool)
    if allowed.shape != (V,):
        raise ValueError(f"allowed has shape {allowed.shape}, expected ({V},)")
    if init_token is None:
        init_token = _initial_token(tokenizer, instructions[0], allowed, gc.n_tokens, gc.retokenize)
    ids, mask, pos = (
        jnp.asarray(a) for a in suffix_template(tokenizer, instructions, gc.n_tokens, init_token)
    )
    args = (refusal_token, target_token)
    block = jnp.asarray(~allowed)
    suffix = jnp.full((gc.n_tokens,), init_token, jnp.int32)
    rng = np.random.default_rng(gc.seed)
    losses, dropped = [], 0
    for _ in tqdm(range(gc.n_steps), desc="GCG", disable=not progress):
        loss, grad = suffix_loss_and_grad(params, cfg, ids, mask, pos, suffix, *args)
        losses.append(float(loss))
        grad = jnp.where(block[None, :], jnp.inf, grad)
        top = np.asarray(jnp.argsort(grad, axis=-1)[:, : gc.top_k])  # [n, k] most loss-lowering
        slot = rng.integers(0, gc.n_tokens, gc.n_candidates)
        choice = rng.integers(0, top.shape[1], gc.n_candidates)
        cands = np.tile(np.asarray(suffix), (gc.n_candidates, 1))
        cands[np.arange(gc.n_candidates), slot] = top[slot, choice]
        n_ok = gc.n_candidates
        if gc.retokenize:
            ok = retokenizes(tokenizer, instructions[0], cands)
            dropped += int((~ok).sum())
            n_ok = int(ok.sum())
            if n_ok == 0:
                continue
            # the valid ones first, padded with copies to one shape (one compilation)
            cands = np.concatenate([cands[ok], np.repeat(cands[ok][:1], len(cands) - n_ok, 0)])
        cl = np.asarray(
            candidate_losses(
                params, cfg, ids, mask, pos, jnp.asarray(cands), *args,
                candidate_batch=min(gc.candidate_batch, gc.n_candidates),
            )
        )[:n_ok]  # fmt: skip
        best = int(np.argmin(cl))
        if cl[best] < losses[-1]:
            suffix = jnp.asarray(cands[best])
    loss, _ = suffix_loss_and_grad(params, cfg, ids, mask, pos, suffix, *args)
    losses.append(float(loss))
    ids_out = [int(t) for t in np.asarray(suffix)]
    return {
        "suffix_ids": ids_out,
        "suffix": tokenizer.decode(ids_out),
        "losses": losses,
        "n_dropped": dropped,
    }


__all__ = [
    "GCGConfig",
    "allowed_tokens",
    "candidate_losses",
    "gcg_search",
    "retokenizes",
    "suffix_loss_and_grad",
    "suffix_template",
    "suffixed",
]
