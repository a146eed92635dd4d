"""Spreading models, SAEs and prompt batches over devices with JAX's own SPMD.

A :func:`make_mesh` has two axes: ``data`` (prompts are split over it: data parallel) and
``model`` (tensor parallel: attention heads, the MLP hidden dimension, the vocabulary and the SAE
width are split over it). Parameters get a :class:`~jax.sharding.NamedSharding` per leaf from
:func:`param_specs` / :func:`sae_specs`; every jitted function of the library (forward, generate,
LA-IG, SAE encode, clamps) then runs sharded without change - XLA inserts the collectives. Loading
can place each tensor on its shards as it is read (``ports.hf.load_hf(folder, mesh=mesh)``,
``refusal_jax.checkpoint.load_model(folder, mesh=mesh)``), so a model larger than one device
never sits whole on any device.

Multi-host (TPU pods, several GPU hosts): call :func:`initialize_multihost` first in every process;
``jax.devices()`` then lists the devices of all hosts and the same mesh code applies.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from refusal_jax.config import ModelConfig

DATA, MODEL = "data", "model"


def make_mesh(data: int | None = None, model: int = 1, devices=None) -> Mesh:
    """A (data, model) mesh over ``devices`` (default: all). ``data=None`` uses every device
    left after ``model``."""
    devices = list(jax.devices() if devices is None else devices)
    if model < 1 or len(devices) % model and data is None:
        raise ValueError(f"model={model} does not divide the {len(devices)} devices")
    data = len(devices) // model if data is None else data
    if data * model > len(devices):
        raise ValueError(
            f"mesh data={data} x model={model} needs {data * model} devices, "
            f"{len(devices)} available"
        )
    return Mesh(np.asarray(devices[: data * model]).reshape(data, model), (DATA, MODEL))


def _split(dim: int, mesh: Mesh, ok: bool = True):
    """MODEL if the model axis divides ``dim`` (and ``ok``), else None (replicated)."""
    n = mesh.shape[MODEL]
    return MODEL if n > 1 and ok and dim % n == 0 else None


def param_specs(cfg: ModelConfig, mesh: Mesh) -> dict:
    """PartitionSpecs for the parameter pytree (same nesting as ``model.param_shapes``).

    Attention is split by heads (q/k/v columns, o rows), the MLP by its hidden dimension
    (gate/up columns, down rows), the embedding and unembedding by vocabulary. A dimension the
    model axis does not divide (e.g. fewer KV heads than devices) stays replicated.
    """
    n = mesh.shape[MODEL]
    heads_ok = cfg.n_heads % n == 0
    kv_ok = cfg.n_kv_heads % n == 0
    qd, kd = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    q, kv = _split(qd, mesh, heads_ok), _split(kd, mesh, kv_ok)
    f = _split(cfg.d_mlp, mesh)
    layers = {
        "attn_norm": P(),
        "q": P(None, None, q),
        "k": P(None, None, kv),
        "v": P(None, None, kv),
        "o": P(None, q, None),
        "mlp_norm": P(),
        "gate": P(None, None, f),
        "up": P(None, None, f),
        "down": P(None, f, None),
    }
    if cfg.qkv_bias:
        layers.update(q_bias=P(None, q), k_bias=P(None, kv), v_bias=P(None, kv))
    if cfg.sandwich_norms:
        layers.update(post_attn_norm=P(), post_mlp_norm=P())
    vocab = _split(cfg.vocab_size, mesh)
    specs = {"embed": P(vocab, None), "final_norm": P(), "layers": layers}
    if not cfg.tie_embeddings:
        specs["lm_head"] = P(None, vocab)
    return specs


def param_shardings(cfg: ModelConfig, mesh: Mesh) -> dict:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(cfg, mesh), is_leaf=_is_spec)


def _is_spec(x) -> bool:
    return isinstance(x, P)


def shard_params(params: dict, cfg: ModelConfig, mesh: Mesh) -> dict:
    """Place a parameter pytree on the mesh (tensor parallel over ``model``, replicated over
    ``data``)."""
    return jax.device_put(params, param_shardings(cfg, mesh))


def sae_specs(saes, mesh: Mesh):
    """PartitionSpecs for an SAE pytree (stacked [L, ...] or single): split over its width."""
    d_sae = saes.W_dec.shape[-2]
    w = _split(d_sae, mesh)
    lead = (None,) * (saes.W_dec.ndim - 2)
    return saes.replace(
        W_enc=P(*lead, None, w),
        b_enc=P(*lead, w),
        W_dec=P(*lead, w, None),
        b_dec=P(*lead, None),
        threshold=P(*lead, w),
    )


def shard_saes(saes, mesh: Mesh):
    """Place SAEs on the mesh, split over the SAE width (``model`` axis)."""
    specs = sae_specs(saes, mesh)
    return jax.tree.map(lambda a, s: jax.device_put(a, NamedSharding(mesh, s)), saes, specs)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (prompt) axis over ``data``, the rest replicated."""
    return NamedSharding(mesh, P(DATA, *(None,) * (ndim - 1)))


def shard_batch(mesh: Mesh, *arrays):
    """Split arrays along their leading (prompt) axis over the ``data`` axis. The prompt count
    must be a multiple of the data-axis size (pad with :func:`refusal_jax.direction.batches`)."""
    n = mesh.shape[DATA]
    out = []
    for a in arrays:
        a = np.asarray(a)
        if a.shape[0] % n:
            raise ValueError(
                f"a batch of {a.shape[0]} prompts cannot be split over {n} data-parallel "
                f"devices: use a batch size that is a multiple of {n}"
            )
        out.append(jax.device_put(a, batch_sharding(mesh, a.ndim)))
    return out[0] if len(out) == 1 else tuple(out)


def initialize_multihost(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join a multi-host job (wraps ``jax.distributed.initialize``; on Cloud TPU and under SLURM
    or Open MPI the arguments are found automatically). Call once per process, before any other
    JAX call."""
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )


__all__ = [
    "DATA",
    "MODEL",
    "batch_sharding",
    "initialize_multihost",
    "make_mesh",
    "param_shardings",
    "param_specs",
    "sae_specs",
    "shard_batch",
    "shard_params",
    "shard_saes",
]
