"""Static model configuration: one frozen dataclass drives every supported family.

``ModelConfig`` is hashable, so it is safe as a ``jax.jit`` static argument. Presets for the
published sizes live in :data:`PRESETS`; :func:`config_from_hf` reads a Hugging Face
``config.json`` dict and refuses options it cannot honour.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from refusal_jax.core.errors import ConfigError

FAMILIES = ("gemma2", "gemma3", "llama", "qwen2", "qwen3")


class UnsupportedConfigError(ConfigError):
    """A checkpoint configuration asks for something this implementation does not do."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only chat model.

    Attributes mirror Hugging Face names where one exists. ``sliding_layers`` holds one bool per
    layer (True: that layer attends within ``sliding_window`` tokens only). The families differ
    only by these static switches:

    * ``norm_plus_one``: RMSNorm scales by (1 + w) (Gemma) instead of w (Llama/Qwen).
    * ``sandwich_norms``: extra norms after attention and after the MLP (Gemma 2 and 3).
    * ``qk_norm``: RMSNorm over each head's query and key (``head_dim``) before RoPE (Gemma 3,
      Qwen3), with the same ``norm_plus_one`` convention as the other norms.
    * ``rope_local_theta``: RoPE base of the sliding-window layers (Gemma 3's
      ``rope_local_base_freq``); those layers then use plain RoPE while ``rope_theta`` and
      ``rope_scaling`` apply to the global layers only. None: one RoPE for every layer.
    * ``attn_softcap`` / ``final_softcap``: tanh softcapping of scores / logits (Gemma 2).
    """

    family: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_mlp: int
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # Rope scaling as a sorted tuple of (key, value) pairs so the config stays hashable.
    rope_scaling: tuple[tuple[str, Any], ...] = ()
    tie_embeddings: bool = True
    qkv_bias: bool = False
    qk_norm: bool = False
    rope_local_theta: float | None = None
    # Gemma specifics.
    norm_plus_one: bool = False
    sandwich_norms: bool = False
    embed_scale: bool = False
    attn_softcap: float | None = None
    final_softcap: float | None = None
    query_pre_attn_scalar: float | None = None
    sliding_window: int | None = None
    sliding_layers: tuple[bool, ...] = ()
    activation: str = "silu"  # "silu" or "gelu_tanh"
    max_position_embeddings: int = 8192
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise UnsupportedConfigError(f"unknown model family {self.family!r}; known: {FAMILIES}")
        if self.n_heads % self.n_kv_heads:
            raise UnsupportedConfigError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )
        if self.activation not in ("silu", "gelu_tanh"):
            raise UnsupportedConfigError(f"unsupported activation {self.activation!r}")
        if self.sliding_layers and len(self.sliding_layers) != self.n_layers:
            raise UnsupportedConfigError(
                f"sliding_layers has {len(self.sliding_layers)} entries for {self.n_layers} layers"
            )
        if any(self.sliding_layers) and not self.sliding_window:
            raise UnsupportedConfigError("sliding layers given without a sliding_window")

    @property
    def attn_scale(self) -> float:
        base = self.query_pre_attn_scalar if self.query_pre_attn_scalar else self.head_dim
        return base**-0.5

    @property
    def embed_multiplier(self) -> float:
        return math.sqrt(self.d_model) if self.embed_scale else 1.0

    @property
    def layer_is_sliding(self) -> tuple[bool, ...]:
        return self.sliding_layers or (False,) * self.n_layers

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["rope_scaling"] = dict(self.rope_scaling)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["rope_scaling"] = tuple(sorted((d.get("rope_scaling") or {}).items()))
        d["sliding_layers"] = tuple(d.get("sliding_layers") or ())
        d["eos_token_ids"] = tuple(d.get("eos_token_ids") or ())
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UnsupportedConfigError(f"unknown ModelConfig fields: {sorted(unknown)}")
        return cls(**d)


SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_mlp")


def shape_kw(*sizes: int) -> dict:
    """The seven sizes that fix the parameter shapes, in :data:`SHAPE_FIELDS` order, as
    :class:`ModelConfig` keywords: ``ModelConfig(family=f, **shape_kw(V, D, L, H, KV, Dh, F))``."""
    if len(sizes) != len(SHAPE_FIELDS):
        raise TypeError(f"shape_kw takes {len(SHAPE_FIELDS)} sizes {SHAPE_FIELDS}, got {sizes}")
    return dict(zip(SHAPE_FIELDS, sizes))


def _family_config(family: str, defaults: dict, sliding_layers: tuple, /, **kw) -> ModelConfig:
    """``ModelConfig(family, **kw)`` over a family's ``defaults``; ``sliding_layers`` unless
    ``kw`` names its own."""
    return ModelConfig(family=family, **{**defaults, "sliding_layers": sliding_layers, **kw})


# The block design every Gemma generation shares (also what a Gemma GGUF file implies).
GEMMA_BLOCK = dict(
    norm_plus_one=True, sandwich_norms=True, embed_scale=True, activation="gelu_tanh"
)
_GEMMA_DEFAULTS = dict(
    **GEMMA_BLOCK, norm_eps=1e-6, tie_embeddings=True, bos_token_id=2, pad_token_id=0
)


def gemma2_config(*, n_layers: int, head_dim: int, **kw: Any) -> ModelConfig:
    """A Gemma-2 config with the family's fixed choices (softcaps, sandwich norms, ...).

    Pass the shape (``vocab_size, d_model, n_layers, n_heads, n_kv_heads, head_dim, d_mlp``)
    as keywords; any other :class:`ModelConfig` field given overrides the family default."""
    defaults = dict(
        **_GEMMA_DEFAULTS,
        rope_theta=10000.0,
        attn_softcap=50.0,
        final_softcap=30.0,
        query_pre_attn_scalar=head_dim,
        sliding_window=4096,
        eos_token_ids=(1, 107),
    )
    sliding = tuple(i % 2 == 0 for i in range(n_layers))
    return _family_config("gemma2", defaults, sliding, n_layers=n_layers, head_dim=head_dim, **kw)


def gemma3_sliding_layers(n_layers: int, pattern: int = 6) -> tuple[bool, ...]:
    """Gemma 3's interleaving: every ``pattern``-th layer is global, the others sliding."""
    return tuple(bool((i + 1) % pattern) for i in range(n_layers))


def gemma3_config(*, n_layers: int, head_dim: int, **kw: Any) -> ModelConfig:
    """A Gemma 3 (text) config with the family's fixed choices: q/k norms, sandwich norms,
    5 sliding layers per global one, local RoPE base 10k and global 1M, no softcapping.

    Keywords as for :func:`gemma2_config`."""
    defaults = dict(
        **_GEMMA_DEFAULTS,
        rope_theta=1_000_000.0,
        rope_local_theta=10_000.0,
        qk_norm=True,
        query_pre_attn_scalar=head_dim,
        sliding_window=512,
        max_position_embeddings=32768,
        eos_token_ids=(1, 106),
    )
    sliding = gemma3_sliding_layers(n_layers)
    return _family_config("gemma3", defaults, sliding, n_layers=n_layers, head_dim=head_dim, **kw)


_LLAMA31_ROPE = (
    ("factor", 8.0),
    ("high_freq_factor", 4.0),
    ("low_freq_factor", 1.0),
    ("original_max_position_embeddings", 8192),
    ("rope_type", "llama3"),
)

_QWEN_DEFAULTS = dict(norm_eps=1e-6, rope_theta=1000000.0, tie_embeddings=True)

# Shapes as shape_kw(vocab_size, d_model, n_layers, n_heads, n_kv_heads, head_dim, d_mlp).
PRESETS: dict[str, ModelConfig] = {
    "gemma2-2b": gemma2_config(
        **shape_kw(256000, 2304, 26, 8, 4, 256, 9216),
        query_pre_attn_scalar=256,
    ),
    "gemma2-9b": gemma2_config(
        **shape_kw(256000, 3584, 42, 16, 8, 256, 14336),
        query_pre_attn_scalar=256,
    ),
    "gemma2-27b": gemma2_config(
        **shape_kw(256000, 4608, 46, 32, 16, 128, 36864),
        query_pre_attn_scalar=144,
    ),
    "llama3.1-8b": ModelConfig(
        family="llama",
        **shape_kw(128256, 4096, 32, 32, 8, 128, 14336),
        norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=_LLAMA31_ROPE,
        tie_embeddings=False,
        max_position_embeddings=131072,
        bos_token_id=128000,
        eos_token_ids=(128001, 128008, 128009),
    ),
    "qwen2.5-1.5b": ModelConfig(
        family="qwen2",
        **shape_kw(151936, 1536, 28, 12, 2, 128, 8960),
        **_QWEN_DEFAULTS,
        qkv_bias=True,
        max_position_embeddings=32768,
        eos_token_ids=(151645, 151643),
    ),
    # google/gemma-3-270m (checked against its GGUF in tests/ports/test_gguf.py)
    "gemma3-270m": gemma3_config(
        **shape_kw(262144, 640, 18, 4, 1, 256, 2048),
    ),
    "qwen3-0.6b": ModelConfig(
        family="qwen3",
        **shape_kw(151936, 1024, 28, 16, 8, 128, 3072),
        **_QWEN_DEFAULTS,
        qk_norm=True,
        max_position_embeddings=40960,
        bos_token_id=151643,
        eos_token_ids=(151645,),
    ),
}

_HF_TYPES = {
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "gemma3": "gemma3",  # the multimodal config: its text_config is read
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
}


def _as_tuple(x) -> tuple[int, ...]:
    if x is None:
        return ()
    if isinstance(x, (list, tuple)):
        return tuple(int(i) for i in x)
    return (int(x),)


def _rope(params: dict, scaling: dict, theta) -> tuple[float, tuple]:
    """(theta, scaling pairs) from one RoPE parameter dict (new format) merged over a legacy
    ``rope_scaling`` dict; refuses the scaling types :func:`model.rope_inv_freq` lacks."""
    params = dict(params)
    theta = params.pop("rope_theta", theta)
    merged = {**scaling, **params}
    if "type" in merged and "rope_type" not in merged:
        merged["rope_type"] = merged.pop("type")
    merged.pop("type", None)
    rope_type = merged.get("rope_type", "default")
    if rope_type == "default":
        return float(theta), ()
    if rope_type not in ("llama3", "linear"):
        raise UnsupportedConfigError(
            f"unsupported rope scaling rope_type={rope_type!r} (supported: default, linear, llama3)"
        )
    return float(theta), tuple(sorted(merged.items()))


def _rope_from_hf(hf: dict, default_theta: float = 10000.0) -> tuple[float, tuple]:
    """Read rope theta and scaling from either ``rope_scaling`` or ``rope_parameters``."""
    return _rope(
        hf.get("rope_parameters") or {},
        dict(hf.get("rope_scaling") or {}),
        hf.get("rope_theta", default_theta),
    )


def _gemma3_rope(hf: dict) -> tuple[float, tuple, float]:
    """Gemma 3: (global theta, global scaling, local theta). Reads transformers' per-layer-type
    ``rope_parameters`` or the legacy ``rope_theta`` / ``rope_scaling`` (global layers only) /
    ``rope_local_base_freq``."""
    params = dict(hf.get("rope_parameters") or {})
    if params and not {"full_attention", "sliding_attention"} & set(params):
        params = {"full_attention": params}  # one dict: it describes the global layers
    theta, scaling = _rope(
        params.get("full_attention") or {},
        dict(hf.get("rope_scaling") or {}),
        hf.get("rope_theta", 1_000_000.0),
    )
    local_theta, local_scaling = _rope(
        params.get("sliding_attention") or {}, {}, hf.get("rope_local_base_freq", 10_000.0)
    )
    if local_scaling:
        raise UnsupportedConfigError(
            f"unsupported RoPE scaling on Gemma 3's sliding layers: {dict(local_scaling)}"
        )
    return theta, scaling, local_theta


def _sliding_from_layer_types(hf: dict, n_layers: int, default) -> tuple[bool, ...]:
    layer_types = hf.get("layer_types")
    if layer_types is None:
        return default
    if len(layer_types) != n_layers:
        raise UnsupportedConfigError(
            f"layer_types has {len(layer_types)} entries for num_hidden_layers={n_layers}"
        )
    unknown = set(layer_types) - {"sliding_attention", "full_attention"}
    if unknown:
        raise UnsupportedConfigError(
            f"config key layer_types has unsupported values {sorted(unknown)} "
            "(known: sliding_attention, full_attention)"
        )
    return tuple(t == "sliding_attention" for t in layer_types)


def _gelu_tanh(hf: dict, what: str) -> str:
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise UnsupportedConfigError(f"unsupported {what} hidden_activation {act!r}")
    return "gelu_tanh"


def _number(hf: dict, key: str, default):
    """``hf[key]`` if present (None allowed: the feature is off), else ``default``; a value that
    is not a positive finite number is an error naming the key."""
    v = hf.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise UnsupportedConfigError(f"config key {key}={v!r} is not a positive finite number")
    return float(v)


_REQUIRED = ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size",
             "intermediate_size")  # fmt: skip


def _check_fields(hf: dict) -> None:
    """Required keys present and positive integers; numeric options finite (names the key)."""
    for key in _REQUIRED:
        if key not in hf:
            raise UnsupportedConfigError(f"config has no {key!r}")
    for key in (*_REQUIRED, "num_key_value_heads", "head_dim", "max_position_embeddings"):
        v = hf.get(key)
        if key in _REQUIRED or v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UnsupportedConfigError(f"config key {key}={v!r} is not a positive integer")
    for key in ("rms_norm_eps", "rope_theta", "sliding_window", "query_pre_attn_scalar"):
        v = hf.get(key)
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0
        ):
            raise UnsupportedConfigError(f"config key {key}={v!r} is not a positive finite number")


def config_from_hf(hf: dict) -> ModelConfig:
    """Translate a Hugging Face ``config.json`` dict into a :class:`ModelConfig`.

    Raises :class:`UnsupportedConfigError` naming the field for unknown architectures or options
    that would otherwise give a silently different model. A multimodal Gemma 3 config
    (``model_type`` ``gemma3``) is read through its ``text_config``.
    """
    model_type = hf.get("model_type")
    if model_type not in _HF_TYPES:
        raise UnsupportedConfigError(
            f"unknown model_type {model_type!r}; supported: {sorted(_HF_TYPES)}"
        )
    if model_type == "gemma3":
        text = hf.get("text_config")
        if not isinstance(text, dict):
            raise UnsupportedConfigError("Gemma 3 config (model_type 'gemma3') has no text_config")
        # Released multimodal configs keep the special tokens and tying at the top level.
        top = {
            k: hf[k]
            for k in ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")
            if k in hf
        }
        return config_from_hf({**top, **text, "model_type": "gemma3_text"})
    if model_type == "gemma3_text":
        # transformers fills fields a config.json leaves out from Gemma3TextConfig's defaults
        hf = {**_GEMMA3_TEXT_DEFAULTS, **hf}
    _check_fields(hf)
    family = _HF_TYPES[model_type]
    default_theta = 1_000_000.0 if family == "gemma3" else 10000.0
    theta, rope_scaling = _rope_from_hf(hf, default_theta)
    d_model = hf["hidden_size"]
    n_heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or d_model // n_heads
    n_layers = hf["num_hidden_layers"]
    common = dict(
        vocab_size=hf["vocab_size"],
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=head_dim,
        d_mlp=hf["intermediate_size"],
        rope_theta=theta,
        rope_scaling=rope_scaling,
        max_position_embeddings=hf.get("max_position_embeddings", 8192),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=_as_tuple(hf.get("eos_token_id")),
        pad_token_id=hf.get("pad_token_id"),
    )
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedConfigError("unsupported partial_rotary_factor != 1.0")
    if family == "gemma2":
        sliding = _sliding_from_layer_types(
            hf, n_layers, tuple(i % 2 == 0 for i in range(n_layers))
        )
        return ModelConfig(
            family="gemma2",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_embeddings=hf.get("tie_word_embeddings", True),
            norm_plus_one=True,
            sandwich_norms=True,
            embed_scale=True,
            # transformers' Gemma2Config defaults (50 / 30) when the keys are absent; an explicit
            # null turns softcapping off, as in transformers.
            attn_softcap=_number(hf, "attn_logit_softcapping", 50.0),
            final_softcap=_number(hf, "final_logit_softcapping", 30.0),
            query_pre_attn_scalar=hf.get("query_pre_attn_scalar") or head_dim,
            sliding_window=hf.get("sliding_window", 4096) if any(sliding) else None,
            sliding_layers=sliding if any(sliding) else (),
            activation=_gelu_tanh(hf, "Gemma-2"),
            **common,
        )
    if family == "gemma3":
        for key in ("use_bidirectional_attention", "attention_bias", "attn_logit_softcapping"):
            # transformers ignores attn_logit_softcapping for Gemma 3; we refuse to guess.
            if hf.get(key):
                raise UnsupportedConfigError(f"unsupported Gemma 3 option {key}={hf[key]!r}")
        theta, rope_scaling, local_theta = _gemma3_rope(hf)
        pattern = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6
        sliding = _sliding_from_layer_types(hf, n_layers, gemma3_sliding_layers(n_layers, pattern))
        common.update(rope_theta=theta, rope_scaling=rope_scaling)
        return ModelConfig(
            family="gemma3",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_embeddings=hf.get("tie_word_embeddings", True),
            qk_norm=True,
            rope_local_theta=local_theta if any(sliding) else None,
            norm_plus_one=True,
            sandwich_norms=True,
            embed_scale=True,
            final_softcap=hf.get("final_logit_softcapping"),
            query_pre_attn_scalar=hf.get("query_pre_attn_scalar", 256),
            sliding_window=hf.get("sliding_window", 4096) if any(sliding) else None,
            sliding_layers=sliding if any(sliding) else (),
            activation=_gelu_tanh(hf, "Gemma 3"),
            **common,
        )
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedConfigError(f"unsupported hidden_act {act!r} for {model_type}")
    if family == "llama":
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise UnsupportedConfigError("unsupported llama option attention_bias/mlp_bias=True")
        return ModelConfig(
            family="llama",
            norm_eps=hf.get("rms_norm_eps", 1e-5),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            **common,
        )
    if hf.get("use_sliding_window"):
        raise UnsupportedConfigError(f"unsupported {model_type} option use_sliding_window=True")
    if family == "qwen3":
        if hf.get("attention_bias"):
            raise UnsupportedConfigError("unsupported qwen3 option attention_bias=True")
        return ModelConfig(
            family="qwen3",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            qk_norm=True,
            **common,
        )
    return ModelConfig(
        family="qwen2",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        qkv_bias=True,
        **common,
    )


# Gemma3TextConfig's defaults (transformers), for text_configs that leave fields out.
_GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
}
