"""The parameter layout: one table from which every other view of the parameters is derived.

Each :class:`Param` row names one parameter of the pytree, gives its dimensions as *logical axes*
(sizes read from the :class:`~refusal_jax.core.config.ModelConfig`), its Hugging Face and
llama.cpp (GGUF) tensor names and how those store it. From the table come

* :func:`refusal_jax.core.model.param_shapes` (shapes, via :func:`shapes`),
* :func:`refusal_jax.core.sharding.param_specs` (partition specs, via :func:`logical_axes`),
* the checkpoint name maps of ``ports.hf`` and ``ports.gguf`` (via :func:`params`).

Logical axes and their sizes::

    vocab    vocab_size              embed    d_model
    q_heads  n_heads * head_dim      kv_heads n_kv_heads * head_dim
    head_dim head_dim                mlp      d_mlp

Per-layer rows (``per_layer``) are stacked along a leading layer axis ``[L, ...]`` and live under
``params["layers"]``; their names carry ``{i}`` for the layer index. Linear weights are stored
``[in, out]``; Hugging Face (and GGUF, as read by the ``gguf`` package) store them ``[out, in]``,
which is what ``transpose`` says.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from refusal_jax.core.config import ModelConfig

VOCAB, EMBED, Q_HEADS, KV_HEADS, HEAD_DIM, MLP = (
    "vocab",
    "embed",
    "q_heads",
    "kv_heads",
    "head_dim",
    "mlp",
)
LOGICAL_AXES = (VOCAB, EMBED, Q_HEADS, KV_HEADS, HEAD_DIM, MLP)


def axis_size(cfg: ModelConfig, axis: str) -> int:
    """Size of a logical axis under ``cfg``."""
    sizes = {
        VOCAB: cfg.vocab_size,
        EMBED: cfg.d_model,
        Q_HEADS: cfg.n_heads * cfg.head_dim,
        KV_HEADS: cfg.n_kv_heads * cfg.head_dim,
        HEAD_DIM: cfg.head_dim,
        MLP: cfg.d_mlp,
    }
    if axis not in sizes:
        raise KeyError(f"unknown logical axis {axis!r}; known: {LOGICAL_AXES}")
    return sizes[axis]


def _always(cfg: ModelConfig) -> bool:
    return True


@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter.

    key: its name in the pytree (top level, or under ``"layers"`` when ``per_layer``).
    axes: logical axis of each dimension (without the layer axis).
    hf / gguf: tensor names in a Hugging Face checkpoint / a GGUF file (``{i}``: layer index).
    transpose: the checkpoints store it with its dimensions reversed ([out, in]).
    kind: "weight", "bias" or "norm" (norms are (1 + w) under ``cfg.norm_plus_one``: zero is
        the identity; GGUF stores Gemma's norms with the 1 added).
    rotary: its output rows feed RoPE (q and k): llama.cpp permutes them in ``llama`` files.
    when: whether the parameter exists under a config.
    """

    key: str
    axes: tuple[str, ...]
    hf: str
    gguf: str
    per_layer: bool = True
    transpose: bool = False
    kind: str = "weight"
    rotary: bool = False
    when: Callable[[ModelConfig], bool] = _always

    def shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        """Shape in our layout (with the leading layer axis for per-layer parameters)."""
        dims = tuple(axis_size(cfg, a) for a in self.axes)
        return (cfg.n_layers, *dims) if self.per_layer else dims

    def stored_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        """Shape of one stored tensor (one layer's, for per-layer parameters)."""
        dims = tuple(axis_size(cfg, a) for a in self.axes)
        return tuple(reversed(dims)) if self.transpose else dims

    def hf_name(self, layer: int | None = None) -> str:
        return self.hf.format(i=layer) if self.per_layer else self.hf

    def gguf_name(self, layer: int | None = None) -> str:
        return self.gguf.format(i=layer) if self.per_layer else self.gguf


def _untied(c):
    return not c.tie_embeddings


def _bias(c):
    return c.qkv_bias


def _qk_norm(c):
    return c.qk_norm


def _sandwich(c):
    return c.sandwich_norms


def _plain(c):
    return not c.sandwich_norms


_L = "model.layers.{i}."
_B = "blk.{i}."

TABLE: tuple[Param, ...] = (
    Param("embed", (VOCAB, EMBED), "model.embed_tokens.weight", "token_embd.weight",
          per_layer=False),
    Param("final_norm", (EMBED,), "model.norm.weight", "output_norm.weight", per_layer=False,
          kind="norm"),
    Param("lm_head", (EMBED, VOCAB), "lm_head.weight", "output.weight", per_layer=False,
          transpose=True, when=_untied),
    Param("attn_norm", (EMBED,), _L + "input_layernorm.weight", _B + "attn_norm.weight",
          kind="norm"),
    Param("q", (EMBED, Q_HEADS), _L + "self_attn.q_proj.weight", _B + "attn_q.weight",
          transpose=True, rotary=True),
    Param("k", (EMBED, KV_HEADS), _L + "self_attn.k_proj.weight", _B + "attn_k.weight",
          transpose=True, rotary=True),
    Param("v", (EMBED, KV_HEADS), _L + "self_attn.v_proj.weight", _B + "attn_v.weight",
          transpose=True),
    Param("o", (Q_HEADS, EMBED), _L + "self_attn.o_proj.weight", _B + "attn_output.weight",
          transpose=True),
    Param("q_bias", (Q_HEADS,), _L + "self_attn.q_proj.bias", _B + "attn_q.bias",
          kind="bias", rotary=True, when=_bias),
    Param("k_bias", (KV_HEADS,), _L + "self_attn.k_proj.bias", _B + "attn_k.bias",
          kind="bias", rotary=True, when=_bias),
    Param("v_bias", (KV_HEADS,), _L + "self_attn.v_proj.bias", _B + "attn_v.bias",
          kind="bias", when=_bias),
    Param("q_norm", (HEAD_DIM,), _L + "self_attn.q_norm.weight", _B + "attn_q_norm.weight",
          kind="norm", when=_qk_norm),
    Param("k_norm", (HEAD_DIM,), _L + "self_attn.k_norm.weight", _B + "attn_k_norm.weight",
          kind="norm", when=_qk_norm),
    # The norm before the MLP: Llama/Qwen call it post_attention_layernorm, Gemma (whose
    # post_attention_layernorm is the sandwich norm after attention) pre_feedforward_layernorm.
    Param("mlp_norm", (EMBED,), _L + "post_attention_layernorm.weight", _B + "ffn_norm.weight",
          kind="norm", when=_plain),
    Param("mlp_norm", (EMBED,), _L + "pre_feedforward_layernorm.weight", _B + "ffn_norm.weight",
          kind="norm", when=_sandwich),
    Param("post_attn_norm", (EMBED,), _L + "post_attention_layernorm.weight",
          _B + "post_attention_norm.weight", kind="norm", when=_sandwich),
    Param("post_mlp_norm", (EMBED,), _L + "post_feedforward_layernorm.weight",
          _B + "post_ffw_norm.weight", kind="norm", when=_sandwich),
    Param("gate", (EMBED, MLP), _L + "mlp.gate_proj.weight", _B + "ffn_gate.weight",
          transpose=True),
    Param("up", (EMBED, MLP), _L + "mlp.up_proj.weight", _B + "ffn_up.weight", transpose=True),
    Param("down", (MLP, EMBED), _L + "mlp.down_proj.weight", _B + "ffn_down.weight",
          transpose=True),
)  # fmt: skip


def params(cfg: ModelConfig) -> tuple[Param, ...]:
    """The rows that exist under ``cfg`` (each key once)."""
    rows = tuple(p for p in TABLE if p.when(cfg))
    keys = [(p.per_layer, p.key) for p in rows]
    if len(set(keys)) != len(keys):
        raise RuntimeError(f"the layout table defines a parameter twice for {cfg}")
    return rows


def tree(cfg: ModelConfig, leaf: Callable[[Param], object]) -> dict:
    """A dict with the nesting of the parameter pytree, ``leaf(row)`` at every leaf."""
    out: dict = {}
    layers: dict = {}
    for p in params(cfg):
        (layers if p.per_layer else out)[p.key] = leaf(p)
    out["layers"] = layers
    return out


def shapes(cfg: ModelConfig) -> dict:
    """Shape of every parameter (same nesting as the parameter pytree)."""
    return tree(cfg, lambda p: p.shape(cfg))


def logical_axes(cfg: ModelConfig) -> dict:
    """Logical axes of every parameter, ``None`` for the stacked layer axis."""
    return tree(cfg, lambda p: ((None,) if p.per_layer else ()) + p.axes)


__all__ = [
    "EMBED",
    "HEAD_DIM",
    "KV_HEADS",
    "LOGICAL_AXES",
    "MLP",
    "Param",
    "Q_HEADS",
    "TABLE",
    "VOCAB",
    "axis_size",
    "logical_axes",
    "params",
    "shapes",
    "tree",
]
