"""Patches (refusal_jax.core.patches) inside the forward pass and generation of the tiny 4-layer
model: identity, steering vectors at chosen layers, per-sample coefficients, composition,
prompt-only application, and slicing per-sample patches into row batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refusal_jax.core.model import forward, generate
from refusal_jax.core.patches import (
    Compose,
    Identity,
    PromptOnly,
    Simultaneous,
    add_at_layers,
    check_patch_rows,
    patch_n_rows,
    patch_rows,
)
from tests.support.tiny import TINY4, padded_batch

CFG = TINY4


def _batch(seed=0):
    return padded_batch(CFG.vocab_size, seed, pads=(0, 3, 6), t=10)


def test_identity_patch_is_no_patch(tiny4_params):
    ids, mask = _batch()
    a = forward(tiny4_params, CFG, ids, mask)
    b = forward(tiny4_params, CFG, ids, mask, patch=Compose((Identity(), Identity())))
    np.testing.assert_array_equal(np.asarray(a.logits), np.asarray(b.logits))


def test_add_vector_patch_edits_exactly_the_chosen_layer(tiny4_params):
    ids, mask = _batch()
    v = jax.random.normal(jax.random.PRNGKey(1), (CFG.d_model,))
    clean = forward(tiny4_params, CFG, ids, mask, return_residuals=True)
    steered = forward(
        tiny4_params,
        CFG,
        ids,
        mask,
        patch=add_at_layers(v, [2], CFG.n_layers, 3.0),
        return_residuals=True,
    )
    # Layers before 2 are untouched; layer 2's output is shifted by exactly 3 v.
    np.testing.assert_allclose(steered.resid_post[:2], clean.resid_post[:2], atol=1e-6)
    np.testing.assert_allclose(
        steered.resid_post[2] - clean.resid_post[2],
        np.broadcast_to(3.0 * v, clean.resid_post[2].shape),
        atol=1e-5,
    )
    assert np.abs(np.asarray(steered.logits - clean.logits)).max() > 1e-2
    # resid_pre of layer 3 is the patched resid_post of layer 2.
    np.testing.assert_array_equal(
        np.asarray(steered.resid_pre[3]), np.asarray(steered.resid_post[2])
    )


def test_per_sample_coefficients_and_composition(tiny4_params):
    ids, mask = _batch()
    v = jax.random.normal(jax.random.PRNGKey(2), (CFG.d_model,))
    single = add_at_layers(v, [1], CFG.n_layers, 1.0)
    per_sample = single.replace(coeff=jnp.array([0.0, 1.0, 2.0]))
    out = forward(tiny4_params, CFG, ids, mask, patch=per_sample, return_residuals=True)
    clean = forward(tiny4_params, CFG, ids, mask, return_residuals=True)
    np.testing.assert_allclose(out.resid_post[1, 0], clean.resid_post[1, 0], atol=1e-6)
    twice = forward(
        tiny4_params, CFG, ids, mask, patch=Compose((single, single)), return_residuals=True
    )
    doubled = forward(
        tiny4_params,
        CFG,
        ids,
        mask,
        patch=single.replace(coeff=jnp.float32(2.0)),
        return_residuals=True,
    )
    np.testing.assert_allclose(twice.resid_post, doubled.resid_post, atol=1e-5)
    np.testing.assert_allclose(out.resid_post[:, 2], doubled.resid_post[:, 2], atol=1e-5)


def test_prompt_only_wrapper_equals_generate_flag(tiny4_params):
    ids, mask = _batch(seed=6)
    steer = add_at_layers(jnp.ones((CFG.d_model,)), [0], CFG.n_layers, 2.0)
    a = generate(
        tiny4_params, CFG, ids, mask, max_new_tokens=6, patch=steer, patch_prompt_only=True
    )
    b = generate(tiny4_params, CFG, ids, mask, max_new_tokens=6, patch=PromptOnly(steer))
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))


def test_rows_of_composite_patches():
    """Compose / Simultaneous / PromptOnly slice their per-sample parts and count prompts."""
    v = jnp.arange(CFG.d_model, dtype=jnp.float32)
    per = add_at_layers(v, [1], CFG.n_layers).replace(coeff=jnp.arange(5, dtype=jnp.float32))
    shared = add_at_layers(v, [2], CFG.n_layers, 2.0)
    for kind in (Compose, Simultaneous):
        patch = kind((shared, per))
        assert patch_n_rows(patch) == 5
        part = patch_rows(patch, 3, 4)  # rows 3, 4 and the last row repeated
        np.testing.assert_array_equal(np.asarray(part.patches[1].coeff), [3, 4, 4, 4])
        assert float(part.patches[0].coeff) == 2.0
        check_patch_rows(patch, 5)
        with pytest.raises(ValueError, match="built for 5 prompts applied to a set of 3"):
            check_patch_rows(patch, 3)
        other = per.replace(coeff=jnp.ones(4))
        with pytest.raises(ValueError, match=f"{kind.__name__}: per-sample fields disagree"):
            patch_n_rows(kind((per, other)))
    assert patch_n_rows(PromptOnly(per)) == 5 and patch_n_rows(Compose((shared,))) is None
