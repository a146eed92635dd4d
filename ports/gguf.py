"""GGUF files (llama.cpp) -> refusal_jax parameters, for Llama, Qwen2, Qwen3 and Gemma 3, without
torch.

``load_gguf(path)`` reads the metadata into a :class:`ModelConfig` (with
:mod:`ports.gguf_reader`: 0.6 s for Gemma-3-270M's file, where ``gguf.GGUFReader`` takes 27 s
over its 262k-token vocabulary), dequantizes every tensor with the ``gguf`` package (F32/F16/BF16
and the Q* / K-quant block formats) and lays it out as
:func:`ports.hf.load_hf` would; tensor names come from the layout table
(:data:`refusal_jax.core.layout.TABLE`). What differs from a Hugging Face checkpoint:

* llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` (weights and biases) of
  ``llama`` models so that its rope can rotate adjacent pairs; we undo it. ``qwen2``, ``qwen3``
  and ``gemma3`` files are written unpermuted (llama.cpp runs them with NEOX-style rope, the same
  rotate-half as ours).
* Llama-3.1-style rope scaling is stored as a ``rope_freqs`` tensor of per-frequency divisors;
  we accept it when it matches the ``llama3`` rule and refuse it otherwise.
* Gemma's RMSNorm weights (all of them, the per-head q/k norms included) are stored with the 1 of
  its (1 + w) added by the converter; we subtract it, as transformers' GGUF loader does.
* A ``gemma3`` file does not record what llama.cpp hard-codes for the architecture: every 6th
  layer global and the others sliding, RoPE base 10000 on sliding layers, attention scale
  1/sqrt(head_dim) (1/sqrt(d_model / n_heads) for the 62-layer 27B); we apply the same rules.

The CLI converts once into an orbax checkpoint (plus the tokenizer, when transformers can build
one from the file)::

    python -m ports.gguf --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out converted/smollm2
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from ports.convert import converter_args, save_converted
from ports.gguf_reader import GGUFFile
from ports.safetensors_io import CheckpointError
from refusal_jax.core import layout
from refusal_jax.core.config import (
    GEMMA_BLOCK,
    ModelConfig,
    UnsupportedConfigError,
    gemma3_sliding_layers,
)
from refusal_jax.core.errors import check_finite_tree, run_cli
from refusal_jax.core.model import rope_inv_freq

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3")
# llama.cpp's fixed choices for gemma3 (src/llama-model.cpp, LLM_ARCH_GEMMA3)
GEMMA3_SLIDING_PATTERN = 6
GEMMA3_LOCAL_ROPE_THETA = 10000.0
GEMMA3_27B_LAYERS = 62
_ROPE_FREQS = "rope_freqs.weight"
_MISSING = object()


def _field(reader: GGUFFile, key: str, default=_MISSING) -> Any:
    """One metadata value (scalars as Python numbers, strings as str, arrays as lists)."""
    if key not in reader.fields:
        if default is _MISSING:
            raise CheckpointError(f"GGUF metadata has no {key!r}")
        return default
    value = reader.fields[key]
    return value.tolist() if isinstance(value, np.ndarray) else value


def _float32(value) -> float:
    """GGUF stores floats as float32: keep the shortest decimal that rounds to it (1e-05)."""
    return float(str(np.float32(value)))


def _scalar_int(reader, key: str, default=_MISSING) -> int | None:
    value = _field(reader, key, default)
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise UnsupportedConfigError(f"GGUF {key!r} varies per layer ({value}); unsupported")
        value = value[0]
    return None if value is None else int(value)


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's rope permutation of q/k rows (weights [rows, in] or biases [rows]).

    The converter turns each head's rotate-half layout (first half, second half) into interleaved
    pairs: rows are viewed as [heads, 2, Dh/2] and stored as [heads, Dh/2, 2].
    """
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise CheckpointError(f"cannot un-permute {rows} rows into {n_heads} heads of even size")
    tail = w.shape[1:]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *tail).swapaxes(1, 2).reshape(w.shape)


def permute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's permutation (the inverse of :func:`unpermute_rows`); for writing test files."""
    rows = w.shape[0]
    tail = w.shape[1:]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *tail).swapaxes(1, 2).reshape(w.shape)


def _rope_scaling(reader, arch: str, theta: float, head_dim: int, rope_freqs) -> tuple:
    """Rope scaling as in ModelConfig, from metadata or llama.cpp's ``rope_freqs`` tensor."""
    kind = _field(reader, f"{arch}.rope.scaling.type", "none")
    if kind not in ("none", "linear"):
        raise UnsupportedConfigError(f"unsupported GGUF rope scaling type {kind!r} (none, linear)")
    scaling: tuple = ()
    if kind == "linear":
        factor = float(_field(reader, f"{arch}.rope.scaling.factor"))
        scaling = (("factor", factor), ("rope_type", "linear"))
    if rope_freqs is None:
        return scaling
    if scaling:
        raise UnsupportedConfigError("GGUF has both linear rope scaling and a rope_freqs tensor")
    divisors = np.asarray(rope_freqs, np.float64).reshape(-1)
    if divisors.shape != (head_dim // 2,):
        raise CheckpointError(
            f"tensor {_ROPE_FREQS!r} has shape {divisors.shape}, expected ({head_dim // 2},)"
        )
    if np.allclose(divisors, 1.0):
        return ()
    # llama.cpp divides each rotary frequency by its entry; that is what Llama-3.1's rule yields.
    old_ctx = _field(reader, f"{arch}.rope.scaling.original_context_length", 8192)
    candidate = (
        ("factor", float(divisors.max())),
        ("high_freq_factor", 4.0),
        ("low_freq_factor", 1.0),
        ("original_max_position_embeddings", int(old_ctx)),
        ("rope_type", "llama3"),
    )
    probe = ModelConfig(
        family="llama",
        vocab_size=1,
        d_model=head_dim,
        n_layers=1,
        n_heads=1,
        n_kv_heads=1,
        head_dim=head_dim,
        d_mlp=1,
        rope_theta=theta,
        rope_scaling=candidate,
    )
    base = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if not np.allclose(rope_inv_freq(probe), base / divisors, rtol=1e-4, atol=0):
        raise UnsupportedConfigError(
            f"GGUF {_ROPE_FREQS!r} does not match llama3 rope scaling with {dict(candidate)}"
        )
    return candidate


def config_from_gguf(reader) -> ModelConfig:
    """A :class:`ModelConfig` from a GGUF file's metadata and tensor list."""
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedConfigError(
            f"GGUF architecture {arch!r} is not supported; supported: {SUPPORTED_ARCHITECTURES}"
        )
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise CheckpointError("GGUF file has no tensor 'token_embd.weight'")
    key = lambda name, default=_MISSING: _scalar_int(reader, f"{arch}.{name}", default)  # noqa: E731
    d_model = key("embedding_length")
    n_heads = key("attention.head_count")
    n_kv_heads = key("attention.head_count_kv", n_heads)
    head_dim = key("attention.key_length", d_model // n_heads)
    if key("attention.value_length", head_dim) != head_dim:
        raise UnsupportedConfigError("GGUF attention.value_length != key_length is unsupported")
    rope_dim = key("rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        raise UnsupportedConfigError(
            f"partial rotary embeddings (rope.dimension_count {rope_dim} != head_dim {head_dim})"
        )
    theta = _float32(_field(reader, f"{arch}.rope.freq_base", 10000.0))
    rope_freqs = None
    if _ROPE_FREQS in tensors:
        from gguf.quants import dequantize

        t = tensors[_ROPE_FREQS]
        rope_freqs = dequantize(t.data, t.tensor_type)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = key("vocab_size", len(tokens) if tokens is not None else None)
    if vocab is None:
        vocab = int(tensors["token_embd.weight"].shape[-1])
    eos = []
    for name in ("eos_token_id", "eot_token_id", "eom_token_id"):
        value = _scalar_int(reader, f"tokenizer.ggml.{name}", None)
        if value is not None and value not in eos:
            eos.append(value)
    has_bias = "blk.0.attn_q.bias" in tensors
    if arch == "qwen2" and not has_bias:
        raise CheckpointError("qwen2 GGUF file has no q/k/v biases (missing 'blk.0.attn_q.bias')")
    qk_norm = arch in ("qwen3", "gemma3")
    if qk_norm and "blk.0.attn_q_norm.weight" not in tensors:
        raise CheckpointError(f"{arch} GGUF file has no q/k norms ('blk.0.attn_q_norm.weight')")
    n_layers = key("block_count")
    family: dict = {}
    if arch == "gemma3":
        sliding = gemma3_sliding_layers(n_layers, GEMMA3_SLIDING_PATTERN)
        family = dict(
            **GEMMA_BLOCK,
            rope_local_theta=GEMMA3_LOCAL_ROPE_THETA if any(sliding) else None,
            query_pre_attn_scalar=(
                d_model // n_heads if n_layers == GEMMA3_27B_LAYERS else head_dim
            ),
            sliding_window=key("attention.sliding_window") if any(sliding) else None,
            sliding_layers=sliding if any(sliding) else (),
        )
    default_eps = 1e-5 if arch == "llama" else 1e-6
    return ModelConfig(
        family=arch,
        qk_norm=qk_norm,
        **family,
        vocab_size=vocab,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        d_mlp=key("feed_forward_length"),
        norm_eps=_float32(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", default_eps)),
        rope_theta=theta,
        rope_scaling=_rope_scaling(reader, arch, theta, head_dim, rope_freqs),
        tie_embeddings="output.weight" not in tensors,
        qkv_bias=has_bias,
        max_position_embeddings=key("context_length", 8192),
        bos_token_id=_scalar_int(reader, "tokenizer.ggml.bos_token_id", None),
        eos_token_ids=tuple(eos),
        pad_token_id=_scalar_int(reader, "tokenizer.ggml.padding_token_id", None),
    )


class _Tensors:
    """Dequantizes GGUF tensors on request, checks shapes and records which were used."""

    def __init__(self, reader):
        self.by_name = {t.name: t for t in reader.tensors}
        self.used: set[str] = set()

    def get(
        self, name: str, shape: tuple, transpose: bool, dtype, unpermute_heads=None, offset=0.0
    ):
        """Tensor ``name`` in our layout (``shape``), un-permuted over ``unpermute_heads`` heads,
        minus ``offset`` (in float32, before the cast to ``dtype``)."""
        from gguf.quants import dequantize

        if name not in self.by_name:
            raise CheckpointError(f"missing tensor {name!r} in GGUF file")
        t = self.by_name[name]
        try:
            arr = dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise CheckpointError(f"tensor {name!r}: {e}") from e
        want = tuple(reversed(shape)) if transpose else tuple(shape)
        if tuple(arr.shape) != want:
            raise CheckpointError(
                f"tensor {name!r} has shape {tuple(arr.shape)} ([out, in] order; GGUF dims "
                f"{tuple(int(d) for d in t.shape)}), the config implies {want}"
            )
        if unpermute_heads:
            arr = unpermute_rows(arr, unpermute_heads)
        if offset:
            arr = np.asarray(arr, np.float32) - np.float32(offset)
        if transpose:
            arr = arr.T
        self.used.add(name)
        return np.asarray(arr, dtype=dtype)


def load_gguf_params(reader, cfg: ModelConfig, dtype=jnp.float32) -> dict:
    """Dequantize a GGUF file's tensors into our parameter pytree."""
    np_dtype = np.dtype(jnp.dtype(dtype))
    r = _Tensors(reader)
    permuted = cfg.family == "llama"
    params: dict = {"layers": {}}
    for p in layout.params(cfg):
        shape = p.shape(cfg)[1:] if p.per_layer else p.shape(cfg)  # one tensor, our layout
        # rows of q/k (their output axis) are permuted per head in llama files
        heads = layout.axis_size(cfg, p.axes[-1]) // cfg.head_dim if permuted and p.rotary else None
        offset = 1.0 if p.kind == "norm" and cfg.norm_plus_one else 0.0
        arrays = [
            r.get(p.gguf_name(i), shape, p.transpose, np_dtype, heads, offset)
            for i in (range(cfg.n_layers) if p.per_layer else [None])
        ]
        value = jnp.asarray(np.stack(arrays) if p.per_layer else arrays[0])
        (params["layers"] if p.per_layer else params)[p.key] = value
    unused = [n for n in r.by_name if n not in r.used and n != _ROPE_FREQS]
    if unused:
        raise CheckpointError(
            f"GGUF file has {len(unused)} tensors the config does not use, e.g. {unused[:3]}"
        )
    return params


def load_gguf(path, dtype=jnp.float32) -> tuple[ModelConfig, dict]:
    """Load a GGUF file: returns ``(cfg, params)`` in ``dtype`` (float32 or bfloat16)."""
    reader = GGUFFile(path)  # a malformed or truncated file: CheckpointError naming it
    cfg = config_from_gguf(reader)
    params = load_gguf_params(reader, cfg, dtype)
    check_finite_tree(params, str(path))
    return cfg, params


def save_tokenizer(path, out) -> str | None:
    """Save the tokenizer transformers builds from the GGUF metadata into ``out``.

    Returns None on success, or the reason it could not be built.
    """
    path = Path(path)
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        tok.save_pretrained(str(out))
    except Exception as e:  # transformers raises many types here; report, don't crash.
        return f"{type(e).__name__}: {e}"
    return None


def main(argv=None) -> None:
    args = converter_args(__doc__, "--gguf", "a llama/qwen2/qwen3/gemma3 .gguf file", argv)
    cfg, params = load_gguf(args.gguf, dtype=jnp.dtype(args.dtype))
    save_converted(args, cfg, params)
    problem = save_tokenizer(args.gguf, args.out)
    if problem is None:
        print(f"tokenizer built by transformers from the GGUF metadata saved to {args.out}")
    else:
        print(f"no tokenizer saved: transformers could not build one from {args.gguf} ({problem})")


if __name__ == "__main__":
    sys.exit(run_cli(main))
