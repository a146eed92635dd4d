"""Interventions (directional ablation, feature clamps, per-sample feature sets, prompt-only
patches) on the tiny model with JumpReLU SAEs at every layer (fixtures in tests/conftest.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refusal_jax import sae as sae_lib
from refusal_jax.core.model import forward, generate, positions_from_mask
from refusal_jax.core.patches import Compose, PatchContext, PromptOnly
from refusal_jax.method.capability import masked_ce
from refusal_jax.method.features import feature_set, per_sample_feature_set
from refusal_jax.method.interventions import (
    ablate_direction,
    clamp_dense_reference,
    clamp_features,
    feature_values,
    hold_features,
)
from refusal_jax.method.judges import first_token_refuses
from refusal_jax.method.prompts import generate_tokens
from tests.support.tiny import TINY, TINY_D_SAE, padded_batch

CFG = TINY
D_SAE = TINY_D_SAE


def _batch(seed=0, pads=(0, 2, 4), t=9):
    return padded_batch(CFG.vocab_size, seed, pads, t)


# --------------------------------------------------------------------------- ablation
def test_directional_ablation_properties(tiny_params):
    ids, mask = _batch()
    r = jax.random.normal(jax.random.PRNGKey(1), (CFG.d_model,))
    r_hat = r / jnp.linalg.norm(r)
    once = forward(
        tiny_params,
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
    out2 = forward(
        tiny_params, CFG, ids, mask, patch=Compose((twice, twice)), return_residuals=True
    )
    np.testing.assert_allclose(np.asarray(out2.logits), np.asarray(once.logits), atol=1e-5)


def test_ablation_from_a_position_onward(tiny_params):
    ids, mask = _batch(pads=(0, 0, 0))
    r = jax.random.normal(jax.random.PRNGKey(3), (CFG.d_model,))
    out = forward(
        tiny_params,
        CFG,
        ids,
        mask,
        patch=ablate_direction(r, CFG.n_layers, min_position=5),
        return_residuals=True,
    )
    clean = forward(tiny_params, CFG, ids, mask, return_residuals=True)
    np.testing.assert_allclose(out.resid_post[:, :, :5], clean.resid_post[:, :, :5], atol=1e-6)
    assert np.abs(np.asarray(out.resid_post[:, :, 5:] - clean.resid_post[:, :, 5:])).max() > 1e-3


# --------------------------------------------------------------------------- clamping
@pytest.mark.parametrize("mode,value", [("multiply", -3.0), ("set", 2.5)])
def test_sparse_clamp_equals_dense_reference(tiny_params, tiny_saes, mode, value):
    ids, mask = _batch()
    fs = feature_set([(0, 3), (0, 17), (1, 5), (2, 40), (2, 41), (2, 90)], CFG.n_layers, D_SAE)
    x = forward(tiny_params, CFG, ids, mask, return_residuals=True).resid_post[1]
    patch = clamp_features(tiny_saes, fs, value, mode=mode)

    ctx = PatchContext(positions_from_mask(mask), mask.astype(bool), jnp.bool_(True))
    for layer in range(CFG.n_layers):
        got = patch(x, jnp.int32(layer), ctx)
        sae_l = sae_lib.sae_layer(tiny_saes, layer)
        idx, m = fs.idx[layer], fs.mask[layer]
        f_sel = sae_lib.encode(sae_l, x)[..., idx]
        new = value * f_sel if mode == "multiply" else jnp.full_like(f_sel, value)
        ref = clamp_dense_reference(sae_l, x, idx, m, new)
        valid = np.asarray(mask, bool)
        np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(ref)[valid], atol=2e-5)
    assert np.abs(np.asarray(patch(x, jnp.int32(2), ctx) - x)).max() > 1e-3


def test_per_sample_feature_sets(tiny_params, tiny_saes):
    ids, mask = _batch()
    sets = [[(1, 2)], [(0, 4), (2, 9)], []]
    per = per_sample_feature_set(sets, CFG.n_layers, D_SAE)
    out = forward(tiny_params, CFG, ids, mask, patch=clamp_features(tiny_saes, per, 0.0, "set"))
    for b, pairs in enumerate(sets):
        single = clamp_features(tiny_saes, feature_set(pairs, CFG.n_layers, D_SAE), 0.0, "set")
        ref = forward(tiny_params, CFG, ids, mask, patch=single)
        np.testing.assert_allclose(out.logits[b], ref.logits[b], atol=1e-5)


def test_per_sample_patches_in_batched_helpers(tiny_params, tiny_saes):
    """Per-sample patches built for N prompts give the same results through the fixed-size
    batch helpers (any batch_size) as one batch holding all N; a wrong count is an error."""

    ids, mask = _batch(seed=3, pads=(0, 2, 4, 1, 3))
    sets = [[(1, 2)], [(0, 4), (2, 9)], [], [(2, 5), (2, 6), (0, 1)], [(1, 7)]]
    per = clamp_features(tiny_saes, per_sample_feature_set(sets, CFG.n_layers, D_SAE), -2.0)
    ablate = ablate_direction(jnp.ones((CFG.d_model,)), CFG.n_layers, min_position=[0, 3, 5, 1, 2])
    patch = Compose((ablate, PromptOnly(per)))
    full = generate(tiny_params, CFG, ids, mask, max_new_tokens=5, patch=patch)
    toks, lens = generate_tokens(
        tiny_params, CFG, ids, mask, batch_size=2, max_new_tokens=5, patch=patch
    )
    np.testing.assert_array_equal(toks, np.asarray(full.tokens))
    np.testing.assert_array_equal(lens, np.asarray(full.lengths))
    first = first_token_refuses(tiny_params, CFG, ids, mask, [int(full.tokens[1, 0])], patch, 2)
    np.testing.assert_array_equal(first, np.asarray(full.tokens[:, 0]) == int(full.tokens[1, 0]))
    target = np.asarray(mask)
    ce_small = masked_ce(tiny_params, CFG, ids, mask, target, patch, batch_size=2)
    ce_full = masked_ce(tiny_params, CFG, ids, mask, target, patch, batch_size=5)
    assert ce_small == pytest.approx(ce_full, rel=1e-5)
    with pytest.raises(ValueError, match="built for 5 prompts applied to a set of 3"):
        generate_tokens(tiny_params, CFG, ids[:3], mask[:3], batch_size=2, patch=patch)
    bad = Compose(
        (ablate, clamp_features(tiny_saes, per_sample_feature_set(sets[:2], 3, D_SAE), 0.0))
    )
    with pytest.raises(ValueError, match="disagree on the number of prompts"):
        generate_tokens(tiny_params, CFG, ids, mask, batch_size=2, patch=bad)


def test_clamping_to_current_values_is_identity_and_retain_holds(tiny_params, tiny_saes):
    ids, mask = _batch()
    fs = feature_set([(0, 1), (1, 2), (2, 3)], CFG.n_layers, D_SAE)
    clean = forward(tiny_params, CFG, ids, mask, return_residuals=True)
    held = hold_features(tiny_saes, fs, feature_values(tiny_saes, fs, clean.resid_post))
    out = forward(tiny_params, CFG, ids, mask, patch=held)
    np.testing.assert_allclose(out.logits, clean.logits, atol=1e-4)
    # Multiply features of layer 0, but hold layer-2 features at their clean values.
    edit = clamp_features(tiny_saes, feature_set([(0, 1), (0, 5)], CFG.n_layers, D_SAE), -3.0)
    fs2 = feature_set([(2, 3), (2, 7)], CFG.n_layers, D_SAE)
    clean_vals = feature_values(tiny_saes, fs2, clean.resid_post)
    both = forward(
        tiny_params,
        CFG,
        ids,
        mask,
        patch=Compose((edit, hold_features(tiny_saes, fs2, clean_vals))),
        return_residuals=True,
    )
    # At layer 2 the held features are decoded at their clean values, whatever the upstream edit
    # did to them: resid_post = dense (encode -> set -> decode + error) of the block output.
    sae2 = sae_lib.sae_layer(tiny_saes, 2)
    ref = clamp_dense_reference(sae2, both.block_out[2], fs2.idx[2], fs2.mask[2], clean_vals[2])
    valid = np.asarray(mask, bool)
    np.testing.assert_allclose(
        np.asarray(both.resid_post[2])[valid], np.asarray(ref)[valid], atol=2e-5
    )
    assert np.abs(np.asarray(both.block_out[2] - clean.resid_post[2])).max() > 1e-3


def test_prompt_only_clamp_in_generation(tiny_params, tiny_saes):
    ids, mask = _batch()
    fs = feature_set([(la, f) for la in range(3) for f in range(0, 96, 5)], CFG.n_layers, D_SAE)
    clamp = clamp_features(tiny_saes, fs, -3.0)
    a = generate(tiny_params, CFG, ids, mask, max_new_tokens=6, patch=clamp, patch_prompt_only=True)
    b = generate(tiny_params, CFG, ids, mask, max_new_tokens=6, patch=PromptOnly(clamp))
    full = generate(tiny_params, CFG, ids, mask, max_new_tokens=6, patch=clamp)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.tokens[:, 0]), np.asarray(full.tokens[:, 0]))
