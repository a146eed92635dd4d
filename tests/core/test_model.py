"""Model core behaviour without torch: patches, KV-cache generation vs a cache-free reference,
checkpoint round trips and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from ports.hf import load_hf, save_hf
from ports.loading import load_model
from ports.safetensors_io import CheckpointError, load_file, save_file
from refusal_jax.core.config import UnsupportedConfigError, config_from_hf
from refusal_jax.core.model import forward, generate
from refusal_jax.core.patches import AddVector, add_at_layers
from tests.support.tiny import TINY4

CFG = TINY4


def _batch(seed=0, b=3, t=10, pads=(0, 3, 6)):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, CFG.vocab_size, size=(b, t))
    mask = np.ones_like(ids)
    for row, n in enumerate(pads):
        ids[row, :n], mask[row, :n] = 0, 0
    return jnp.asarray(ids), jnp.asarray(mask)


def _reference_greedy(params, ids, mask, n, patch_fn):
    """Cache-free greedy decoding: at every step a full forward over the whole sequence so far.

    The sequence stays right-aligned in one left-padded [B, T + n] buffer (shifted left by one
    token per step), so the forward compiles once; ``patch_fn(limit)`` gets the slot where the
    prompt ends in that step's buffer."""
    ids, mask = np.asarray(ids), np.asarray(mask)
    b, t = ids.shape
    w = t + n
    buf, buf_mask = np.zeros((b, w), ids.dtype), np.zeros((b, w), mask.dtype)
    buf[:, n:], buf_mask[:, n:] = ids, mask
    out = []
    for i in range(n):  # prompt in slots [n - i, w - i), i generated tokens after it
        logits = forward(
            params, CFG, jnp.asarray(buf), jnp.asarray(buf_mask), patch=patch_fn(w - i)
        ).logits
        nxt = np.asarray(jnp.argmax(logits[:, -1], -1))
        out.append(nxt)
        buf = np.concatenate([buf[:, 1:], nxt[:, None].astype(buf.dtype)], 1)
        buf_mask = np.concatenate([buf_mask[:, 1:], np.ones((b, 1), buf_mask.dtype)], 1)
    return np.stack(out, 1)


@struct.dataclass
class _AddBeforeSlot:
    """Reference for prompt-only patching in a cache-free forward: add v at slots < limit."""

    inner: AddVector
    limit: jax.Array  # traced, so that a new limit does not recompile

    def __call__(self, x, layer, ctx):
        slots = jnp.arange(x.shape[1])[None, :, None]
        return jnp.where(slots < self.limit, self.inner(x, layer, ctx), x)


@pytest.mark.parametrize("prompt_only", [False, True])
def test_kv_cache_generation_matches_cache_free_reference(tiny4_params, prompt_only):
    ids, mask = _batch(seed=5)
    v = 2.0 * jax.random.normal(jax.random.PRNGKey(3), (CFG.d_model,))
    steer = add_at_layers(v, [1, 2], CFG.n_layers)
    n = 12  # prompt 10 + 12 new > sliding window 6: the window applies in the cache too
    got = generate(
        tiny4_params,
        CFG,
        ids,
        mask,
        max_new_tokens=n,
        patch=steer,
        patch_prompt_only=prompt_only,
        eos_token_ids=(),
    )
    ref = _reference_greedy(
        tiny4_params,
        ids,
        mask,
        n,
        (lambda limit: _AddBeforeSlot(steer, jnp.int32(limit)))
        if prompt_only
        else (lambda limit: steer),
    )
    np.testing.assert_array_equal(np.asarray(got.tokens), ref)
    plain = generate(tiny4_params, CFG, ids, mask, max_new_tokens=n, eos_token_ids=())
    assert (np.asarray(plain.tokens) != ref).any(), "the patch should change the continuation"


def test_generation_stops_per_sequence(tiny4_params):
    ids, mask = _batch(seed=7)
    free = np.asarray(
        generate(tiny4_params, CFG, ids, mask, max_new_tokens=8, eos_token_ids=()).tokens
    )
    eos = int(free[1, 2])
    out = generate(
        tiny4_params, CFG, ids, mask, max_new_tokens=8, eos_token_ids=(eos,), pad_token_id=0
    )
    toks = np.asarray(out.tokens)
    for row in range(3):
        hits = np.flatnonzero(free[row] == eos)
        stop = hits[0] + 1 if len(hits) else 8
        np.testing.assert_array_equal(toks[row, :stop], free[row, :stop])
        assert (toks[row, stop:] == 0).all() and int(out.lengths[row]) == stop


def test_generation_lengths_in_one_bucket_share_a_program(tiny4_params):
    """max_new_tokens 3, 5 and 8 compile one program (8 slots) and agree on their common
    prefix; near the end of the context the slots shrink to what fits."""
    from refusal_jax.core.model import _generate, generation_capacity

    ids, mask = _batch(seed=7)
    run = lambda n, cfg=CFG: np.asarray(
        generate(tiny4_params, cfg, ids, mask, max_new_tokens=n, eos_token_ids=()).tokens
    )
    full = run(8)
    before = _generate._cache_size()
    for n in (3, 5):
        np.testing.assert_array_equal(run(n), full[:, :n])
    assert _generate._cache_size() == before
    assert [generation_capacity(n, 10, 4096) for n in (1, 8, 9, 24, 33)] == [8, 8, 16, 32, 64]
    assert generation_capacity(5, 10, 16) == 6 and generation_capacity(9, 10, 19) == 9
    tight = CFG.replace(max_position_embeddings=ids.shape[1] + 5)  # 5 slots, not 8
    np.testing.assert_array_equal(run(5, tight), full[:, :5])


def test_prompt_longer_than_context_is_refused(tiny4_params):
    ids, mask = _batch()
    small = CFG.replace(max_position_embeddings=16)
    with pytest.raises(ValueError, match="exceeds the model context"):
        generate(tiny4_params, small, ids, mask, max_new_tokens=10)


def test_hf_folder_and_orbax_round_trip(tiny4_params, tmp_path):
    save_hf(tiny4_params, CFG, tmp_path / "hf")
    cfg2, p2 = load_hf(tmp_path / "hf")
    assert cfg2 == CFG
    from ports.hf import main as convert

    convert(["--hf-dir", str(tmp_path / "hf"), "--out", str(tmp_path / "conv")])
    cfg3, p3 = load_model(tmp_path / "conv")
    assert cfg3 == CFG
    ids, mask = _batch()
    ref = forward(tiny4_params, CFG, ids, mask).logits
    for p in (p2, p3):
        np.testing.assert_array_equal(
            np.asarray(forward(p, CFG, ids, mask).logits), np.asarray(ref)
        )


def test_bfloat16_checkpoint_loads(tiny4_params, tmp_path):
    import ml_dtypes

    save_hf(tiny4_params, CFG, tmp_path)
    tensors = {
        k: np.asarray(v).astype(ml_dtypes.bfloat16)
        for k, v in load_file(tmp_path / "model.safetensors").items()
    }
    save_file(tensors, tmp_path / "model.safetensors")
    _, p = load_hf(tmp_path, dtype=jnp.bfloat16)
    assert p["embed"].dtype == jnp.bfloat16
    _, p32 = load_hf(tmp_path, dtype=jnp.float32)
    np.testing.assert_array_equal(
        np.asarray(p32["embed"]),
        np.asarray(tiny4_params["embed"]).astype(ml_dtypes.bfloat16).astype(np.float32),
    )


def test_sharded_checkpoint_loads(tiny4_params, tmp_path):
    save_hf(tiny4_params, CFG, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    shards = {
        "model-00001-of-00002.safetensors": names[:half],
        "model-00002-of-00002.safetensors": names[half:],
    }
    for fname, keys in shards.items():
        save_file({k: np.asarray(tensors[k]) for k in keys}, tmp_path / fname)
    (tmp_path / "model.safetensors").unlink()
    index = {"weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    _, p = load_hf(tmp_path)
    np.testing.assert_array_equal(
        np.asarray(p["layers"]["q"]), np.asarray(tiny4_params["layers"]["q"])
    )


def test_loading_leaves_no_file_mapped_and_copies_every_array(tiny4_params, tmp_path):
    """load_hf reads through per-tensor memmaps that it drops: afterwards no safetensors file of
    the folder is still mapped (its pages would count in the process's memory), and the
    parameters own their memory (editing the file on disk does not change them)."""
    import gc

    save_hf(tiny4_params, CFG, tmp_path)
    _, p = load_hf(tmp_path)
    gc.collect()
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(tmp_path / "model.safetensors") not in maps.read_text()
    blob = bytearray((tmp_path / "model.safetensors").read_bytes())
    blob[-4096:] = bytes(4096)
    (tmp_path / "model.safetensors").write_bytes(bytes(blob))
    for name in ("embed", "final_norm"):
        np.testing.assert_array_equal(np.asarray(p[name]), np.asarray(tiny4_params[name]))
    for name, value in p["layers"].items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(tiny4_params["layers"][name]))


def test_clear_errors_for_bad_checkpoints(tiny4_params, tmp_path):
    save_hf(tiny4_params, CFG, tmp_path)
    tensors = {k: np.asarray(v) for k, v in load_file(tmp_path / "model.safetensors").items()}
    bad = dict(tensors)
    bad["model.layers.1.self_attn.k_proj.weight"] = np.zeros((8, 32), np.float32)
    save_file(bad, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"k_proj.*\(8, 32\).*\(16, 32\)"):
        load_hf(tmp_path)
    missing = dict(tensors)
    del missing["model.layers.3.mlp.down_proj.weight"]
    save_file(missing, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing tensor 'model.layers.3.mlp.down_proj"):
        load_hf(tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    with pytest.raises(UnsupportedConfigError, match="unknown model_type 'mistral'"):
        config_from_hf(hf | {"model_type": "mistral"})
    with pytest.raises(UnsupportedConfigError, match="rope_type='yarn'"):
        config_from_hf(hf | {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(UnsupportedConfigError, match="use_sliding_window"):
        config_from_hf(
            hf | {"model_type": "qwen2", "hidden_act": "silu", "use_sliding_window": True}
        )
    (tmp_path / "model.safetensors").write_bytes(b"\x01")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_hf(tmp_path)
