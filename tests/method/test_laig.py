"""LA-IG (refusal_jax.method.laig): the interpolated run equals the SAE-in-the-loop run, the
fast residual-gradient path matches the naive per-feature one, alpha batching and the fixed
jailbreak token, on the tiny model with JumpReLU SAEs (fixtures in tests/conftest.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refusal_jax import sae as sae_lib
from refusal_jax.core.batching import batches
from refusal_jax.core.model import forward
from refusal_jax.core.positions import ContentPositions
from refusal_jax.method.features import feature_set
from refusal_jax.method.interventions import Interpolate
from refusal_jax.method.laig import (
    _SAEInTheLoop,
    alpha_schedule,
    attribute_prompts,
    feature_attributions,
    la_ig,
    la_ig_naive,
    patched_runs,
    position_weights,
    subset_attributions,
)
from tests.support.tiny import TINY, TINY_D_SAE, padded_batch

CFG = TINY
D_SAE = TINY_D_SAE


def _batch(seed=0, pads=(0, 2, 4), t=9):
    return padded_batch(CFG.vocab_size, seed, pads, t)


def test_interpolated_run_equals_sae_in_the_loop(tiny_params, tiny_saes):
    """The identity behind the fast path: with affine decoders the SAE cancels out."""
    ids, mask = _batch()
    r = jax.random.normal(jax.random.PRNGKey(4), (CFG.d_model,))
    runs = patched_runs(tiny_params, CFG, ids, mask, r, refusal_token=5, error_mode="paper")
    enc, dec = jax.vmap(sae_lib.encode), jax.vmap(sae_lib.decode)
    f_patch = enc(tiny_saes, runs.x_ablated)
    e_patch = runs.x_patch - dec(tiny_saes, f_patch)
    for alpha in (0.0, 0.3, 0.9):
        loop = _SAEInTheLoop(
            tiny_saes, jnp.float32(alpha), f_patch, e_patch, jnp.zeros_like(f_patch)
        )
        fast = Interpolate(jnp.float32(alpha), runs.x_patch, jnp.zeros_like(runs.x_patch))
        a = forward(tiny_params, CFG, ids, mask, patch=loop).logits
        b = forward(tiny_params, CFG, ids, mask, patch=fast).logits
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


@pytest.mark.parametrize("error_mode", ["paper", "ablated"])
def test_la_ig_fast_matches_naive(tiny_params, tiny_saes, error_mode):
    ids, mask = _batch()
    r = jax.random.normal(jax.random.PRNGKey(5), (CFG.d_model,)) * 3
    fast = la_ig(tiny_params, CFG, ids, mask, r, refusal_token=7, n_steps=4, error_mode=error_mode)
    per_token = feature_attributions(fast, tiny_saes, jnp.ones(mask.shape), per_token=True)
    naive = la_ig_naive(
        tiny_params, CFG, tiny_saes, ids, mask, fast.runs, (fast.alphas, fast.weights)
    )
    valid = np.asarray(mask, bool)
    ref = np.asarray(naive)[:, valid]
    got = np.asarray(per_token)[:, valid]
    assert np.abs(ref).max() > 1e-3, "attributions vanished: the test would prove little"
    np.testing.assert_allclose(got, ref, atol=1e-5 * max(1.0, np.abs(ref).max()), rtol=1e-4)
    # Position-mean reduction and subset attributions agree with the per-token tensor.
    w = position_weights(mask, skip=1)
    mean = feature_attributions(fast, tiny_saes, w)
    expect = (per_token * w[None, :, :, None]).sum(2) / w.sum(-1)[None, :, None]
    np.testing.assert_allclose(np.asarray(mean), np.asarray(expect), atol=1e-5)
    fs = feature_set([(0, 3), (1, 50), (2, 95)], CFG.n_layers, D_SAE)
    sub = subset_attributions(fast, tiny_saes, fs)
    for layer, f in fs.pairs():
        k = list(np.asarray(fs.idx[layer])).index(f)
        np.testing.assert_allclose(
            np.asarray(sub[layer, :, :, k]), np.asarray(per_token[layer, :, :, f]), atol=1e-5
        )


def test_la_ig_alpha_batching_and_fixed_token(tiny_params):
    ids, mask = _batch()
    r = jax.random.normal(jax.random.PRNGKey(6), (CFG.d_model,))
    a = la_ig(tiny_params, CFG, ids, mask, r, refusal_token=7, n_steps=6)
    b = la_ig(tiny_params, CFG, ids, mask, r, refusal_token=7, n_steps=6, alpha_batch=2)
    np.testing.assert_allclose(np.asarray(a.grad), np.asarray(b.grad), atol=1e-5)
    # The metric at alpha = 0 is the clean run's logit difference.
    clean = forward(tiny_params, CFG, ids, mask).logits[:, -1]
    jb = a.runs.jailbreak_token
    expect = float(jnp.sum(jnp.take_along_axis(clean, jb[:, None], -1)[:, 0] - clean[:, 7]))
    assert float(a.metric[0]) == pytest.approx(expect, rel=1e-4, abs=1e-4)
    # same n_steps as ``a``: the jailbreak token is a traced argument, so no new compile
    fixed = la_ig(tiny_params, CFG, ids, mask, r, refusal_token=7, jailbreak_token=9, n_steps=6)
    assert (np.asarray(fixed.runs.jailbreak_token) == 9).all()
    np.testing.assert_allclose(alpha_schedule(4)[0], [0, 0.25, 0.5, 0.75])
    with pytest.raises(ValueError, match="error_mode"):
        la_ig(tiny_params, CFG, ids, mask, r, refusal_token=7, error_mode="bogus")


@pytest.mark.parametrize(("rule", "alpha_batch"), [("left", None), ("gauss", 2)])
def test_attribute_prompts_equals_per_batch_la_ig(tiny_params, tiny_saes, rule, alpha_batch):
    """The prompt-set path (one compiled program per batch, the next batch dispatched before
    the last is pulled) gives each batch's la_ig + feature_attributions, the last batch padded
    and cut back; its throughput counts the calls."""
    ids, mask = padded_batch(CFG.vocab_size, 3, pads=(0, 2, 4, 1, 0), t=9)
    r = jax.random.normal(jax.random.PRNGKey(8), (CFG.d_model,)) * 3
    rule_pos = ContentPositions(special_ids=(3, 4), prefix_length=1)
    out = attribute_prompts(
        tiny_params, CFG, tiny_saes, ids, mask, r, refusal_token=7, positions=rule_pos,
        n_steps=3, alpha_rule=rule, batch_size=2, alpha_batch=alpha_batch,
    )  # fmt: skip
    ref, jbs = [], []
    for b_ids, b_mask, n in batches(np.asarray(ids), np.asarray(mask), 2):
        res = la_ig(
            tiny_params, CFG, b_ids, b_mask, r, refusal_token=7, n_steps=3, alpha_rule=rule,
            alpha_batch=alpha_batch,
        )  # fmt: skip
        w = position_weights(b_mask, ids=b_ids, positions=rule_pos)
        ref.append(np.asarray(feature_attributions(res, tiny_saes, w))[:, :n])
        jbs.append(np.asarray(res.runs.jailbreak_token)[:n])
    ref = np.concatenate(ref, axis=1)
    assert out.attributions.shape == (CFG.n_layers, 5, D_SAE)
    assert np.abs(ref).max() > 1e-3, "attributions vanished: the test would prove little"
    np.testing.assert_allclose(out.attributions, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    np.testing.assert_array_equal(out.jailbreak_token, np.concatenate(jbs))
    assert out.metric.shape == (3, 3)
    t = out.throughput
    assert (t.prompts, t.calls, t.batch_size) == (5, 3, 2)
    assert 0 < t.first_call_seconds <= t.seconds and t.prompts_per_s > 0


def test_attribute_prompts_checks_its_inputs_once(tiny_params, tiny_saes):
    ids, mask = _batch()
    r = jnp.ones(CFG.d_model)
    kw = dict(refusal_token=7, n_steps=2)
    with pytest.raises(ValueError, match="batch_size"):
        attribute_prompts(tiny_params, CFG, tiny_saes, ids, mask, r, batch_size=0, **kw)
    bad = np.asarray(ids).copy()
    bad[1, -1] = CFG.vocab_size
    with pytest.raises(ValueError, match="attribute_prompts: input_ids holds token id"):
        attribute_prompts(tiny_params, CFG, tiny_saes, bad, mask, r, **kw)
    with pytest.raises(ValueError, match="attribute_prompts direction"):
        attribute_prompts(tiny_params, CFG, tiny_saes, ids, mask, r * jnp.nan, **kw)
    with pytest.raises(ValueError, match=r"expected equal \[N, T\], N > 0"):
        attribute_prompts(tiny_params, CFG, tiny_saes, ids[:0], mask[:0], r, **kw)
