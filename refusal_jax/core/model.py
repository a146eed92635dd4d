"""The transformer as pure functions over a parameter pytree.

One implementation serves Gemma 2 and 3, Llama-3.x (incl. SmolLM2), Qwen2/2.5 and Qwen3; the
differences are static switches in :class:`~refusal_jax.core.config.ModelConfig`. Layers are stacked
along a leading axis and run under ``jax.lax.scan``; a *patch* (see :mod:`refusal_jax.core.patches`)
is applied to the residual stream after every layer inside that scan.

Parameter pytree (``L`` layers, linear weights stored ``[in, out]``; the one source of truth is the
layout table :data:`refusal_jax.core.layout.TABLE`)::

    embed [V, D]; final_norm [D]; lm_head [D, V] (untied models only)
    layers: attn_norm [L, D]; q [L, D, H*Dh]; k, v [L, D, Hkv*Dh]; o [L, H*Dh, D];
            q_bias/k_bias/v_bias [L, H*Dh | Hkv*Dh] (Qwen2); q_norm, k_norm [L, Dh] (Gemma 3,
            Qwen3); mlp_norm [L, D]; post_attn_norm, post_mlp_norm [L, D] (Gemma 2 and 3);
            gate, up [L, D, F]; down [L, F, D]
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.typing import ArrayLike

from refusal_jax.core import layout
from refusal_jax.core.batching import bucket
from refusal_jax.core.config import ModelConfig
from refusal_jax.core.errors import UserError
from refusal_jax.core.patches import Identity, PatchContext


class InputError(UserError):
    """A batch given to :func:`forward`, :func:`generate` or LA-IG is malformed (a ValueError)."""


Params = dict


# ----------------------------------------------------------------------------- shapes / init
def param_shapes(cfg: ModelConfig) -> dict:
    """Expected shape of every parameter (same nesting as the parameter pytree), from the
    layout table :data:`refusal_jax.core.layout.TABLE`; per-layer weights are stacked with a
    leading [L] axis (e.g. ``layers.q`` [L, D, H*Dh])."""
    return layout.shapes(cfg)


def init_params(
    cfg: ModelConfig, key: jax.Array, dtype: jnp.dtype = jnp.float32, scale: float = 0.02
) -> Params:
    """Random parameters (normal(0, scale) weights; zero biases; norms at identity), shaped as
    :func:`param_shapes`."""
    rows = layout.tree(cfg, lambda p: p)
    leaves, treedef = jax.tree.flatten(rows, is_leaf=lambda p: isinstance(p, layout.Param))
    keys = jax.random.split(key, len(leaves))
    out = []
    for p, k in zip(leaves, keys):
        shape = p.shape(cfg)
        if p.kind == "norm":
            value = jnp.zeros(shape) if cfg.norm_plus_one else jnp.ones(shape)
        elif p.kind == "bias":
            value = jnp.zeros(shape)
        else:
            value = scale * jax.random.normal(k, shape)
        out.append(value.astype(dtype))
    return jax.tree.unflatten(treedef, out)


# ----------------------------------------------------------------------------- building blocks
def rms_norm(x: jax.Array, weight: jax.Array, cfg: ModelConfig) -> jax.Array:
    """RMSNorm in float32; Gemma scales by (1 + w) before the cast, Llama by w after it.

    x [..., D] (any leading axes), weight [D] -> [..., D] in x's dtype."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + cfg.norm_eps)
    if cfg.norm_plus_one:
        return (y * (1.0 + weight.astype(jnp.float32))).astype(x.dtype)
    return weight.astype(x.dtype) * y.astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig, local: bool = False) -> np.ndarray:
    """Inverse rotary frequencies [head_dim/2], including linear and llama3 scaling.

    ``local``: those of the sliding-window layers, which differ when the config has a
    ``rope_local_theta`` (Gemma 3: plain RoPE with that base; the scaling is for global layers).
    """
    dim = cfg.head_dim
    local = local and cfg.rope_local_theta is not None
    theta = cfg.rope_local_theta if local else cfg.rope_theta
    inv = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    rs = {} if local else dict(cfg.rope_scaling)
    kind = rs.get("rope_type", "default")
    if kind == "linear":
        inv = inv / rs["factor"]
    elif kind == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old_ctx = rs["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_ctx / lo, old_ctx / hi
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def rope_tables(
    cfg: ModelConfig, positions: jax.Array, dtype: jnp.dtype, local: bool = False
) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B, T, head_dim] for integer positions [B, T] (HF's rotate-half layout);
    ``local``: for the sliding-window layers (see :func:`rope_inv_freq`)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(cfg, local))
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def _rope(cfg, positions, dtype):
    """(global (cos, sin), local (cos, sin) or None when every layer shares the global one)."""
    glob = rope_tables(cfg, positions, dtype)
    if cfg.rope_local_theta is None or not any(cfg.layer_is_sliding):
        return glob, None
    return glob, rope_tables(cfg, positions, dtype, local=True)


def _layer_rope(rope, is_sliding):
    """The (cos, sin) of one layer inside the scan (``is_sliding`` is a traced bool)."""
    glob, loc = rope
    if loc is None:
        return glob
    return tuple(jnp.where(is_sliding, lo, g) for g, lo in zip(glob, loc))


def _apply_rope(x, cos, sin):
    # x [B, T, H, Dh]; cos/sin [B, T, Dh]
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None] + rotated * sin[:, :, None]


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Position ids under left padding: cumulative sum of the mask minus one (pads get 0).

    attention_mask [B, T] (1 = token) -> positions [B, T] int32."""
    m = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=-1) - 1, 0) * m


def _attention_bias(cfg, q_pos, q_slot, k_pos, k_slot, k_valid):
    """Boolean masks [B, Tq, Tk] for full and sliding-window layers."""
    allowed = (k_slot[:, None, :] <= q_slot[:, :, None]) & k_valid[:, None, :]
    if not cfg.sliding_window:
        return allowed, allowed
    near = (q_pos[:, :, None] - k_pos[:, None, :]) < cfg.sliding_window
    return allowed, allowed & near


def _attend(cfg, q, k, v, mask):
    """Grouped-query attention. q [B,T,H,Dh]; k, v [B,S,Hkv,Dh]; mask [B,T,S] bool."""
    B, T, H, Dh = q.shape
    g = H // cfg.n_kv_heads
    q = q.reshape(B, T, cfg.n_kv_heads, g, Dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores * cfg.attn_scale
    if cfg.attn_softcap:
        scores = jnp.tanh(scores / cfg.attn_softcap) * cfg.attn_softcap
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(B, T, H * Dh)


def _qkv(cfg, lp, h, cos, sin):
    B, T, _ = h.shape
    q, k, v = h @ lp["q"], h @ lp["k"], h @ lp["v"]
    if cfg.qkv_bias:
        q, k, v = q + lp["q_bias"], k + lp["k_bias"], v + lp["v_bias"]
    q = q.reshape(B, T, cfg.n_heads, cfg.head_dim)
    k = k.reshape(B, T, cfg.n_kv_heads, cfg.head_dim)
    if cfg.qk_norm:  # Gemma 3 / Qwen3: RMSNorm over each head's head_dim
        q, k = rms_norm(q, lp["q_norm"], cfg), rms_norm(k, lp["k_norm"], cfg)
    q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
    v = v.reshape(B, T, cfg.n_kv_heads, cfg.head_dim)
    return q, k, v


def _mlp(cfg, lp, h):
    gate = h @ lp["gate"]
    act = (
        jax.nn.gelu(gate, approximate=True) if cfg.activation == "gelu_tanh" else jax.nn.silu(gate)
    )
    return (act * (h @ lp["up"])) @ lp["down"]


def _block(cfg, lp, x, cos, sin, attend_fn):
    """One decoder layer. ``attend_fn(q, k, v) -> [B,T,H*Dh]`` hides cache handling."""
    h = rms_norm(x, lp["attn_norm"], cfg)
    q, k, v = _qkv(cfg, lp, h, cos, sin)
    a = attend_fn(q, k, v) @ lp["o"]
    if cfg.sandwich_norms:
        a = rms_norm(a, lp["post_attn_norm"], cfg)
    x = x + a
    h = rms_norm(x, lp["mlp_norm"], cfg)
    m = _mlp(cfg, lp, h)
    if cfg.sandwich_norms:
        m = rms_norm(m, lp["post_mlp_norm"], cfg)
    return x + m, (k, v)


def embed(params: Params, cfg: ModelConfig, input_ids: jax.Array) -> jax.Array:
    """Token embeddings: input_ids [B, T] int -> [B, T, D] (Gemma: times sqrt(D))."""
    table = params["embed"]
    x = jnp.take(table, input_ids, axis=0)
    if cfg.embed_scale:
        x = x * jnp.asarray(cfg.embed_multiplier, table.dtype)
    return x


def unembed(params: Params, cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """Final norm, unembedding and (Gemma-2) final softcap: x [..., D] -> logits [..., V]
    float32."""
    x = rms_norm(x, params["final_norm"], cfg)
    w = params["embed"].T if cfg.tie_embeddings else params["lm_head"]
    logits = jnp.einsum("...d,dv->...v", x, w, preferred_element_type=jnp.float32)
    if cfg.final_softcap:
        logits = jnp.tanh(logits / cfg.final_softcap) * cfg.final_softcap
    return logits


# ----------------------------------------------------------------------------- forward
class ForwardOutput(NamedTuple):
    """logits [B,T,V] float32; resid_pre/resid_post [L,B,T,D] when requested (else None);
    block_out [L,B,T,D]: each layer's output *before* the patch (with ``return_residuals``);
    kv: per-layer keys and values ([L,B,T,Hkv,Dh] each) when requested."""

    logits: jax.Array
    resid_pre: jax.Array | None = None
    resid_post: jax.Array | None = None
    kv: tuple | None = None
    block_out: jax.Array | None = None


# remat option -> jax.checkpoint policy: what a rematerialised layer keeps for the backward pass
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,  # only the layer's input (least memory)
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # + weight matmul outputs
}


def remat_policy(remat: bool | str | None) -> object | None:
    """``remat`` (False/None, True = "full", or a :data:`REMAT_POLICIES` name) -> the
    ``jax.checkpoint`` policy, or None for no rematerialisation."""
    if remat is None or remat is False:
        return None
    if remat is True:
        remat = "full"
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat must be a bool or one of {tuple(REMAT_POLICIES)}, got {remat!r}")
    return REMAT_POLICIES[remat]


def _run_layers(
    params, cfg, x, rope, patch, ctx, attend_for_layer, layer_xs, with_unpatched=False, remat=False
):
    """Scan the stacked layers; returns final residual, stacked resid_post, stacked (k, v).

    ``remat``: rematerialise each layer in the backward pass (``jax.checkpoint`` on the scan
    body, see :data:`REMAT_POLICIES`): autodiff then keeps only the residual stream between
    layers (and, with ``"dots"``, the weight matmuls' outputs), not every layer's attention
    scores and MLP activations."""
    policy = remat_policy(remat)
    sliding = jnp.asarray(cfg.layer_is_sliding)

    def step(h, xs):
        lp, idx, is_sliding, extra = xs
        cos, sin = _layer_rope(rope, is_sliding)
        unpatched, kv = _block(cfg, lp, h, cos, sin, attend_for_layer(is_sliding, extra))
        h = patch(unpatched, idx, ctx)
        return h, (h, unpatched, kv) if with_unpatched else (h, kv)

    if policy is not None:
        step = jax.checkpoint(step, prevent_cse=False, policy=policy)
    xs = (params["layers"], jnp.arange(cfg.n_layers, dtype=jnp.int32), sliding, layer_xs)
    return jax.lax.scan(step, x, xs)


def forward_fn(
    params: Params,
    cfg: ModelConfig,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    patch: object | None = None,
    *,
    return_residuals: bool = False,
    return_kv: bool = False,
    last_logits_only: bool = False,
    remat: bool | str = False,
) -> ForwardOutput:
    """Un-jitted forward pass (use :func:`forward`, or call this inside your own jit/grad).

    input_ids [B, T] int, attention_mask [B, T] (1 = token, 0 = left padding). Returns logits
    [B, T, V] float32 ([B, 1, V] with ``last_logits_only``); resid_pre, resid_post and block_out
    [L, B, T, D]; kv: keys and values [L, B, T, Hkv, Dh]. ``patch`` is applied
    to resid_post of every layer inside the scan. With ``return_residuals`` the residual stream
    before (resid_pre) and after (resid_post, patched) every layer comes back in the same pass.
    ``remat`` (True, "full" or "dots"; see :data:`REMAT_POLICIES`) trades compute for memory
    under autodiff (each layer recomputed in the backward pass); the values are unchanged.
    Floating-point work follows the parameter dtype (bfloat16 weights: bfloat16 matmuls), with
    RMSNorm, attention scores, softmax and the logits in float32.
    """
    remat_policy(remat)  # validate early, outside the scan
    patch = Identity() if patch is None else patch
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    mask = attention_mask.astype(bool)
    B, T = input_ids.shape
    pos = positions_from_mask(attention_mask)
    slot = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    full, sliding = _attention_bias(cfg, pos, slot, pos, slot, mask)
    x = embed(params, cfg, input_ids)
    rope = _rope(cfg, pos, x.dtype)
    ctx = PatchContext(positions=pos, token_mask=mask, is_prompt=jnp.bool_(True))

    def attend_for_layer(is_sliding, _):
        m = jnp.where(is_sliding, sliding, full)
        return lambda q, k, v: _attend(cfg, q, k, v, m)

    layers_in = (params, cfg, x, rope, patch, ctx, attend_for_layer, None)
    h, ys = _run_layers(*layers_in, with_unpatched=return_residuals, remat=remat)
    logits = unembed(params, cfg, h[:, -1:] if last_logits_only else h)
    if not return_residuals:
        return ForwardOutput(logits, kv=ys[1] if return_kv else None)
    posts, unpatched, kv = ys
    pre = jnp.concatenate([x[None], posts[:-1]], axis=0)
    return ForwardOutput(logits, pre, posts, kv if return_kv else None, unpatched)


def n_embeddings(params: Params, cfg: ModelConfig) -> int:
    """Rows of the embedding table (``cfg.vocab_size`` unless the table was extended)."""
    embed = params.get("embed") if isinstance(params, dict) else None
    return int(embed.shape[0]) if getattr(embed, "shape", None) else cfg.vocab_size


def check_inputs(
    cfg: ModelConfig,
    input_ids: ArrayLike,
    attention_mask: ArrayLike | None = None,
    where: str = "forward",
    n_vocab: int | None = None,
) -> None:
    """Validate a concrete batch before it reaches a jitted program: ``input_ids`` [B, T] integer
    ids in [0, n_vocab) (default ``cfg.vocab_size``; see :func:`n_embeddings`),
    ``attention_mask`` [B, T] of 0/1 with left padding only (0s, then 1s) and
    T <= ``cfg.max_position_embeddings``. Traced (or not fully addressable) inputs are not
    checked. Raises ``ValueError`` naming ``where`` and the problem."""
    n_vocab = cfg.vocab_size if n_vocab is None else n_vocab
    for a in (input_ids, attention_mask):
        if isinstance(a, jax.core.Tracer) or not getattr(a, "is_fully_addressable", True):
            return
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise InputError(f"{where}: input_ids must be [B, T], got shape {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise InputError(f"{where}: input_ids must be integer token ids, got dtype {ids.dtype}")
    if ids.shape[1] > cfg.max_position_embeddings:
        raise InputError(
            f"{where}: input_ids has {ids.shape[1]} positions, more than the model's "
            f"max_position_embeddings {cfg.max_position_embeddings}"
        )
    if ids.size and (ids.min() < 0 or ids.max() >= n_vocab):
        bad = int(ids.max()) if ids.max() >= n_vocab else int(ids.min())
        raise InputError(
            f"{where}: input_ids holds token id {bad}, outside the vocabulary [0, {n_vocab})"
        )
    if attention_mask is None:
        return
    mask = np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise InputError(f"{where}: attention_mask has shape {mask.shape}, input_ids {ids.shape}")
    if mask.size and not np.isin(mask, (0, 1)).all():
        raise InputError(f"{where}: attention_mask must hold only 0 and 1")
    if mask.size and (np.diff(mask.astype(np.int8), axis=1) < 0).any():
        row = int(np.flatnonzero((np.diff(mask.astype(np.int8), axis=1) < 0).any(axis=1))[0])
        raise InputError(
            f"{where}: attention_mask row {row} is not left padded (a 0 after a 1); pad on the "
            "left (tokenizer padding_side='left')"
        )


_forward_jit = jax.jit(
    forward_fn,
    static_argnames=("cfg", "return_residuals", "return_kv", "last_logits_only", "remat"),
)


@functools.wraps(forward_fn)
def forward(
    params: Params,
    cfg: ModelConfig,
    input_ids: ArrayLike,
    attention_mask: ArrayLike | None = None,
    patch: object | None = None,
    **kw: object,
) -> ForwardOutput:
    check_inputs(cfg, input_ids, attention_mask, "forward", n_embeddings(params, cfg))
    return _forward_jit(params, cfg, input_ids, attention_mask, patch, **kw)


forward.__doc__ = (
    "Jitted :func:`forward_fn`; concrete inputs are checked first (:func:`check_inputs`). "
    + (forward_fn.__doc__ or "")
)


# ----------------------------------------------------------------------------- generation
@struct.dataclass
class GenerateOutput:
    """tokens [B, max_new_tokens] (pad_token_id after a sequence stopped);
    lengths [B] generated tokens per sequence including the EOS token, if any."""

    tokens: jax.Array
    lengths: jax.Array


def _decode_step(params, cfg, token, pos, cache, key_valid, key_pos, slot_idx, patch):
    """One new token per sequence against a KV cache of S slots.

    token/pos [B]; cache (k, v) [L,B,S,Hkv,Dh]; key_valid/key_pos [B,S]; slot_idx scalar.
    Returns logits [B,V] and the updated cache.
    """
    B = token.shape[0]
    S = key_valid.shape[1]
    x = embed(params, cfg, token[:, None])
    rope = _rope(cfg, pos[:, None], x.dtype)
    q_slot = jnp.full((B, 1), slot_idx, jnp.int32)
    k_slot = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
    full, sliding = _attention_bias(cfg, pos[:, None], q_slot, key_pos, k_slot, key_valid)
    ctx = PatchContext(
        positions=pos[:, None], token_mask=jnp.ones((B, 1), bool), is_prompt=jnp.bool_(False)
    )

    def attend_for_layer(is_sliding, layer_cache):
        ck, cv = layer_cache
        m = jnp.where(is_sliding, sliding, full)

        def attend(q, k, v):
            k_all = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), slot_idx, axis=1)
            v_all = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), slot_idx, axis=1)
            return _attend(cfg, q, k_all, v_all, m)

        return attend

    h, (_, (k_new, v_new)) = _run_layers(params, cfg, x, rope, patch, ctx, attend_for_layer, cache)
    ck, cv = cache
    ck = jax.lax.dynamic_update_slice_in_dim(ck, k_new.astype(ck.dtype), slot_idx, axis=2)
    cv = jax.lax.dynamic_update_slice_in_dim(cv, v_new.astype(cv.dtype), slot_idx, axis=2)
    return unembed(params, cfg, h)[:, 0], (ck, cv)


def generation_capacity(max_new_tokens: int, prompt_length: int, context: int) -> int:
    """The number of new-token slots :func:`generate` compiles for: ``max_new_tokens`` rounded
    up to a power of two (at least 8), within the model context. Runs whose ``max_new_tokens``
    fall in one bucket (say 4 and 8, or 17 to 32) share one compiled program; the loop still
    stops after ``max_new_tokens``, and the unused cache slots are masked out."""
    return max(max_new_tokens, min(bucket(max_new_tokens), context - prompt_length))


@functools.partial(
    jax.jit, static_argnames=("cfg", "capacity", "patch_prompt_only", "eos_token_ids")
)
def _generate(
    params,
    cfg,
    input_ids,
    attention_mask,
    patch,
    max_new_tokens,
    capacity,
    patch_prompt_only,
    eos_token_ids,
    pad_token_id,
):
    """Greedy decoding into ``capacity`` (static) token slots, stopping after ``max_new_tokens``
    (traced, <= capacity); the slots after it hold ``pad_token_id``."""
    B, T = input_ids.shape
    out = forward_fn(
        params, cfg, input_ids, attention_mask, patch, return_kv=True, last_logits_only=True
    )
    k, v = out.kv
    pad = [(0, 0), (0, 0), (0, capacity), (0, 0), (0, 0)]
    cache = (jnp.pad(k, pad), jnp.pad(v, pad))
    mask = attention_mask.astype(bool)
    key_valid = jnp.concatenate([mask, jnp.zeros((B, capacity), bool)], axis=1)
    prompt_pos = positions_from_mask(attention_mask)
    key_pos = jnp.concatenate([prompt_pos, jnp.zeros((B, capacity), jnp.int32)], axis=1)
    next_pos = prompt_pos[:, -1] + 1
    eos = jnp.asarray(eos_token_ids or (-1,), jnp.int32)
    step_patch = Identity() if patch_prompt_only else patch

    first = jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32)
    tokens = jnp.full((B, capacity), pad_token_id, jnp.int32).at[:, 0].set(first)
    done = jnp.isin(first, eos)
    lengths = jnp.ones((B,), jnp.int32)

    def cond(state):
        i, _, _, done, *_ = state
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(state):
        i, tokens, lengths, done, cache, key_valid, key_pos, pos = state
        slot = T + i - 1
        prev = tokens[:, i - 1]
        key_valid = key_valid.at[:, slot].set(True)
        key_pos = key_pos.at[:, slot].set(pos)
        logits, cache = _decode_step(
            params, cfg, prev, pos, cache, key_valid, key_pos, slot, step_patch
        )
        nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, pad_token_id, nxt)
        tokens = tokens.at[:, i].set(nxt)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | jnp.isin(nxt, eos)
        return i + 1, tokens, lengths, done, cache, key_valid, key_pos, pos + 1

    state = (jnp.int32(1), tokens, lengths, done, cache, key_valid, key_pos, next_pos)
    _, tokens, lengths, *_ = jax.lax.while_loop(cond, body, state)
    return GenerateOutput(tokens=tokens, lengths=lengths)


def generate(
    params: Params,
    cfg: ModelConfig,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    max_new_tokens: int = 64,
    patch: object | None = None,
    patch_prompt_only: bool = False,
    eos_token_ids: tuple[int, ...] | None = None,
    pad_token_id: int | None = None,
) -> GenerateOutput:
    """Greedy decoding with a KV cache for a left-padded batch: input_ids, attention_mask
    [B, T] -> tokens [B, max_new_tokens] int32 (pad after a sequence stops), lengths [B].

    Each sequence stops at any of ``eos_token_ids`` (default: the config's) or after
    ``max_new_tokens``; the loop ends when all have stopped. ``patch`` edits the residual stream
    at every step (prompt and generated tokens), or only while the prompt is processed when
    ``patch_prompt_only``. The program is compiled per batch shape and per bucket of
    ``max_new_tokens`` (:func:`generation_capacity`), not per value.
    """
    check_inputs(cfg, input_ids, attention_mask, "generate", n_embeddings(params, cfg))
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} must be [B, T]"
        )
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    total = input_ids.shape[1] + max_new_tokens
    if total > cfg.max_position_embeddings:
        raise ValueError(
            f"prompt length {input_ids.shape[1]} + max_new_tokens {max_new_tokens} exceeds the "
            f"model context of {cfg.max_position_embeddings} positions"
        )
    eos = tuple(cfg.eos_token_ids if eos_token_ids is None else eos_token_ids)
    pad = cfg.pad_token_id if pad_token_id is None else pad_token_id
    pad = 0 if pad is None else pad
    out = _generate(
        params,
        cfg,
        input_ids,
        attention_mask,
        patch or Identity(),
        jnp.int32(max_new_tokens),
        generation_capacity(max_new_tokens, input_ids.shape[1], cfg.max_position_embeddings),
        patch_prompt_only,
        eos,
        jnp.int32(pad),
    )
    if out.tokens.shape[1] == max_new_tokens:
        return out
    return GenerateOutput(tokens=out.tokens[:, :max_new_tokens], lengths=out.lengths)
