"""Chat-formatted, left-padded prompt batches and greedy responses as text."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jax.typing import ArrayLike

from refusal_jax.core.batching import batches
from refusal_jax.core.config import ModelConfig
from refusal_jax.core.model import generate
from refusal_jax.core.patches import check_patch_rows, patch_rows


def chat_texts(tokenizer: object, instructions: Sequence[str]) -> list[str]:
    """Each instruction as one user turn in the tokenizer's chat template, with the generation
    prompt (the model's turn) appended."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat_template: cannot format chat prompts")
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": s}], tokenize=False, add_generation_prompt=True
        )
        for s in instructions
    ]


def encode_prompts(
    tokenizer: object,
    instructions: Sequence[str],
    *,
    multiple: int = 8,
    max_length: int | None = None,
    chat: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize and left-pad: (ids [N, T] int32, mask [N, T] int32), T a multiple of ``multiple``.

    The chat template supplies BOS, so no extra special tokens are added. Raises ``ValueError``
    for an empty list, or naming the prompt, when a prompt is longer than ``max_length``.
    """
    instructions = list(instructions)
    if not instructions:
        raise ValueError("no prompts to encode (empty dataset?)")
    texts = chat_texts(tokenizer, instructions) if chat else instructions
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    longest = max(len(r) for r in rows)
    if max_length is not None and longest > max_length:
        i = max(range(len(rows)), key=lambda j: len(rows[j]))
        raise ValueError(
            f"prompt {i} is {longest} tokens, longer than the context of {max_length}: "
            f"{instructions[i][:80]!r}"
        )
    length = -(-longest // multiple) * multiple
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = np.full((len(rows), length), pad, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
        ids[i, length - len(r) :] = r
        mask[i, length - len(r) :] = 1
    return ids, mask


def generate_tokens(
    params: dict,
    cfg: ModelConfig,
    ids: np.ndarray,
    mask: np.ndarray,
    *,
    batch_size: int = 32,
    max_new_tokens: int = 32,
    patch: object | None = None,
    **kw: object,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy generation over a prompt set ids [N, T] int, mask [N, T] in fixed-size batches
    (one compilation): (tokens [N, max_new_tokens] int, lengths [N] int). ``kw`` goes to
    :func:`refusal_jax.core.model.generate`."""

    check_patch_rows(patch, len(ids))
    toks, lens = [], []
    for i, (b_ids, b_mask, n) in enumerate(batches(ids, mask, batch_size)):
        b_patch = patch_rows(patch, i * batch_size, batch_size)
        out = generate(
            params, cfg, b_ids, b_mask, max_new_tokens=max_new_tokens, patch=b_patch, **kw
        )
        toks.append(np.asarray(out.tokens)[:n])
        lens.append(np.asarray(out.lengths)[:n])
    return np.concatenate(toks), np.concatenate(lens)


def decode_responses(tokenizer: object, tokens: ArrayLike, lengths: ArrayLike) -> list[str]:
    """The text of each response: tokens [N, max_new_tokens] int, the first lengths[i] of
    row i (lengths [N] int)."""
    return [
        tokenizer.decode(np.asarray(t[:n]).tolist(), skip_special_tokens=True)
        for t, n in zip(tokens, lengths)
    ]


def shared_padding(tokenizer: object, *prompt_sets: Sequence[str]) -> int:
    """A padded length (a multiple of 8) that fits every prompt set: as
    ``PipelineConfig.pad_multiple`` it gives all of them one shape, so jitted steps compile once."""
    return max(encode_prompts(tokenizer, xs)[0].shape[1] for xs in prompt_sets if xs)
