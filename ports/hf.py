"""Hugging Face checkpoints <-> refusal_jax parameters, without torch.

``load_hf(folder)`` reads ``config.json`` and single or sharded safetensors (F32/F16/BF16) into
``(ModelConfig, params)``; ``save_hf`` writes a folder transformers can load; the CLI converts
once into an orbax checkpoint that :func:`ports.loading.load_model` restores fast::

    python -m ports.hf --hf-dir path/to/gemma-2-2b-it --out converted/gemma-2-2b-it --dtype bfloat16
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ports.convert import converter_args, save_converted
from ports.registry import resolve_model
from ports.safetensors_io import DTYPES, CheckpointError, read_header, save_file
from refusal_jax.core import layout
from refusal_jax.core.config import ModelConfig, UnsupportedConfigError, config_from_hf
from refusal_jax.core.errors import nonfinite_rows, run_cli
from refusal_jax.core.sharding import param_shardings


def layer_key_map(cfg: ModelConfig) -> dict[str, tuple[str, bool]]:
    """Our per-layer parameter names -> (HF name suffix under ``model.layers.{i}.``, stored
    transposed?), derived from :data:`refusal_jax.core.layout.TABLE`."""
    prefix = "model.layers.{i}."
    return {
        p.key: (p.hf.removeprefix(prefix), p.transpose) for p in layout.params(cfg) if p.per_layer
    }


# Where a checkpoint keeps the language model: plain causal LMs under "model.", the text part
# of a multimodal Gemma 3 (Gemma3ForConditionalGeneration) under "language_model.model." (as
# released and as transformers saves it) or "model.language_model.".
_PREFIXES = (
    ("model.", "lm_head."),
    ("language_model.model.", "language_model.lm_head."),
    ("model.language_model.", "lm_head."),
)
# Tensors of a multimodal checkpoint that the language model does not use.
_OTHER_TOWERS = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                 "model.multi_modal_projector.")  # fmt: skip


def _checkpoint_names(index) -> tuple[dict[str, str], bool]:
    """(our HF name prefix -> the checkpoint's, multimodal?) for the folder's tensor index."""
    for model_prefix, head_prefix in _PREFIXES:
        if model_prefix + "embed_tokens.weight" in index:
            mm = model_prefix != "model."
            return {"model.": model_prefix, "lm_head.": head_prefix}, mm
    raise CheckpointError(
        "checkpoint has no embedding table (looked for "
        + ", ".join(repr(m + "embed_tokens.weight") for m, _ in _PREFIXES)
        + ")"
    )


def _renamed(name: str, names: dict[str, str]) -> str:
    for ours, theirs in names.items():
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    return name


def _tensor_index(folder: Path) -> dict[str, Path]:
    """Tensor name -> file, from model.safetensors or model.safetensors.index.json."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / fname for name, fname in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.exists():
        raise CheckpointError(
            f"{folder}: no model.safetensors or model.safetensors.index.json found"
        )
    header, _ = read_header(single)
    return {name: single for name in header}


class _Reader:
    """Tensors of a folder's safetensors files, each opened as its own read-only memmap when it
    is used: dropping the array unmaps it, so pages read from disk leave the process with it."""

    def __init__(self, folder: Path):
        self.index = _tensor_index(folder)
        self.headers: dict[Path, tuple[dict, int]] = {}
        self.used: set[str] = set()

    def view(self, name: str, shape: tuple, transpose: bool) -> np.ndarray:
        """The stored tensor in our layout, memmapped (no bytes read yet)."""
        if name not in self.index:
            raise CheckpointError(f"missing tensor {name!r} in checkpoint")
        path = self.index[name]
        if path not in self.headers:
            if not path.exists():
                raise CheckpointError(f"shard {path.name} listed for {name!r} does not exist")
            self.headers[path] = read_header(path)
        header, start = self.headers[path]
        info = header.get(name)
        if info is None:
            raise CheckpointError(f"{path.name}: no tensor {name!r} (the index lists it there)")
        if info["dtype"] not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        dtype, (b, e) = DTYPES[info["dtype"]], info["data_offsets"]
        stored = tuple(int(n) for n in info["shape"])
        if e - b != dtype.itemsize * math.prod(stored):
            raise CheckpointError(f"{path}: tensor {name!r} has {e - b} bytes for shape {stored}")
        want = tuple(reversed(shape)) if transpose else tuple(shape)
        if stored != want:
            raise CheckpointError(f"tensor {name!r} has shape {stored}, the config implies {want}")
        size = path.stat().st_size
        if start + e > size:
            raise CheckpointError(
                f"{path}: truncated file: tensor {name!r} needs bytes up to {start + e}, the "
                f"file has {size}"
            )
        if e == b:
            arr = np.zeros(stored, dtype)
        else:
            arr = np.memmap(path, dtype=dtype, mode="r", offset=start + b, shape=stored)
        self.used.add(name)
        return arr.T if transpose else arr


def _host_slice(view: np.ndarray, idx, dtype) -> np.ndarray:
    """``view[idx]`` read from disk into a fresh host array of ``dtype`` (never a memmap)."""
    return np.array(view[idx], dtype=dtype, copy=True)


@functools.cache
def _zeros_fn(shape: tuple, dtype, sharding):
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


@functools.cache
def _set_layer_fn(sharding):
    """buf.at[i].set(x) updating ``buf`` in place (donated), output on ``sharding``."""
    return jax.jit(
        lambda buf, x, i: jax.lax.dynamic_update_index_in_dim(buf, x, i, 0),
        out_shardings=sharding,
        donate_argnums=0,
    )


def _place(views, stacked: bool, dtype, sharding) -> jax.Array:
    """One parameter from memmapped tensors (one per layer when ``stacked``) onto ``sharding``.

    Each device's slice is read from disk, converted and transferred on its own. A stacked
    parameter is built one layer at a time: an array of zeros is allocated on its shards, then
    each layer is placed on the matching per-layer sharding and written into it in place (a
    donated update), so the host holds at most one layer's slices besides what is on the
    devices."""
    if not stacked:
        (only,) = views
        return jax.make_array_from_callback(
            only.shape, sharding, lambda idx: _host_slice(only, idx, dtype)
        )
    shape = (len(views),) + tuple(views[0].shape)
    layer_sharding = _layer_sharding(sharding)
    buf = _zeros_fn(shape, np.dtype(dtype), sharding)()
    update = _set_layer_fn(sharding)
    for i in range(len(views)):
        view = views[i]
        views[i] = None  # drop the memmap with the layer
        x = jax.make_array_from_callback(
            view.shape, layer_sharding, lambda idx, v=view: _host_slice(v, idx, dtype)
        )
        buf = update(buf, x, np.int32(i))
        del x, view
    return buf


def _layer_sharding(sharding):
    """The sharding of one layer of a stacked parameter (its leading layer axis removed)."""
    if isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec)
        return NamedSharding(sharding.mesh, P(*spec[1:]))
    return sharding  # single device


def load_hf_params(folder, cfg: ModelConfig, dtype=jnp.float32, mesh=None) -> dict:
    """Read the safetensors of an HF folder into our parameter pytree.

    The files are memory-mapped and read one tensor (per layer) at a time, straight onto its
    device: peak host memory stays near the final parameters plus one layer's tensor (measured
    in experiments/benchmarks/RESULTS.md, "Loading"). With a ``mesh``
    (:func:`refusal_jax.core.sharding.make_mesh`) every tensor goes straight to its shards
    (:func:`refusal_jax.core.sharding.param_specs`): each device's slice is read and transferred
    on its own, so no device ever holds the whole model; on several hosts each process reads only
    its own devices' slices (every process calls this with the same mesh)."""
    folder = Path(folder)
    if mesh is None:
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        place = jax.tree.map(lambda _: one, layout.logical_axes(cfg), is_leaf=_is_axes)
    else:
        place = param_shardings(cfg, mesh)
    np_dtype = np.dtype(jnp.dtype(dtype))
    r = _Reader(folder)
    names, multimodal = _checkpoint_names(r.index)
    params: dict = {"layers": {}}
    for p in layout.params(cfg):
        sharding = (place["layers"] if p.per_layer else place)[p.key]
        shape = p.shape(cfg)[1:] if p.per_layer else p.shape(cfg)  # one tensor, our layout
        layers = range(cfg.n_layers) if p.per_layer else [None]
        views = [r.view(_renamed(p.hf_name(i), names), shape, p.transpose) for i in layers]
        (params["layers"] if p.per_layer else params)[p.key] = _place(
            views, p.per_layer, np_dtype, sharding
        )
        del views
    ignorable = ("rotary_emb.inv_freq", "lm_head.weight")
    unused = [
        n
        for n in r.index
        if n not in r.used
        and not n.endswith(ignorable)
        and not (multimodal and n.startswith(_OTHER_TOWERS))
    ]
    if unused:
        raise CheckpointError(
            f"checkpoint has {len(unused)} tensors the config does not use, e.g. {unused[:3]}"
        )
    for p in layout.params(cfg):  # finite weights, named by their checkpoint tensor
        bad = nonfinite_rows((params["layers"] if p.per_layer else params)[p.key], p.per_layer)
        if bad:
            name = _renamed(p.hf_name(bad[0] if p.per_layer else None), names)
            raise CheckpointError(f"{folder}: tensor {name!r} has NaN or infinite values")
    return params


def _is_axes(x) -> bool:
    return isinstance(x, tuple)


def read_hf_config(folder) -> tuple[ModelConfig, dict]:
    path = resolve_model(folder) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{folder}: no config.json")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnsupportedConfigError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(hf, dict):
        raise UnsupportedConfigError(f"{path}: expected a JSON object, got {type(hf).__name__}")
    try:
        return config_from_hf(hf), hf
    except UnsupportedConfigError as e:
        raise UnsupportedConfigError(f"{path}: {e}") from None


def load_hf(folder, dtype=jnp.float32, mesh=None) -> tuple[ModelConfig, dict]:
    """Load an HF folder: returns ``(cfg, params)`` in ``dtype`` (float32 or bfloat16); with a
    ``mesh``, sharded over it as it loads (see :func:`load_hf_params`; multi-host: every process
    calls it with the same mesh). ``folder`` may be a hub id (``google/gemma-2-2b-it``) found in
    the local Hugging Face cache (:func:`ports.registry.resolve_model`, offline)."""
    folder = resolve_model(folder)
    cfg, _ = read_hf_config(folder)
    return cfg, load_hf_params(folder, cfg, dtype, mesh)


def to_hf_tensors(params: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Our pytree -> HF tensor names and layouts (numpy)."""
    out = {}
    for p in layout.params(cfg):
        value = np.asarray(params["layers"][p.key] if p.per_layer else params[p.key])
        for i in range(cfg.n_layers) if p.per_layer else [None]:
            one = value[i] if p.per_layer else value
            out[p.hf_name(i)] = one.T if p.transpose else one
    return out


# family -> (HF model_type, architecture) written by :func:`hf_config_dict`
_HF_ARCHITECTURES = {
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
}


def hf_config_dict(cfg: ModelConfig) -> dict:
    """An HF ``config.json`` dict that round-trips through :func:`config_from_hf`."""
    d = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.d_mlp,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(cfg.eos_token_ids) or None,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": "float32",
    }
    if cfg.rope_scaling:
        d["rope_scaling"] = dict(cfg.rope_scaling)
    if cfg.family not in _HF_ARCHITECTURES:
        raise UnsupportedConfigError(f"no Hugging Face config known for family {cfg.family!r}")
    model_type, architecture = _HF_ARCHITECTURES[cfg.family]
    d.update(model_type=model_type, architectures=[architecture])
    if cfg.family in ("gemma2", "gemma3"):
        d.update(
            hidden_activation="gelu_pytorch_tanh",
            attn_logit_softcapping=cfg.attn_softcap,
            final_logit_softcapping=cfg.final_softcap,
            query_pre_attn_scalar=cfg.query_pre_attn_scalar,
            sliding_window=cfg.sliding_window,
            layer_types=[
                "sliding_attention" if s else "full_attention" for s in cfg.layer_is_sliding
            ],
        )
    else:
        d.update(hidden_act="silu")
    if cfg.family == "gemma3":
        d.update(
            rope_local_base_freq=cfg.rope_local_theta or cfg.rope_theta,
            attn_logit_softcapping=None,
            query_pre_attn_scalar=cfg.query_pre_attn_scalar or cfg.head_dim,
            use_bidirectional_attention=False,
        )
    if cfg.family in ("gemma3", "qwen3"):
        d.update(attention_bias=False)
    if cfg.family in ("qwen2", "qwen3"):
        d.update(use_sliding_window=False)
    return d


def save_hf(params: dict, cfg: ModelConfig, folder) -> None:
    """Write ``config.json`` and ``model.safetensors`` (float32) that transformers can load."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.asarray(v, np.float32) for k, v in to_hf_tensors(params, cfg).items()}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    tmp = folder / "config.json.tmp"
    tmp.write_text(json.dumps(hf_config_dict(cfg), indent=2))
    os.replace(tmp, folder / "config.json")


def main(argv=None) -> None:
    args = converter_args(__doc__, "--hf-dir", "HF folder with config.json + safetensors", argv)
    cfg, params = load_hf(args.hf_dir, dtype=jnp.dtype(args.dtype))
    save_converted(args, cfg, params, tokenizer_dir=args.hf_dir)


if __name__ == "__main__":
    sys.exit(run_cli(main))
