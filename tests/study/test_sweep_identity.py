"""Sweep identity: the key covers every byte of the model (an interior change reuses no shard),
--force recomputes everything, and a damaged, truncated or foreign shard is named and recomputed."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from refusal_jax.core.config import gemma2_config
from refusal_jax.core.model import init_params
from refusal_jax.study.sweep import SweepConfig, fingerprint, run_sweep

CFG = gemma2_config(
    vocab_size=64, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, d_mlp=64,
    sliding_window=6, eos_token_ids=(1,),
)  # fmt: skip
SC = SweepConfig(kind="generate", shard_size=2, max_new_tokens=3)
IDS = np.arange(3, 3 + 7 * 5, dtype=np.int32).reshape(7, 5) % 64
MASK = np.ones_like(IDS)


def _fn(scale):
    """A stand-in shard computation (no compile): tokens = ids * scale."""
    return lambda ids, mask: {"tokens": ids[:, :3] * scale, "lengths": mask.sum(1)}


def _run(out, params, scale=1, **kw):
    return run_sweep(params, CFG, IDS, MASK, out, SC, shard_fn=_fn(scale), progress=False, **kw)


def _interior(params):
    """params with one value in the middle of its largest array changed (corner blocks equal)."""
    leaves, treedef = jax.tree.flatten(params)
    i = int(np.argmax([np.size(x) for x in leaves]))
    w = np.array(leaves[i])
    w[tuple(s // 2 for s in w.shape)] += 1e-3
    return jax.tree.unflatten(treedef, [*leaves[:i], w, *leaves[i + 1 :]])


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.PRNGKey(0), scale=0.3)


def test_interior_model_change_is_refused_or_forced(params, tmp_path):
    assert _run(tmp_path, params)["done"]
    other = _interior(params)
    assert fingerprint(other) != fingerprint(params)
    with pytest.raises(ValueError, match="holds a sweep of other inputs"):
        _run(tmp_path, other, scale=2)
    res = _run(tmp_path, other, scale=2, force=True)
    assert res["computed"] == [0, 1, 2, 3]  # nothing reused
    np.testing.assert_array_equal(res["results"]["tokens"], IDS[:, :3] * 2)
    # an interrupted forced run: the old model's shards are never taken for the new one's
    res = _run(tmp_path, params, force=True, max_new_shards=1)
    assert res["computed"] == [0]
    with pytest.warns(UserWarning, match="generate-00001.safetensors: damaged.*other inputs"):
        res = _run(tmp_path, params)
    assert res["computed"] == [1, 2, 3]
    np.testing.assert_array_equal(res["results"]["tokens"], IDS[:, :3])


def test_damaged_shards_are_named_and_recomputed(params, tmp_path):
    ref = _run(tmp_path / "ref", params)["results"]
    out = tmp_path / "s"
    _run(out, params)
    shard = out / "shards" / "generate-00001.safetensors"
    raw = shard.read_bytes()
    shard.write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.warns(UserWarning, match=r"generate-00001.safetensors: damaged.*unreadable"):
        res = _run(out, params)
    assert res["computed"] == [1]
    b = bytearray(raw)
    b[-3] ^= 0x10  # one flipped bit in the tensor data
    shard.write_bytes(bytes(b))
    with pytest.warns(UserWarning, match=r"generate-00001.safetensors: damaged.*checksum"):
        res = _run(out, params)
    assert res["computed"] == [1]
    for k in ref:
        np.testing.assert_array_equal(res["results"][k], ref[k])
