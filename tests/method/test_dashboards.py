"""Feature-dashboard math: logit lens against an independent numpy computation, top-k contexts,
densities, attribution ranks, and per-token feature activations against a plain encode."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refusal_jax import sae as sae_lib
from refusal_jax.core.config import gemma2_config
from refusal_jax.core.model import forward, init_params
from refusal_jax.method import dashboards as db
from refusal_jax.method.features import feature_set
from tests.support.saes import random_sae

GEMMA = gemma2_config(
    vocab_size=50, d_model=12, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=6, d_mlp=24,
    sliding_window=8,
)  # fmt: skip
LLAMA = dataclasses.replace(
    GEMMA, family="llama", norm_plus_one=False, final_softcap=None, tie_embeddings=False
)


def np_lens(params, cfg, v):
    """Final RMSNorm (Gemma: 1 + w), unembedding, softcap - written out in float64."""
    v = np.asarray(v, np.float64)
    w = np.asarray(params["final_norm"], np.float64)
    y = v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + cfg.norm_eps)
    y = y * (1.0 + w) if cfg.norm_plus_one else y * w
    u = np.asarray(params["embed"], np.float64).T if cfg.tie_embeddings else params["lm_head"]
    logits = y @ np.asarray(u, np.float64)
    if cfg.final_softcap:
        logits = np.tanh(logits / cfg.final_softcap) * cfg.final_softcap
    return logits


@pytest.mark.parametrize("cfg", [GEMMA, LLAMA], ids=["gemma2", "llama"])
def test_logit_lens_matches_numpy(cfg):
    params = init_params(cfg, jax.random.PRNGKey(0), scale=0.5)
    params["final_norm"] = jax.random.normal(jax.random.PRNGKey(1), (cfg.d_model,)) * 0.3
    dirs = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (3, cfg.d_model)))
    want = np_lens(params, cfg, dirs)
    np.testing.assert_allclose(db.lens_logits(params, cfg, dirs), want, rtol=1e-4, atol=1e-4)
    out = db.logit_lens(params, cfg, dirs, k=5)
    for i in range(3):
        assert list(out["promoted_ids"][i]) == list(np.argsort(-want[i])[:5])
        assert list(out["suppressed_ids"][i]) == list(np.argsort(want[i])[:5])
        np.testing.assert_allclose(
            out["promoted_logits"][i], want[i][out["promoted_ids"][i]], rtol=1e-4, atol=1e-4
        )
        assert np.all(np.diff(out["promoted_logits"][i]) <= 0)
        assert np.all(np.diff(out["suppressed_logits"][i]) >= 0)


def test_top_contexts_and_max_per_prompt():
    acts = np.array(
        [[9.0, 0.0, 1.0, 2.0], [0.0, 0.5, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0], [7.0, 4.0, 4.0, 1.0]]
    )
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]])
    # prompt 0's 9.0 sits on padding and must not count
    out = db.top_contexts(acts, mask, k=3)
    assert out["prompt"].tolist() == [3, 1, 0]
    assert out["position"].tolist() == [0, 2, 3]
    np.testing.assert_allclose(out["max"], [7.0, 3.0, 2.0])
    np.testing.assert_allclose(out["acts"][2], [0.0, 0.0, 1.0, 2.0])  # padding zeroed
    np.testing.assert_allclose(out["acts"][0], acts[3])
    assert db.top_contexts(acts, mask, k=10)["prompt"].tolist() == [3, 1, 0, 2]
    np.testing.assert_allclose(db.max_per_prompt(acts, mask), [2.0, 3.0, 0.0, 7.0])
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        db.top_contexts(acts[None], mask[None])


def test_density_and_bins():
    a, b = np.array([0.0, 0.0, 1.0, 4.0]), np.array([2.0, 2.0])
    edges = db.density_bins(a, b, n_bins=4)
    np.testing.assert_allclose(edges, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(db.density(a, edges), [0.5, 0.25, 0.0, 0.25])  # 4.0: last bin
    np.testing.assert_allclose(db.density(b, edges), [0.0, 0.0, 1.0, 0.0])
    assert db.density(a, edges).sum() == pytest.approx(1.0)
    assert db.density(np.zeros(0), edges).sum() == 0.0
    np.testing.assert_allclose(db.density_bins(np.zeros(3), n_bins=2), [0.0, 0.5, 1.0])


def test_attribution_ranks():
    s = np.array([[0.1, 0.5, 0.3], [0.9, 0.0, 0.2]])
    out = db.attribution_ranks(s, [(0, 2), (1, 0), (1, 1)])
    np.testing.assert_allclose(out["score"], [0.3, 0.9, 0.0])
    assert out["rank_layer"].tolist() == [1, 0, 2]
    assert out["rank_global"].tolist() == [2, 0, 5]
    np.testing.assert_allclose(out["layer_max"], [0.5, 0.9])
    with pytest.raises(ValueError, match=r"feature \(2, 0\)"):
        db.attribution_ranks(s, [(2, 0)])


def test_feature_activations_match_encode():
    cfg = GEMMA
    params = init_params(cfg, jax.random.PRNGKey(3))
    saes = sae_lib.stack_saes([random_sae("jumprelu", seed=s, d_in=12) for s in range(2)])
    ids = np.array([[0, 5, 6, 7], [1, 2, 3, 4]])
    mask = np.array([[0, 1, 1, 1], [1, 1, 1, 1]])
    fs = feature_set([(0, 3), (1, 7), (1, 1)], 2)
    acts = db.feature_activations(params, cfg, saes, fs, ids, mask, batch_size=1)
    assert acts.shape == (2, 4, 2, 2)
    resid = forward(params, cfg, jnp.asarray(ids), jnp.asarray(mask), return_residuals=True)
    for layer, f in fs.pairs():
        k = list(np.asarray(fs.idx[layer])).index(f)
        full = sae_lib.encode(sae_lib.sae_layer(saes, layer), resid.resid_post[layer])
        np.testing.assert_allclose(acts[:, :, layer, k], full[..., f] * mask, atol=1e-5)
    # wider sets in one width bucket (9 and 10 features per layer -> 16) share one program
    before = db._activations._cache_size()
    wide = [db.feature_activations(params, cfg, saes, feature_set([(1, i) for i in range(w)], 2),
                                   ids, mask, batch_size=1) for w in (9, 10)]  # fmt: skip
    assert db._activations._cache_size() == before + 1
    assert [a.shape[-1] for a in wide] == [9, 10]
    np.testing.assert_array_equal(wide[0], wide[1][..., :9])
