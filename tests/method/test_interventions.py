"""Interventions, refusal direction, LA-IG (fast vs naive) and feature selection on a tiny model
with real SAE shapes (JumpReLU SAEs at every layer)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refusal_jax import sae as sae_lib
from refusal_jax.core.config import gemma2_config
from refusal_jax.core.model import forward, generate, init_params
from refusal_jax.core.patches import Compose, PromptOnly
from refusal_jax.method.features import feature_set, per_sample_feature_set
from refusal_jax.method.interventions import (
    Interpolate,
    ablate_direction,
    clamp_dense_reference,
    clamp_features,
    feature_values,
    hold_features,
)
from refusal_jax.method.laig import (
    alpha_schedule,
    feature_attributions,
    la_ig,
    la_ig_naive,
    position_weights,
    subset_attributions,
)
from refusal_jax.method.selection import (
    candidate_features,
    cs_features,
    random_features,
    select_features,
    top_features,
)

CFG = gemma2_config(
    vocab_size=64,
    d_model=32,
    n_layers=3,
    n_heads=4,
    n_kv_heads=2,
    head_dim=8,
    d_mlp=64,
    sliding_window=6,
    eos_token_ids=(1,),
)
D_SAE = 96


@pytest.fixture(scope="module")
def params():
    p = init_params(CFG, jax.random.PRNGKey(0), scale=0.3)
    return p | {"embed": p["embed"] * 0.2}


@pytest.fixture(scope="module")
def saes(params):
    """JumpReLU SAEs whose thresholds leave a realistic fraction of features active."""
    keys = jax.random.split(jax.random.PRNGKey(7), CFG.n_layers)
    cfg = sae_lib.SAEConfig(architecture="jumprelu", d_in=CFG.d_model, d_sae=D_SAE)
    layers = []
    for k in keys:
        k1, k2, k3 = jax.random.split(k, 3)
        w_dec = jax.random.normal(k1, (D_SAE, CFG.d_model))
        w_dec = w_dec / jnp.linalg.norm(w_dec, axis=-1, keepdims=True)
        layers.append(
            sae_lib.SAE(
                W_enc=w_dec.T * 0.5 + 0.05 * jax.random.normal(k2, (CFG.d_model, D_SAE)),
                b_enc=jnp.zeros((D_SAE,)),
                W_dec=w_dec,
                b_dec=0.1 * jax.random.normal(k3, (CFG.d_model,)),
                threshold=jnp.full((D_SAE,), 0.3),
                cfg=cfg,
            )
        )
    return sae_lib.stack_saes(layers)


def _batch(seed=0, pads=(0, 2, 4), t=9):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, CFG.vocab_size, size=(len(pads), t))
    mask = np.ones_like(ids)
    for row, n in enumerate(pads):
        ids[row, :n], mask[row, :n] = 0, 0
    return jnp.asarray(ids), jnp.asarray(mask)


# --------------------------------------------------------------------------- ablation
def test_directional_ablation_properties(params):
    ids, mask = _batch()
    r = jax.random.normal(jax.random.PRNGKey(1), (CFG.d_model,))
    r_hat = r / jnp.linalg.norm(r)
    once = forward(
        params,
        CFG,
        ids,
        mask,
        patch=ablate_direction(r, CFG.n_layers, layers=[1]),
        return_residuals=True,
    )
    x_pre, x_abl = once.block_out[1], once.resid_post[1]
    valid = np.asarray(mask, bool)
    # Nothing left along r; nothing changed along any direction orthogonal to r.
    assert np.abs(np.asarray(x_abl @ r_hat))[valid].max() < 1e-5
    q = jax.random.normal(jax.random.PRNGKey(2), (CFG.d_model, 5))
    q = q - r_hat[:, None] * (r_hat @ q)[None]
    np.testing.assert_allclose(
        np.asarray(x_abl @ q)[valid], np.asarray(x_pre @ q)[valid], atol=1e-5
    )
    # Ablating twice equals ablating once.
    twice = ablate_direction(r, CFG.n_layers, layers=[1])
    out2 = forward(params, CFG, ids, mask, patch=Compose((twice, twice)), return_residuals=True)
    np.testing.assert_allclose(np.asarray(out2.logits), np.asarray(once.logits), atol=1e-5)


def test_ablation_from_a_position_onward(params):
    ids, mask = _batch(pads=(0, 0, 0))
    r = jax.random.normal(jax.random.PRNGKey(3), (CFG.d_model,))
    out = forward(
        params,
        CFG,
        ids,
        mask,
        patch=ablate_direction(r, CFG.n_layers, min_position=5),
        return_residuals=True,
    )
    clean = forward(params, CFG, ids, mask, return_residuals=True)
    np.testing.assert_allclose(out.resid_post[:, :, :5], clean.resid_post[:, :, :5], atol=1e-6)
    assert np.abs(np.asarray(out.resid_post[:, :, 5:] - clean.resid_post[:, :, 5:])).max() > 1e-3


# --------------------------------------------------------------------------- clamping
@pytest.mark.parametrize("mode,value", [("multiply", -3.0), ("set", 2.5)])
def test_sparse_clamp_equals_dense_reference(params, saes, mode, value):
    ids, mask = _batch()
    fs = feature_set([(0, 3), (0, 17), (1, 5), (2, 40), (2, 41), (2, 90)], CFG.n_layers, D_SAE)
    x = forward(params, CFG, ids, mask, return_residuals=True).resid_post[1]
    patch = clamp_features(saes, fs, value, mode=mode)
    from refusal_jax.core.model import positions_from_mask
    from refusal_jax.core.patches import PatchContext

    ctx = PatchContext(positions_from_mask(mask), mask.astype(bool), jnp.bool_(True))
    for layer in range(CFG.n_layers):
        got = patch(x, jnp.int32(layer), ctx)
        sae_l = sae_lib.sae_layer(saes, layer)
        idx, m = fs.idx[layer], fs.mask[layer]
        f_sel = sae_lib.encode(sae_l, x)[..., idx]
        new = value * f_sel if mode == "multiply" else jnp.full_like(f_sel, value)
        ref = clamp_dense_reference(sae_l, x, idx, m, new)
        valid = np.asarray(mask, bool)
        np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(ref)[valid], atol=2e-5)
    assert np.abs(np.asarray(patch(x, jnp.int32(2), ctx) - x)).max() > 1e-3


def test_per_sample_feature_sets(params, saes):
    ids, mask = _batch()
    sets = [[(1, 2)], [(0, 4), (2, 9)], []]
    per = per_sample_feature_set(sets, CFG.n_layers, D_SAE)
    out = forward(params, CFG, ids, mask, patch=clamp_features(saes, per, 0.0, "set"))
    for b, pairs in enumerate(sets):
        single = clamp_features(saes, feature_set(pairs, CFG.n_layers, D_SAE), 0.0, "set")
        ref = forward(params, CFG, ids, mask, patch=single)
        np.testing.assert_allclose(out.logits[b], ref.logits[b], atol=1e-5)


def test_per_sample_patches_in_batched_helpers(params, saes):
    """Per-sample patches built for N prompts give the same results through the fixed-size
    batch helpers (any batch_size) as one batch holding all N; a wrong count is an error."""
    from refusal_jax.method.capability import masked_ce
    from refusal_jax.method.judges import first_token_refuses
    from refusal_jax.method.prompts import generate_tokens

    ids, mask = _batch(seed=3, pads=(0, 2, 4, 1, 3))
    sets = [[(1, 2)], [(0, 4), (2, 9)], [], [(2, 5), (2, 6), (0, 1)], [(1, 7)]]
    per = clamp_features(saes, per_sample_feature_set(sets, CFG.n_layers, D_SAE), -2.0)
    ablate = ablate_direction(jnp.ones((CFG.d_model,)), CFG.n_layers, min_position=[0, 3, 5, 1, 2])
    patch = Compose((ablate, PromptOnly(per)))
    full = generate(params, CFG, ids, mask, max_new_tokens=5, patch=patch)
    toks, lens = generate_tokens(
        params, CFG, ids, mask, batch_size=2, max_new_tokens=5, patch=patch
    )
    np.testing.assert_array_equal(toks, np.asarray(full.tokens))
    np.testing.assert_array_equal(lens, np.asarray(full.lengths))
    first = first_token_refuses(params, CFG, ids, mask, [int(full.tokens[1, 0])], patch, 2)
    np.testing.assert_array_equal(first, np.asarray(full.tokens[:, 0]) == int(full.tokens[1, 0]))
    target = np.asarray(mask)
    ce_small = masked_ce(params, CFG, ids, mask, target, patch, batch_size=2)
    ce_full = masked_ce(params, CFG, ids, mask, target, patch, batch_size=5)
    assert ce_small == pytest.approx(ce_full, rel=1e-5)
    with pytest.raises(ValueError, match="built for 5 prompts applied to a set of 3"):
        generate_tokens(params, CFG, ids[:3], mask[:3], batch_size=2, patch=patch)
    bad = Compose((ablate, clamp_features(saes, per_sample_feature_set(sets[:2], 3, D_SAE), 0.0)))
    with pytest.raises(ValueError, match="disagree on the number of prompts"):
        generate_tokens(params, CFG, ids, mask, batch_size=2, patch=bad)


def test_clamping_to_current_values_is_identity_and_retain_holds(params, saes):
    ids, mask = _batch()
    fs = feature_set([(0, 1), (1, 2), (2, 3)], CFG.n_layers, D_SAE)
    clean = forward(params, CFG, ids, mask, return_residuals=True)
    held = hold_features(saes, fs, feature_values(saes, fs, clean.resid_post))
    out = forward(params, CFG, ids, mask, patch=held)
    np.testing.assert_allclose(out.logits, clean.logits, atol=1e-4)
    # Multiply features of layer 0, but hold layer-2 features at their clean values.
    edit = clamp_features(saes, feature_set([(0, 1), (0, 5)], CFG.n_layers, D_SAE), -3.0)
    fs2 = feature_set([(2, 3), (2, 7)], CFG.n_layers, D_SAE)
    clean_vals = feature_values(saes, fs2, clean.resid_post)
    both = forward(
        params,
        CFG,
        ids,
        mask,
        patch=Compose((edit, hold_features(saes, fs2, clean_vals))),
        return_residuals=True,
    )
    # At layer 2 the held features are decoded at their clean values, whatever the upstream edit
    # did to them: resid_post = dense (encode -> set -> decode + error) of the block output.
    sae2 = sae_lib.sae_layer(saes, 2)
    ref = clamp_dense_reference(sae2, both.block_out[2], fs2.idx[2], fs2.mask[2], clean_vals[2])
    valid = np.asarray(mask, bool)
    np.testing.assert_allclose(
        np.asarray(both.resid_post[2])[valid], np.asarray(ref)[valid], atol=2e-5
    )
    assert np.abs(np.asarray(both.block_out[2] - clean.resid_post[2])).max() > 1e-3


def test_prompt_only_clamp_in_generation(params, saes):
    ids, mask = _batch()
    fs = feature_set([(la, f) for la in range(3) for f in range(0, 96, 5)], CFG.n_layers, D_SAE)
    clamp = clamp_features(saes, fs, -3.0)
    a = generate(params, CFG, ids, mask, max_new_tokens=6, patch=clamp, patch_prompt_only=True)
    b = generate(params, CFG, ids, mask, max_new_tokens=6, patch=PromptOnly(clamp))
    full = generate(params, CFG, ids, mask, max_new_tokens=6, patch=clamp)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.tokens[:, 0]), np.asarray(full.tokens[:, 0]))


# --------------------------------------------------------------------------- LA-IG
def test_interpolated_run_equals_sae_in_the_loop(params, saes):
    """The identity behind the fast path: with affine decoders the SAE cancels out."""
    from refusal_jax.method.laig import _SAEInTheLoop, patched_runs

    ids, mask = _batch()
    r = jax.random.normal(jax.random.PRNGKey(4), (CFG.d_model,))
    runs = patched_runs(params, CFG, ids, mask, r, refusal_token=5, error_mode="paper")
    enc, dec = jax.vmap(sae_lib.encode), jax.vmap(sae_lib.decode)
    f_patch = enc(saes, runs.x_ablated)
    e_patch = runs.x_patch - dec(saes, f_patch)
    for alpha in (0.0, 0.3, 0.9):
        loop = _SAEInTheLoop(saes, jnp.float32(alpha), f_patch, e_patch, jnp.zeros_like(f_patch))
        fast = Interpolate(jnp.float32(alpha), runs.x_patch, jnp.zeros_like(runs.x_patch))
        a = forward(params, CFG, ids, mask, patch=loop).logits
        b = forward(params, CFG, ids, mask, patch=fast).logits
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


@pytest.mark.parametrize("error_mode", ["paper", "ablated"])
def test_la_ig_fast_matches_naive(params, saes, error_mode):
    ids, mask = _batch()
    r = jax.random.normal(jax.random.PRNGKey(5), (CFG.d_model,)) * 3
    fast = la_ig(params, CFG, ids, mask, r, refusal_token=7, n_steps=4, error_mode=error_mode)
    per_token = feature_attributions(fast, saes, jnp.ones(mask.shape), per_token=True)
    naive = la_ig_naive(
        params, CFG, saes, ids, mask, r, refusal_token=7, n_steps=4, error_mode=error_mode
    )
    valid = np.asarray(mask, bool)
    ref = np.asarray(naive)[:, valid]
    got = np.asarray(per_token)[:, valid]
    assert np.abs(ref).max() > 1e-3, "attributions vanished: the test would prove little"
    np.testing.assert_allclose(got, ref, atol=1e-5 * max(1.0, np.abs(ref).max()), rtol=1e-4)
    # Position-mean reduction and subset attributions agree with the per-token tensor.
    w = position_weights(mask, skip=1)
    mean = feature_attributions(fast, saes, w)
    expect = (per_token * w[None, :, :, None]).sum(2) / w.sum(-1)[None, :, None]
    np.testing.assert_allclose(np.asarray(mean), np.asarray(expect), atol=1e-5)
    fs = feature_set([(0, 3), (1, 50), (2, 95)], CFG.n_layers, D_SAE)
    sub = subset_attributions(fast, saes, fs)
    for layer, f in fs.pairs():
        k = list(np.asarray(fs.idx[layer])).index(f)
        np.testing.assert_allclose(
            np.asarray(sub[layer, :, :, k]), np.asarray(per_token[layer, :, :, f]), atol=1e-5
        )


def test_la_ig_alpha_batching_and_fixed_token(params):
    ids, mask = _batch()
    r = jax.random.normal(jax.random.PRNGKey(6), (CFG.d_model,))
    a = la_ig(params, CFG, ids, mask, r, refusal_token=7, n_steps=6)
    b = la_ig(params, CFG, ids, mask, r, refusal_token=7, n_steps=6, alpha_batch=2)
    np.testing.assert_allclose(np.asarray(a.grad), np.asarray(b.grad), atol=1e-5)
    # The metric at alpha = 0 is the clean run's logit difference.
    clean = forward(params, CFG, ids, mask).logits[:, -1]
    jb = a.runs.jailbreak_token
    expect = float(jnp.sum(jnp.take_along_axis(clean, jb[:, None], -1)[:, 0] - clean[:, 7]))
    assert float(a.metric[0]) == pytest.approx(expect, rel=1e-4, abs=1e-4)
    fixed = la_ig(params, CFG, ids, mask, r, refusal_token=7, jailbreak_token=9, n_steps=2)
    assert (np.asarray(fixed.runs.jailbreak_token) == 9).all()
    np.testing.assert_allclose(alpha_schedule(4)[0], [0, 0.25, 0.5, 0.75])
    with pytest.raises(ValueError, match="error_mode"):
        la_ig(params, CFG, ids, mask, r, refusal_token=7, error_mode="bogus")


# --------------------------------------------------------------------------- selection
def test_selection_on_hand_built_attributions(saes):
    L, B, S = CFG.n_layers, 4, D_SAE
    attr = np.zeros((L, B, S), np.float32)
    attr[0, :, 10] = 5.0
    attr[1, :, 20] = 4.0
    attr[2, 0, 30] = 100.0  # huge for one sample only
    attr[2, 1:, 31] = 3.0
    cand = feature_set([(0, 10), (1, 20), (2, 30), (2, 31), (0, 11)], L, S)
    glob = select_features(attr, n=3, candidates=cand)
    assert glob.pairs() == [(0, 10), (1, 20), (2, 30)]
    per = select_features(attr, n=2, candidates=cand, per_sample=True)
    assert per.pairs(0) == [(0, 10), (2, 30)]
    assert per.pairs(1) == [(0, 10), (1, 20)]
    # Without the F0 restriction a feature outside the candidates can win.
    attr[1, :, 77] = 50.0
    assert (1, 77) in top_features(attr.mean(1), 3).pairs()
    assert (1, 77) not in select_features(attr, 3, candidates=cand).pairs()
    # Candidates: a planted decoder row is found at its layer.
    r = np.asarray(saes.W_dec[1, 42])
    f0 = candidate_features(saes, r, k=4)
    assert (1, 42) in f0.pairs() and len(f0.pairs()) == 4 * L
    assert cs_features(saes, r, n=1).pairs() == [(1, 42)]
    rnd = random_features(glob, S, seed=0)
    np.testing.assert_array_equal(rnd.counts_per_layer(), glob.counts_per_layer())
    with pytest.raises(ValueError, match="out of range"):
        feature_set([(0, S)], L, S)
    with pytest.raises(ValueError, match="layer out of range"):
        feature_set([(L, 0)], L, S)
