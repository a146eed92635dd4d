"""Spreading models, SAEs and prompt batches over devices with JAX's own SPMD.

A :func:`make_mesh` has two axes: ``data`` (prompts are split over it: data parallel) and
``model`` (tensor parallel: attention heads, the MLP hidden dimension, the vocabulary and the SAE
width are split over it). Parameters get a :class:`~jax.sharding.NamedSharding` per leaf from
:func:`param_specs` / :func:`sae_specs`; every jitted function of the library (forward, generate,
LA-IG, SAE encode, clamps) then runs sharded without change - XLA inserts the collectives. Loading
can place each tensor on its shards as it is read (``ports.hf.load_hf(folder, mesh=mesh)``,
``ports.loading.load_model(folder, mesh=mesh)``), so a model larger than one device
never sits whole on any device.

Multi-host (TPU pods, several GPU hosts): call :func:`initialize_multihost` first in every process;
``jax.devices()`` then lists the devices of all hosts, the same mesh code applies, every process
passes the same (global) numpy inputs to :func:`shard_batch` / :func:`put` and reads results back
with :func:`to_host`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike, DTypeLike

from refusal_jax.core import layout
from refusal_jax.core.config import ModelConfig

_T = TypeVar("_T")

DATA, MODEL = "data", "model"


def make_mesh(
    data: int | None = None, model: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A (data, model) mesh over ``devices`` (default: all devices of all processes).

    ``data=None`` uses every device left after ``model``. Devices are ordered by process, so a
    ``model`` axis that divides the devices per host keeps tensor parallelism (the chattiest
    axis) inside one host; on TPU the order follows the physical topology
    (``mesh_utils.create_device_mesh``)."""
    devices = list(jax.devices() if devices is None else devices)
    if not isinstance(model, int) or model < 1:
        raise ValueError(f"model must be a positive int, got {model!r}")
    if data is None:
        if len(devices) % model:
            raise ValueError(f"model={model} does not divide the {len(devices)} devices")
        data = len(devices) // model
    if not isinstance(data, int) or data < 1:
        raise ValueError(f"data must be a positive int, got {data!r}")
    if data * model > len(devices):
        raise ValueError(
            f"mesh data={data} x model={model} needs {data * model} devices, "
            f"{len(devices)} available"
        )
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))[: data * model]
    grid = None
    if devices[0].platform == "tpu" and data * model == jax.device_count():
        from jax.experimental import mesh_utils

        with contextlib.suppress(Exception):  # fall back to the plain order below
            grid = mesh_utils.create_device_mesh((data, model), devices)
    if grid is None:
        grid = np.asarray(devices, dtype=object).reshape(data, model)
    return Mesh(grid, (DATA, MODEL))


def _split(dim: int, mesh: Mesh, ok: bool = True):
    """MODEL if the model axis divides ``dim`` (and ``ok``), else None (replicated)."""
    n = mesh.shape[MODEL]
    return MODEL if n > 1 and ok and dim % n == 0 else None


def logical_to_mesh(cfg: ModelConfig, mesh: Mesh) -> dict[str, str | None]:
    """Where each logical axis of :mod:`refusal_jax.core.layout` goes on ``mesh``: MODEL or
    None (replicated). Attention is split by whole heads, the MLP by its hidden dimension, the
    (un)embedding by vocabulary; a size the model axis does not divide stays replicated."""
    n = mesh.shape[MODEL]
    return {
        layout.VOCAB: _split(cfg.vocab_size, mesh),
        layout.EMBED: None,
        layout.Q_HEADS: _split(cfg.n_heads * cfg.head_dim, mesh, cfg.n_heads % n == 0),
        layout.KV_HEADS: _split(cfg.n_kv_heads * cfg.head_dim, mesh, cfg.n_kv_heads % n == 0),
        layout.HEAD_DIM: None,
        layout.MLP: _split(cfg.d_mlp, mesh),
    }


# Logical axes that are never split: a parameter made only of these is replicated, P().
_NEVER_SPLIT = (layout.EMBED, layout.HEAD_DIM)


def param_specs(cfg: ModelConfig, mesh: Mesh) -> dict:
    """PartitionSpecs for the parameter pytree (same nesting as ``model.param_shapes``), from
    each parameter's logical axes in :data:`refusal_jax.core.layout.TABLE` mapped through
    :func:`logical_to_mesh`.

    Attention is split by heads (q/k/v columns, o rows, q/k/v biases), the MLP by its hidden
    dimension (gate/up columns, down rows), the embedding and unembedding by vocabulary. A
    dimension the model axis does not divide (e.g. fewer KV heads than devices) stays replicated.
    Norms (also the per-head q/k norms) are replicated; nothing is split over ``data``.
    """
    to_mesh = logical_to_mesh(cfg, mesh)

    def spec(axes):
        named = [a for a in axes if a is not None]
        if all(a in _NEVER_SPLIT for a in named):
            return P()
        return P(*(None if a is None else to_mesh[a] for a in axes))

    return jax.tree.map(spec, layout.logical_axes(cfg), is_leaf=lambda x: isinstance(x, tuple))


def _is_spec(x) -> bool:
    return isinstance(x, P)


def param_shardings(cfg: ModelConfig, mesh: Mesh) -> dict:
    """:func:`param_specs` as NamedShardings on ``mesh``."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(cfg, mesh), is_leaf=_is_spec)


def put(x: ArrayLike, sharding: NamedSharding) -> jax.Array:
    """Place one array on ``sharding``. A host (numpy) array is cut on the host and each device
    receives only its slice (also across hosts: every process passes the same global array);
    a ``jax.Array`` is resharded. Any shape; the result has the shape of ``x``."""
    if isinstance(x, jax.Array):
        return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def shard_params(params: dict, cfg: ModelConfig, mesh: Mesh) -> dict:
    """Place a parameter pytree on the mesh (tensor parallel over ``model``, replicated over
    ``data``). To avoid holding a large model whole on one device first, load it sharded
    instead (``load_hf(..., mesh=)`` / ``load_model(..., mesh=)``)."""
    return jax.tree.map(put, params, param_shardings(cfg, mesh))


def sae_specs(saes: object, mesh: Mesh) -> object:
    """PartitionSpecs for an SAE pytree (stacked [L, ...] or single): split over its width.
    Returns a pytree of ``PartitionSpec`` with the structure of ``saes`` (W_enc [..., d_in, S] and
    W_dec [..., S, d_in] split on their S axis)."""
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


def shard_saes(saes: _T, mesh: Mesh, dtype: DTypeLike | None = None) -> _T:
    """Place SAEs on the mesh, split over the SAE width (``model`` axis), optionally cast to
    ``dtype`` (e.g. bfloat16) on the host first."""
    if dtype is not None:
        saes = cast_floats(saes, dtype)
    specs = sae_specs(saes, mesh)
    return jax.tree.map(lambda a, s: put(a, NamedSharding(mesh, s)), saes, specs)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (prompt) axis over ``data``, the rest replicated."""
    return NamedSharding(mesh, P(DATA, *(None,) * (ndim - 1)))


def shard_batch(mesh: Mesh, *arrays: ArrayLike) -> jax.Array | tuple[jax.Array, ...]:
    """Split arrays along their leading (prompt) axis over the ``data`` axis. The prompt count
    must be a multiple of the data-axis size (pad with :func:`refusal_jax.core.batching.batches`).
    Each array is [B, ...] (e.g. ids [B, T] int, mask [B, T]); returns them in order as
    ``jax.Array`` split on B (one array when one is passed). Multi-host: every process passes
    the same global arrays."""
    n = mesh.shape[DATA]
    out = []
    for a in arrays:
        a = np.asarray(a)
        if a.ndim == 0 or a.shape[0] % n:
            raise ValueError(
                f"a batch of shape {a.shape} cannot be split over {n} data-parallel devices: "
                f"use a prompt count that is a multiple of {n}"
            )
        out.append(put(a, batch_sharding(mesh, a.ndim)))
    return out[0] if len(out) == 1 else tuple(out)


def to_host(tree: object) -> object:
    """Numpy copies of every array in ``tree``, also of arrays spread over several hosts
    (gathered from all processes; every process gets the whole array)."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


def cast_floats(tree: _T, dtype: DTypeLike) -> _T:
    """Cast the floating-point arrays of a pytree to ``dtype`` (integers and static fields
    untouched). For bfloat16 compute: the model keeps logits, softmax, the LA-IG metric and
    attribution sums in float32 whatever the parameter dtype."""

    def one(x):
        dt = getattr(x, "dtype", None)
        return x.astype(dtype) if dt is not None and jnp.issubdtype(dt, jnp.floating) else x

    return jax.tree.map(one, tree)


@contextlib.contextmanager
def host_device() -> Iterator[None]:
    """Create arrays in host memory (JAX's CPU device) inside this block, e.g. SAEs that are
    sharded over accelerators afterwards. A no-op when no CPU backend is available."""
    try:
        cpu = jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        cpu = None
    if cpu is None:
        yield
    else:
        with jax.default_device(cpu):
            yield


def is_primary() -> bool:
    """True in the process that writes files (process 0; always True on one host)."""
    return jax.process_index() == 0


def initialize_multihost(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> None:
    """Join a multi-host job (wraps ``jax.distributed.initialize``; on Cloud TPU and under SLURM
    or Open MPI the arguments are found automatically). Call once per process, before any other
    JAX call. CPU processes use gloo collectives (tested here with 2 processes x 4 devices)."""
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )


__all__ = [
    "DATA",
    "MODEL",
    "batch_sharding",
    "cast_floats",
    "host_device",
    "initialize_multihost",
    "is_primary",
    "logical_to_mesh",
    "make_mesh",
    "param_shardings",
    "param_specs",
    "put",
    "sae_specs",
    "shard_batch",
    "shard_params",
    "shard_saes",
    "to_host",
]
