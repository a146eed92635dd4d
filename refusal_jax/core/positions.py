"""Which token positions carry content: the one position rule used wherever positions are
aggregated or sampled (LA-IG position weights, the ``act`` baseline, SAE training data and its
metrics).

In a real chat model the first token and the chat template's constant header (BOS, a default
system prompt, ``<|im_start|>user\\n`` ...) are attention sinks: their residual norms are one or
two orders of magnitude above the content tokens'. Averaging over them, or training an SAE on
them, measures the sinks instead of the prompt. A :class:`ContentPositions` marks a position as
*content* when it is a real (non-pad) token, not a special token, and not within the template's
constant prefix:

- ``special_ids``: token ids never treated as content (BOS/EOS/pad/unk and the tokenizer's other
  special tokens, e.g. ``<start_of_turn>``, ``<|im_end|>``), from :func:`special_token_ids`;
- ``prefix_length``: the number of leading real tokens of every sequence to leave out (counted
  from the first non-pad token, so left padding does not matter): the chat template's constant
  prefix (:func:`template_prefix_length`, the tokens identical for every user message up to the
  first user token) or the prefix shared by a token set (:func:`common_prefix_length`).

Build one with :func:`content_positions` (from a tokenizer and/or a token set). The legacy rule
"skip the first n positions" is ``ContentPositions(prefix_length=n)`` (no special ids): that is
what :func:`refusal_jax.method.laig.position_weights` computes for ``skip=n``, and what the
organism's recorded demo uses (``skip_positions=1``).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from refusal_jax.core.config import ModelConfig

PREFIX_MODES = ("template", "data", "none")


@dataclasses.dataclass(frozen=True)
class ContentPositions:
    """The content-position rule: ``mask(ids, mask)`` -> [N, T] bool (see the module doc).

    special_ids: ids excluded wherever they occur; prefix_length: leading real tokens excluded.
    """

    special_ids: tuple[int, ...] = ()
    prefix_length: int = 0

    def __post_init__(self):
        if self.prefix_length < 0:
            raise ValueError(f"prefix_length must be >= 0, got {self.prefix_length}")
        object.__setattr__(self, "special_ids", tuple(sorted({int(i) for i in self.special_ids})))

    def mask(self, ids, mask):
        """[N, T] bool (a jax array): real tokens at position >= ``prefix_length`` (counted from
        the first real token) whose id is not special. ``ids`` may be None when there are no
        special ids. Works under jit (ids/mask [N, T] int, left padded)."""
        mask = jnp.asarray(mask)
        real = mask.astype(bool)
        pos = jnp.cumsum(real.astype(jnp.int32), axis=-1) - 1
        keep = real & (pos >= self.prefix_length)
        if self.special_ids:
            if ids is None:
                raise ValueError("ContentPositions with special ids needs the token ids")
            special = jnp.isin(jnp.asarray(ids), jnp.asarray(self.special_ids, jnp.int32))
            keep = keep & ~special
        return keep

    def groups(self, ids, mask) -> np.ndarray:
        """[N, T] int8 numpy: 1 content, 0 excluded real token, -1 padding."""
        keep = np.asarray(self.mask(ids, mask))
        return np.where(np.asarray(mask).astype(bool), keep.astype(np.int8), np.int8(-1))

    def describe(self) -> dict:
        return {"special_ids": list(self.special_ids), "prefix_length": self.prefix_length}


def special_token_ids(
    tokenizer: object | None = None, model_cfg: ModelConfig | None = None
) -> tuple[int, ...]:
    """BOS/EOS/pad/unk and every other special token id of a Hugging Face tokenizer
    (``all_special_ids``), plus the model config's ``bos_token_id``, ``eos_token_ids`` and
    ``pad_token_id`` when given."""
    ids: set[int] = set()
    if tokenizer is not None:
        ids.update(int(i) for i in (getattr(tokenizer, "all_special_ids", None) or ()))
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
            v = getattr(tokenizer, name, None)
            if isinstance(v, int):
                ids.add(v)
    if model_cfg is not None:
        for v in (model_cfg.bos_token_id, model_cfg.pad_token_id, *model_cfg.eos_token_ids):
            if v is not None:
                ids.add(int(v))
    return tuple(sorted(ids))


def _common_prefix(rows) -> int:
    n = min(len(r) for r in rows)
    for i in range(n):
        if any(r[i] != rows[0][i] for r in rows[1:]):
            return i
    return n


def template_prefix_length(tokenizer: object) -> int:
    """Tokens of the chat template identical for every user message, before the first user
    token: the common token prefix of the template rendered around two unrelated messages
    (0 when the tokenizer has no chat template)."""
    if getattr(tokenizer, "chat_template", None) is None:
        return 0
    rows = []
    for text in ("Zebra crossing 42", "how do I bake bread?"):
        s = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        rows.append(tokenizer(s, add_special_tokens=False)["input_ids"])
    return _common_prefix(rows)


def common_prefix_length(ids: ArrayLike, mask: ArrayLike) -> int:
    """Leading real tokens identical in every sequence of a left-padded set
    (ids [N, T] int, mask [N, T])."""
    ids, mask = np.asarray(ids), np.asarray(mask).astype(bool)
    rows = [r[m] for r, m in zip(ids, mask)]
    if len(rows) < 2:
        return 0
    return _common_prefix(rows)


def content_positions(
    tokenizer: object | None = None,
    *,
    model_cfg: ModelConfig | None = None,
    special: bool = True,
    prefix: str | int = "template",
    ids: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    skip_first: int = 0,
) -> ContentPositions:
    """The default content rule for a tokenizer (and/or model config) and token set.

    special: exclude special tokens (:func:`special_token_ids`).
    prefix: ``"template"`` the chat template's constant prefix (falls back to ``"data"`` when the
      tokenizer has no chat template and a token set is given), ``"data"`` the prefix shared by
      every sequence of ``ids`` [N, T] int / ``mask`` [N, T], ``"none"``, or an explicit
      number of tokens.
    skip_first: at least this many leading tokens are excluded whatever ``prefix`` gives.
    """
    if isinstance(prefix, str) and prefix not in PREFIX_MODES:
        raise ValueError(f"prefix must be one of {PREFIX_MODES} or an int, got {prefix!r}")
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if prefix == "template" and not has_template:
        prefix = "data" if ids is not None else "none"
    if prefix == "template":
        n = template_prefix_length(tokenizer)
    elif prefix == "data":
        if ids is None or mask is None:
            raise ValueError("prefix='data' needs the token set (ids and mask)")
        n = common_prefix_length(ids, mask)
    elif prefix == "none":
        n = 0
    else:
        n = int(prefix)
    specials = special_token_ids(tokenizer, model_cfg) if special else ()
    return ContentPositions(specials, max(n, int(skip_first)))


def position_rule(skip: int | str, tokenizer: object | None = None) -> ContentPositions:
    """The rule named by a ``skip_positions`` setting: an int n -> the first n real tokens
    excluded; ``"content"`` -> :func:`content_positions` of the tokenizer (special tokens and
    the chat template's constant prefix excluded)."""
    if isinstance(skip, str):
        if skip != "content":
            raise ValueError(f"skip_positions must be an int or 'content', got {skip!r}")
        if tokenizer is None:
            raise ValueError("skip_positions='content' needs the tokenizer")
        return content_positions(tokenizer)
    return ContentPositions(prefix_length=int(skip))


__all__ = [
    "ContentPositions",
    "position_rule",
    "PREFIX_MODES",
    "common_prefix_length",
    "content_positions",
    "special_token_ids",
    "template_prefix_length",
]
