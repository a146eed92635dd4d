"""SAE core: encode/decode against a plain numpy reference, sparse per-feature encoding,
stacking, exact rewrites (folding) and the splice patch."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refusal_jax import sae as sae_lib
from refusal_jax.core.config import ModelConfig
from refusal_jax.core.model import forward, init_params
from tests.support.saes import D_IN, D_SAE, np_decode, np_encode, random_sae

CASES = [
    ("relu", None, False, 1.0),
    ("relu", None, True, 1.0),
    ("jumprelu", None, False, 1.0),
    ("jumprelu", None, True, 2.5),
    ("topk", 5, True, 1.0),
    ("topk", 3, False, 0.7),
    ("batchtopk", 4, False, 1.0),
]


@pytest.mark.parametrize("arch,k,apply_b_dec,scale", CASES)
def test_encode_decode_match_numpy(arch, k, apply_b_dec, scale):
    sae = random_sae(arch, k=k, apply_b_dec=apply_b_dec, input_scale=scale)
    x = np.random.default_rng(1).normal(0, 1, (3, 7, D_IN)).astype(np.float32)
    f = np.asarray(jax.jit(sae_lib.encode)(sae, x))
    ref = np_encode(sae, x)
    np.testing.assert_allclose(f, ref, rtol=1e-5, atol=1e-5)
    active = (ref > 0).mean()
    assert 0.02 < active < 0.9  # the comparison exercises both the zero and the active branch
    if arch == "topk":
        assert ((f > 0).sum(-1) <= k).all() and ((f > 0).sum(-1) == k).mean() > 0.5
    np.testing.assert_allclose(sae_lib.decode(sae, f), np_decode(sae, ref), rtol=1e-5, atol=1e-5)
    rec = sae_lib.reconstruct(sae, x)
    np.testing.assert_allclose(sae_lib.error_term(sae, x), x - rec, rtol=1e-6, atol=1e-6)
    pre = sae_lib.encode_pre(sae, x)
    np.testing.assert_allclose(sae_lib.activation(sae, pre), f, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "batchtopk"])
def test_encode_features_exact(arch):
    sae = random_sae(arch, k=4 if arch == "batchtopk" else None, apply_b_dec=True)
    x = jnp.asarray(np.random.default_rng(2).normal(0, 1, (2, 5, D_IN)), jnp.float32)
    idx = jnp.asarray([3, 0, 39, 17, 3])
    full = sae_lib.encode(sae, x)[..., idx]
    got = jax.jit(sae_lib.encode_features)(sae, x, idx)
    assert got.shape == (2, 5, 5)
    # exactly the same numbers: the sparse path is a column subset of the same matmul
    np.testing.assert_allclose(got, full, rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(got).sum()) > 0


def test_encode_features_topk_raises():
    sae = random_sae("topk", k=3)
    with pytest.raises(ValueError, match="TopK"):
        sae_lib.encode_features(sae, jnp.zeros((2, D_IN)), jnp.asarray([1, 2]))


def test_batchtopk_train_keeps_k_per_token_on_average():
    pre = jnp.asarray(np.random.default_rng(3).normal(0, 1, (16, D_SAE)), jnp.float32)
    f = sae_lib.batchtopk_train(pre, 3)
    assert int((f > 0).sum()) == 16 * 3
    kept = np.asarray(f)[np.asarray(f) > 0]
    dropped = np.maximum(np.asarray(pre), 0)[np.asarray(f) == 0]
    assert kept.min() >= dropped.max()


def test_config_errors():
    with pytest.raises(ValueError, match="unknown SAE architecture"):
        sae_lib.SAEConfig("gated", 4, 8)
    with pytest.raises(ValueError, match="needs k"):
        sae_lib.SAEConfig("topk", 4, 8)
    with pytest.raises(ValueError, match="k must be"):
        sae_lib.SAEConfig("topk", 4, 8, k=9)
    with pytest.raises(ValueError, match="k is for topk"):
        sae_lib.SAEConfig("relu", 4, 8, k=2)
    with pytest.raises(ValueError, match="input_scale"):
        sae_lib.SAEConfig("relu", 4, 8, input_scale=0.0)
    with pytest.raises(ValueError, match="positive int"):
        sae_lib.SAEConfig("relu", 0, 8)
    with pytest.raises(ValueError, match="normalization"):
        sae_lib.SAEConfig("relu", 4, 8, input_scale=2.0, normalization="none")
    assert sae_lib.SAEConfig("relu", 4, 8, input_scale=2.0).normalization == (
        "expected_average_only_in"
    )
    sae = random_sae("relu")
    with pytest.raises(ValueError, match="width 5"):
        sae_lib.encode(sae, jnp.zeros((2, 5)))


@pytest.mark.parametrize("arch,k", [("jumprelu", None), ("topk", 4), ("relu", None)])
def test_folding_is_exact(arch, k):
    sae = random_sae(arch, k=k, apply_b_dec=True, input_scale=3.0)
    x = jnp.asarray(np.random.default_rng(4).normal(0, 1, (9, D_IN)), jnp.float32)
    folded = sae_lib.fold_b_dec_into_b_enc(sae_lib.fold_input_scale(sae))
    assert folded.cfg.input_scale == 1.0 and not folded.cfg.apply_b_dec_to_input
    np.testing.assert_allclose(sae_lib.encode(folded, x), sae_lib.encode(sae, x), atol=2e-5)
    np.testing.assert_allclose(
        sae_lib.reconstruct(folded, x), sae_lib.reconstruct(sae, x), atol=2e-5
    )


def test_stack_vmap_and_slice():
    saes = [random_sae("jumprelu", seed=s) for s in range(3)]
    stacked = sae_lib.stack_saes(saes)
    assert stacked.W_enc.shape == (3, D_IN, D_SAE)
    x = jnp.asarray(np.random.default_rng(5).normal(0, 1, (3, 4, D_IN)), jnp.float32)
    f = jax.vmap(sae_lib.encode)(stacked, x)
    for i, s in enumerate(saes):
        np.testing.assert_allclose(f[i], sae_lib.encode(s, x[i]), rtol=1e-6, atol=1e-6)
        one = sae_lib.sae_layer(stacked, i)
        np.testing.assert_array_equal(one.W_dec, s.W_dec)
    idx = jnp.asarray([1, 2])
    sub = jax.vmap(lambda s, xx: sae_lib.encode_features(s, xx, idx))(stacked, x)
    np.testing.assert_allclose(sub, f[..., idx], rtol=1e-6, atol=1e-6)
    back = sae_lib.unstack_saes(stacked)
    np.testing.assert_array_equal(back[2].threshold, saes[2].threshold)
    with pytest.raises(ValueError, match="different configs"):
        sae_lib.stack_saes([saes[0], random_sae("jumprelu", d_sae=8)])


def test_stack_sae_set_fills_missing_layers():
    saes = {1: random_sae("relu", seed=1), 3: random_sae("relu", seed=3)}
    stacked, mask = sae_lib.stack_sae_set(saes, 4)
    assert mask.tolist() == [False, True, False, True]
    assert float(jnp.abs(stacked.W_enc[0]).sum()) == 0.0
    np.testing.assert_array_equal(stacked.W_enc[3], saes[3].W_enc)
    with pytest.raises(ValueError, match="out of range"):
        sae_lib.stack_sae_set({5: saes[1]}, 4)


TINY = ModelConfig(
    family="llama",
    vocab_size=50,
    d_model=D_IN,
    n_layers=3,
    n_heads=2,
    n_kv_heads=1,
    head_dim=6,
    d_mlp=24,
    max_position_embeddings=64,
)


def test_splice_patch_replaces_resid_post_by_reconstruction():
    params = init_params(TINY, jax.random.PRNGKey(0), scale=0.2)
    ids = jnp.asarray(np.random.default_rng(6).integers(0, 50, (2, 6)), jnp.int32)
    mask = jnp.ones_like(ids)
    saes = {1: random_sae("jumprelu", seed=7)}
    patch = sae_lib.splice_patch(saes, TINY.n_layers)
    clean = forward(params, TINY, ids, mask, return_residuals=True)
    out = forward(params, TINY, ids, mask, patch, return_residuals=True)
    # layer 0 untouched; layer 1 resid_post is the reconstruction of the unpatched block output
    np.testing.assert_allclose(out.resid_post[0], clean.resid_post[0], atol=1e-6)
    rec = sae_lib.reconstruct(saes[1], out.block_out[1])
    np.testing.assert_allclose(out.resid_post[1], rec, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.block_out[1], clean.resid_post[1], rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(out.logits - clean.logits).max()) > 1e-3
    zero = forward(
        params,
        TINY,
        ids,
        mask,
        sae_lib.ZeroAblate(jnp.asarray([False, True, False])),
        return_residuals=True,
    )
    assert float(jnp.abs(zero.resid_post[1]).max()) == 0.0


def test_splice_from_stacked_with_layer_subset():
    stacked = sae_lib.stack_saes([random_sae("relu", seed=s) for s in range(3)])
    patch = sae_lib.splice_patch(stacked, 3, layers=[2])
    assert patch.layer_mask.tolist() == [False, False, True]
    with pytest.raises(ValueError, match="leading axis"):
        sae_lib.splice_patch(stacked, 4)


def test_config_is_static_and_hashable():
    cfg = sae_lib.SAEConfig("topk", 4, 8, k=2)
    assert hash(cfg) == hash(dataclasses.replace(cfg))
    sae = random_sae("topk", k=2)
    leaves = jax.tree.leaves(sae)
    assert len(leaves) == 5  # cfg is not a leaf


def test_single_layer_splice_stays_unstacked():
    sae = random_sae("relu", seed=2)
    patch = sae_lib.splice_patch({2: sae}, 3)
    assert patch.sae.W_enc.shape == (D_IN, D_SAE)
    assert patch.layer_mask.tolist() == [False, False, True]
    x = jnp.asarray(np.random.default_rng(0).normal(0, 1, (1, 2, D_IN)), jnp.float32)
    np.testing.assert_allclose(patch(x, jnp.int32(2), None), sae_lib.reconstruct(sae, x), atol=1e-6)
    np.testing.assert_array_equal(patch(x, jnp.int32(1), None), x)
