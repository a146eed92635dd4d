"""The parameter-layout table: every view of the parameters (shapes, sharding specs, HF and GGUF
names) is derived from it and agrees with the others; the HF names of the families that existed
before the table are exactly the ones they had."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ports.hf import layer_key_map
from refusal_jax.core import layout
from refusal_jax.core.config import PRESETS, UnsupportedConfigError, config_from_hf
from refusal_jax.core.model import param_shapes
from refusal_jax.core.sharding import param_specs

# The per-layer HF map as ports/hf.py spelled it out before the table (issue 14).
_COMMON = {
    "attn_norm": ("input_layernorm.weight", False),
    "q": ("self_attn.q_proj.weight", True),
    "k": ("self_attn.k_proj.weight", True),
    "v": ("self_attn.v_proj.weight", True),
    "o": ("self_attn.o_proj.weight", True),
    "gate": ("mlp.gate_proj.weight", True),
    "up": ("mlp.up_proj.weight", True),
    "down": ("mlp.down_proj.weight", True),
}
BEFORE = {
    "gemma2-2b": _COMMON
    | {
        "post_attn_norm": ("post_attention_layernorm.weight", False),
        "mlp_norm": ("pre_feedforward_layernorm.weight", False),
        "post_mlp_norm": ("post_feedforward_layernorm.weight", False),
    },
    "llama3.1-8b": _COMMON | {"mlp_norm": ("post_attention_layernorm.weight", False)},
    "qwen2.5-1.5b": _COMMON
    | {
        "mlp_norm": ("post_attention_layernorm.weight", False),
        "q_bias": ("self_attn.q_proj.bias", False),
        "k_bias": ("self_attn.k_proj.bias", False),
        "v_bias": ("self_attn.v_proj.bias", False),
    },
}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_hf_names_of_existing_families_unchanged(name):
    assert layer_key_map(PRESETS[name]) == BEFORE[name]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_views_agree(name):
    cfg = PRESETS[name]
    rows = layout.params(cfg)
    shapes = param_shapes(cfg)
    specs = param_specs(cfg, SimpleNamespace(shape={"data": 1, "model": 4}))
    flat = {("layers", p.key) if p.per_layer else (p.key,): p for p in rows}
    assert set(flat) == {(k,) for k in shapes if k != "layers"} | {
        ("layers", k) for k in shapes["layers"]
    }
    assert set(specs) == set(shapes) and set(specs["layers"]) == set(shapes["layers"])
    for path, p in flat.items():
        shape = shapes[path[0]] if len(path) == 1 else shapes["layers"][path[1]]
        spec = specs[path[0]] if len(path) == 1 else specs["layers"][path[1]]
        assert len(spec) in (0, len(shape)), (path, spec, shape)
        # stored tensors are our per-layer shape, reversed when transposed
        one = shape[1:] if p.per_layer else shape
        assert p.stored_shape(cfg) == (one[::-1] if p.transpose else one)
    for names in ([p.hf_name(0) for p in rows], [p.gguf_name(0) for p in rows]):
        assert len(set(names)) == len(names), names
    keys = set(shapes["layers"])
    assert ("q_norm" in keys) == ("k_norm" in keys) == (cfg.family in ("gemma3", "qwen3"))
    assert ("post_attn_norm" in keys) == cfg.family.startswith("gemma")


def test_qk_norm_shapes_and_head_dim():
    cfg = PRESETS["qwen3-0.6b"]  # head_dim 128 != d_model / n_heads = 64
    layers = param_shapes(cfg)["layers"]
    assert layers["q"] == (28, 1024, 16 * 128) and layers["o"] == (28, 16 * 128, 1024)
    assert layers["k"] == (28, 1024, 8 * 128) and layers["q_norm"] == (28, 128)
    with pytest.raises(KeyError, match="unknown logical axis 'heads'"):
        layout.axis_size(cfg, "heads")


def _gemma3_hf(**kw):
    return {
        "model_type": "gemma3_text",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 7,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 97,
    } | kw


def test_gemma3_config_variants():
    # legacy keys, default 5:1 pattern, rope_scaling on global layers only
    cfg = config_from_hf(
        _gemma3_hf(
            rope_theta=1e6,
            rope_local_base_freq=1e4,
            rope_scaling={"rope_type": "linear", "factor": 8.0},
            sliding_window=512,
        )
    )
    assert cfg.layer_is_sliding == (True,) * 5 + (False, True)
    assert (cfg.rope_theta, cfg.rope_local_theta, cfg.sliding_window) == (1e6, 1e4, 512)
    assert dict(cfg.rope_scaling) == {"rope_type": "linear", "factor": 8.0}
    assert cfg.query_pre_attn_scalar == 256 and cfg.final_softcap is None
    # sliding_window_pattern 2
    cfg = config_from_hf(_gemma3_hf(sliding_window_pattern=2))
    assert cfg.layer_is_sliding == (True, False) * 3 + (True,)
    # the multimodal config: text_config (with Gemma3TextConfig's defaults) + top-level tokens
    mm = {
        "model_type": "gemma3",
        "eos_token_id": [1, 106],
        "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
                        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                        "sliding_window": 1024},
    }  # fmt: skip
    cfg = config_from_hf(mm)
    assert (cfg.family, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (
        "gemma3", 34, 8, 4, 256,
    )  # fmt: skip
    assert cfg.eos_token_ids == (1, 106) and cfg.vocab_size == 262_208
    assert (cfg.rope_theta, cfg.rope_local_theta) == (1e6, 1e4)


@pytest.mark.parametrize(
    "hf, match",
    [
        (_gemma3_hf(use_bidirectional_attention=True), "use_bidirectional_attention"),
        (_gemma3_hf(attention_bias=True), "attention_bias"),
        (_gemma3_hf(attn_logit_softcapping=50.0), "attn_logit_softcapping"),
        (_gemma3_hf(hidden_activation="gelu"), "hidden_activation 'gelu'"),
        (_gemma3_hf(layer_types=["full_attention"] * 3), "layer_types has 3 entries"),
        (_gemma3_hf(layer_types=["chunked_attention"] * 7), "chunked_attention"),
        (
            _gemma3_hf(
                rope_parameters={
                    "sliding_attention": {"rope_type": "linear", "factor": 2.0},
                    "full_attention": {"rope_type": "default"},
                }
            ),
            "sliding layers",
        ),
        ({"model_type": "gemma3"}, "no text_config"),
        (_gemma3_hf(model_type="qwen3", attention_bias=True), "qwen3 option attention_bias"),
        (_gemma3_hf(model_type="qwen3", use_sliding_window=True), "use_sliding_window"),
    ],
)
def test_unsupported_gemma3_and_qwen3_options_are_named(hf, match):
    with pytest.raises(UnsupportedConfigError, match=match):
        config_from_hf(hf)
