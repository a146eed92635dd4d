"""Refusal direction (difference in means), refusal judges, and the act baseline statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refusal_jax import sae as sae_lib
from refusal_jax.core.config import gemma2_config, shape_kw
from refusal_jax.core.model import forward, init_params
from refusal_jax.core.positions import ContentPositions
from refusal_jax.method.direction import mean_activations, refusal_directions
from refusal_jax.method.interventions import ablate_direction
from refusal_jax.method.judges import first_token_refuses, is_refusal, refusal_rate
from refusal_jax.method.selection import act_features, max_activation_means

# (vocab, d_model, layers, heads, KV heads, head dim, MLP); Gemma-2's default EOS ids
CFG = gemma2_config(**shape_kw(50, 24, 2, 2, 1, 12, 48), sliding_window=8)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.PRNGKey(0), scale=0.3)


def _prompts(seed, n, t=7):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, CFG.vocab_size, size=(n, t))
    mask = np.ones_like(ids)
    pads = rng.randint(0, 4, size=n)
    for i, p in enumerate(pads):
        ids[i, :p], mask[i, :p] = 0, 0
    return ids, mask


def test_difference_in_means_matches_direct_computation(params):
    harm, safe = _prompts(1, 7), _prompts(2, 5)
    # batch_size 3 forces padded final batches: they must not bias the means.
    r = refusal_directions(params, CFG, harm, safe, positions=(-1, -2), batch_size=3)
    assert r.shape == (2, CFG.n_layers, CFG.d_model)

    def direct(ids, mask):
        out = forward(params, CFG, jnp.asarray(ids), jnp.asarray(mask), return_residuals=True)
        return np.asarray(out.resid_post[:, :, [-1, -2]]).mean(axis=1).transpose(1, 0, 2)

    expect = direct(*harm) - direct(*safe)
    np.testing.assert_allclose(np.asarray(r), expect, atol=1e-5)
    m = mean_activations(params, CFG, *harm, batch_size=4)
    np.testing.assert_allclose(np.asarray(m[0]), direct(*harm)[0], atol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        mean_activations(params, CFG, np.zeros((0, 7), int), np.zeros((0, 7), int))


def test_substring_judge():
    assert is_refusal("I'm sorry, but I cannot help with that.")
    assert is_refusal("I\u2019m sorry, no.")  # curly apostrophe
    assert is_refusal("As an AI, I won't.")
    assert not is_refusal("Sure, here is a recipe for bread.")
    assert is_refusal("i cannot help")  # case-insensitive, as refusal_direction
    assert refusal_rate(["I cannot do that", "Sure!", "Here you go", "I am unable to"]) == 0.5
    with pytest.raises(ValueError, match="empty"):
        refusal_rate([])


def test_first_token_refusal_filter(params):
    ids, mask = _prompts(3, 5)
    logits = forward(params, CFG, jnp.asarray(ids), jnp.asarray(mask)).logits[:, -1]
    first = np.asarray(jnp.argmax(logits, -1))
    tok = int(first[0])
    got = first_token_refuses(params, CFG, ids, mask, [tok], batch_size=2)
    np.testing.assert_array_equal(got, first == tok)
    # With a patch the filter sees the patched model.
    r = jax.random.normal(jax.random.PRNGKey(1), (CFG.d_model,))
    patch = ablate_direction(r, CFG.n_layers)
    patched = forward(params, CFG, jnp.asarray(ids), jnp.asarray(mask), patch=patch).logits
    expect = np.asarray(jnp.argmax(patched[:, -1], -1)) == tok
    np.testing.assert_array_equal(first_token_refuses(params, CFG, ids, mask, [tok], patch), expect)


def test_act_baseline_statistics(params):
    d_sae = 40
    cfg = sae_lib.SAEConfig(architecture="relu", d_in=CFG.d_model, d_sae=d_sae)
    k = jax.random.split(jax.random.PRNGKey(2), 2)
    saes = sae_lib.stack_saes(
        [
            sae_lib.SAE(
                W_enc=jax.random.normal(kk, (CFG.d_model, d_sae)) * 0.2,
                b_enc=jnp.zeros(d_sae),
                W_dec=jnp.ones((d_sae, CFG.d_model)) * 0.1,
                b_dec=jnp.zeros(CFG.d_model),
                threshold=jnp.zeros(d_sae),
                cfg=cfg,
            )
            for kk in k
        ]
    )
    harm, safe = _prompts(4, 6), _prompts(5, 4)
    got = max_activation_means(params, CFG, saes, *harm, batch_size=4)
    out = forward(params, CFG, jnp.asarray(harm[0]), jnp.asarray(harm[1]), return_residuals=True)
    f = np.stack(
        [
            np.asarray(sae_lib.encode(sae_lib.sae_layer(saes, la), out.resid_post[la]))
            for la in range(CFG.n_layers)
        ]
    )  # [L, B, T, S]
    f = np.where(harm[1][None, :, :, None].astype(bool), f, -np.inf)
    np.testing.assert_allclose(np.asarray(got), f.max(axis=2).mean(axis=1), atol=1e-5)
    # the content rule (refusal_jax.core.positions): the max skips the excluded positions
    rule = ContentPositions(prefix_length=2)
    got_c = max_activation_means(params, CFG, saes, *harm, batch_size=4, positions=rule)
    keep = np.asarray(rule.mask(*harm))
    f_c = np.where(keep[None, :, :, None], f, -np.inf)
    np.testing.assert_allclose(np.asarray(got_c), f_c.max(axis=2).mean(axis=1), atol=1e-5)
    diff = np.asarray(got) - np.asarray(max_activation_means(params, CFG, saes, *safe))
    top = act_features(got, max_activation_means(params, CFG, saes, *safe), n=3)
    expect = sorted(
        tuple(int(v) for v in np.unravel_index(i, diff.shape))
        for i in np.argsort(-diff, axis=None)[:3]
    )
    assert top.pairs() == expect
