"""LA-IG quadrature rules: exactness on polynomials, convergence of attributions to a high-N
reference, and the paper's left rule unchanged."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refusal_jax import sae as sae_lib
from refusal_jax.core.config import gemma2_config
from refusal_jax.core.model import init_params
from refusal_jax.method.laig import (
    ALPHA_RULES,
    alpha_schedule,
    feature_attributions,
    la_ig,
    la_ig_fn,
    la_ig_naive,
    position_weights,
    quadrature_ends,
)

CFG = gemma2_config(
    vocab_size=48,
    d_model=16,
    n_layers=2,
    n_heads=2,
    n_kv_heads=1,
    head_dim=8,
    d_mlp=32,
    sliding_window=6,
    eos_token_ids=(1,),
)
D_SAE = 40


def exact_degree(rule: str, n: int) -> int:
    """The degree up to which each rule with n nodes integrates polynomials exactly."""
    fixed = {"left": 0, "right": 0, "midpoint": 1, "trapezoid": 1}
    # Gauss-Legendre 2N - 1; each end node fixed in advance costs one degree
    return fixed[rule] if rule in fixed else 2 * n - {"gauss": 1, "radau": 2, "lobatto": 3}[rule]


@pytest.mark.parametrize("rule", ALPHA_RULES)
@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_rule_integrates_polynomials_of_its_order(rule, n):
    alphas, weights = alpha_schedule(n, rule)
    assert alphas.shape == weights.shape == (n,)
    assert alphas.dtype == weights.dtype == np.float32
    assert ((alphas >= 0) & (alphas <= 1)).all()
    assert weights.sum() == pytest.approx(1.0, abs=1e-6)
    a, w = alphas.astype(np.float64), weights.astype(np.float64)
    exact = exact_degree(rule, n)
    for degree in range(exact + 1):
        # int_0^1 x^d dx = 1 / (d + 1), to float32 rounding of nodes and weights
        assert (w * a**degree).sum() == pytest.approx(1 / (degree + 1), abs=2e-6), degree
    # ... and not beyond its order: the next degree is off by more than rounding (the Gauss
    # family's error at the next degree shrinks like 1/(2N)!^2, below float32 rounding for
    # larger N)
    if rule not in ("gauss", "radau", "lobatto") or n <= 3:
        assert abs((w * a ** (exact + 1)).sum() - 1 / (exact + 2)) > 5e-5
    # the end nodes the rule promises are exactly 0 and 1 (la_ig computes them the cheap way)
    assert quadrature_ends(alphas) == (
        rule in ("left", "trapezoid", "lobatto"),
        rule in ("right", "trapezoid", "lobatto", "radau"),
    )


def test_rule_values_and_errors():
    np.testing.assert_array_equal(alpha_schedule(4)[0], np.float32([0, 0.25, 0.5, 0.75]))
    np.testing.assert_array_equal(alpha_schedule(4)[1], np.full(4, 0.25, np.float32))
    np.testing.assert_allclose(alpha_schedule(3, "trapezoid")[1], [0.25, 0.5, 0.25])
    np.testing.assert_allclose(alpha_schedule(1, "gauss"), ([0.5], [1.0]))
    np.testing.assert_allclose(alpha_schedule(3, "lobatto"), ([0, 0.5, 1], [1 / 6, 2 / 3, 1 / 6]))
    np.testing.assert_allclose(alpha_schedule(2, "radau"), ([1 / 3, 1], [0.75, 0.25]))
    np.testing.assert_allclose(alpha_schedule(1, "radau"), ([1.0], [1.0]))
    with pytest.raises(ValueError, match="lobatto rule needs n_steps >= 2"):
        alpha_schedule(1, "lobatto")
    with pytest.raises(ValueError, match="non-empty vector"):
        quadrature_ends(np.zeros(0))
    with pytest.raises(ValueError, match="unknown alpha rule 'simpson'"):
        alpha_schedule(4, "simpson")
    with pytest.raises(ValueError, match="trapezoid rule needs n_steps >= 2"):
        alpha_schedule(1, "trapezoid")
    with pytest.raises(ValueError, match="n_steps must be a positive int"):
        alpha_schedule(0)


@pytest.fixture(scope="module")
def model():
    p = init_params(CFG, jax.random.PRNGKey(0), scale=0.3)
    params = p | {"embed": p["embed"] * 0.2}
    keys = jax.random.split(jax.random.PRNGKey(7), CFG.n_layers)
    scfg = sae_lib.SAEConfig(architecture="jumprelu", d_in=CFG.d_model, d_sae=D_SAE)
    layers = []
    for k in keys:
        k1, k2 = jax.random.split(k)
        w_dec = jax.random.normal(k1, (D_SAE, CFG.d_model))
        w_dec = w_dec / jnp.linalg.norm(w_dec, axis=-1, keepdims=True)
        layers.append(
            sae_lib.SAE(
                W_enc=w_dec.T * 0.5,
                b_enc=jnp.zeros((D_SAE,)),
                W_dec=w_dec,
                b_dec=0.1 * jax.random.normal(k2, (CFG.d_model,)),
                threshold=jnp.full((D_SAE,), 0.2),
                cfg=scfg,
            )
        )
    ids = jnp.asarray([[0, 2, 5, 9, 11, 3], [2, 7, 8, 4, 6, 10]], jnp.int32)
    mask = jnp.asarray([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], jnp.int32)
    r = jax.random.normal(jax.random.PRNGKey(5), (CFG.d_model,)) * 4
    return params, sae_lib.stack_saes(layers), ids, mask, r


def _attr(model, n, rule):
    params, saes, ids, mask, r = model
    res = la_ig(
        params, CFG, ids, mask, r, refusal_token=7, n_steps=n, alpha_rule=rule, alpha_batch=16
    )
    return np.asarray(feature_attributions(res, saes, position_weights(mask)))


@pytest.mark.slow
def test_attributions_converge_to_high_n_reference(model):
    ref = _attr(model, 256, "gauss")
    assert np.abs(ref).max() > 1e-3, "attributions vanished: the test would prove little"

    def err(n, rule):
        return np.linalg.norm(_attr(model, n, rule) - ref) / np.linalg.norm(ref)

    # one compiled program per (N, uniform or weighted): rules of the same N share it
    errors = {rule: [err(n, rule) for n in (2, 4, 16)] for rule in ALPHA_RULES}
    for rule, (e2, e4, e16) in errors.items():
        assert e16 < e4 < e2, (rule, errors[rule])
    for rule in ("midpoint", "trapezoid"):
        # second order: 4x more steps cut the error by well over 4x (first order: ~4x)
        assert errors[rule][2] < errors[rule][1] / 8, (rule, errors[rule])
    for rule in ("midpoint", "trapezoid", "gauss", "lobatto", "radau"):
        assert errors[rule][2] < errors["left"][2] / 10, (rule, errors)
    for rule in ("lobatto", "radau"):
        # higher order: from N = 2 to N = 4 the error falls far more than a second-order rule's
        assert errors[rule][1] < errors[rule][0] / 30, (rule, errors[rule])
    # Gauss-Legendre: at float32 rounding of the reference from N = 4 on
    assert errors["gauss"][1] < 1e-5, errors["gauss"]


def test_weighted_path_matches_naive_and_uniform_path(model):
    """Weights go through the scanned/vmapped path and the reference path alike; the uniform
    path (left: grads summed then divided by N) equals the weighted one given weights 1/N."""
    params, saes, ids, mask, r = model
    fast = la_ig(params, CFG, ids, mask, r, refusal_token=7, n_steps=3, alpha_rule="gauss")
    per_token = feature_attributions(fast, saes, jnp.ones(mask.shape), per_token=True)
    naive = la_ig_naive(params, CFG, saes, ids, mask, fast.runs, alpha_schedule(3, "gauss"))
    valid = np.asarray(mask, bool)
    ref = np.asarray(naive)[:, valid]
    assert np.abs(ref).max() > 1e-3
    np.testing.assert_allclose(
        np.asarray(per_token)[:, valid], ref, atol=1e-5 * np.abs(ref).max(), rtol=1e-4
    )
    np.testing.assert_array_equal(np.asarray(fast.weights), alpha_schedule(3, "gauss")[1])

    alphas, weights = (jnp.asarray(a) for a in alpha_schedule(10, "left"))
    args = (params, CFG, ids, mask, r, 7, -1, alphas, weights)
    uniform = la_ig_fn(*args, uniform=True, ends=quadrature_ends(alphas))  # what la_ig runs
    weighted = la_ig_fn(*args, uniform=False, alpha_batch=4)
    left = la_ig(params, CFG, ids, mask, r, refusal_token=7, n_steps=10)
    np.testing.assert_array_equal(np.asarray(left.grad), np.asarray(uniform.grad))
    np.testing.assert_allclose(
        np.asarray(weighted.grad), np.asarray(uniform.grad), rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize(
    "rule,n,alpha_batch",
    [
        ("lobatto", 3, None),
        ("lobatto", 3, 2),
        ("lobatto", 5, 2),
        ("radau", 3, None),
        ("left", 4, 3),
        ("right", 2, None),
    ],
)
def test_cheap_ends_equal_full_interpolated_runs(model, rule, n, alpha_batch):
    """alpha = 0 (the clean run's forward reused) and alpha = 1 (only the last layer, through
    the unembedding) give what running the interpolated model at those alphas gives."""
    params, saes, ids, mask, r = model
    alphas, weights = (jnp.asarray(a) for a in alpha_schedule(n, rule))
    args = (params, CFG, ids, mask, r, 7, -1, alphas, weights, "paper", alpha_batch)
    uniform = rule in ("left", "right")
    ends = quadrature_ends(alphas)
    assert ends != (False, False)
    cheap = la_ig_fn(*args, uniform=uniform, ends=ends)
    full = la_ig_fn(*args, uniform=uniform, ends=(False, False))
    scale = np.abs(np.asarray(full.grad)).max()
    assert scale > 1e-3
    np.testing.assert_allclose(np.asarray(cheap.grad), np.asarray(full.grad), atol=1e-6 * scale)
    np.testing.assert_allclose(np.asarray(cheap.metric), np.asarray(full.metric), rtol=1e-5)
    for field in ("x_clean", "x_ablated", "x_patch", "jailbreak_token"):
        np.testing.assert_allclose(
            np.asarray(getattr(cheap.runs, field)), np.asarray(getattr(full.runs, field)),
            rtol=1e-6, atol=1e-6,
        )  # fmt: skip


def test_broken_ends_promise_gives_nan(model):
    """``ends`` claims an alpha = 0 / alpha = 1 node the alphas do not have: NaN, not numbers
    computed at the wrong alpha."""
    params, saes, ids, mask, r = model
    alphas, weights = (jnp.asarray(a) for a in alpha_schedule(2, "gauss"))
    args = (params, CFG, ids, mask, r, 7, -1, alphas, weights)
    for ends in ((True, False), (False, True)):
        assert np.isnan(np.asarray(la_ig_fn(*args, uniform=False, ends=ends).grad)).all()
    assert np.isfinite(np.asarray(la_ig_fn(*args, uniform=False).grad)).all()


def test_gradient_at_alpha_one_lives_in_the_last_layer(model):
    """Why alpha = 1 is free: every layer's output is replaced by x_patch, so nothing below the
    last layer reaches the metric (exact zeros from the full interpolated run)."""
    params, saes, ids, mask, r = model
    one = jnp.ones((1,), jnp.float32)
    g = np.asarray(la_ig_fn(params, CFG, ids, mask, r, 7, -1, one, one, uniform=False).grad)
    assert (g[:-1] == 0).all()
    assert np.abs(g[-1, :, -1]).max() > 1e-3  # the last layer, last position
    assert (g[-1, :, :-1] == 0).all()


@pytest.mark.parametrize("rule", ["lobatto", "radau"])
def test_end_node_rules_match_naive_sae_in_the_loop(model, rule):
    """The new rules through la_ig (cheap ends) against the SAE-in-the-loop reference, which
    runs every node, ends included, with the SAEs in the model."""
    params, saes, ids, mask, r = model
    fast = la_ig(params, CFG, ids, mask, r, refusal_token=7, n_steps=3, alpha_rule=rule)
    per_token = feature_attributions(fast, saes, jnp.ones(mask.shape), per_token=True)
    naive = la_ig_naive(params, CFG, saes, ids, mask, fast.runs, alpha_schedule(3, rule))
    valid = np.asarray(mask, bool)
    ref = np.asarray(naive)[:, valid]
    assert np.abs(ref).max() > 1e-3
    np.testing.assert_allclose(
        np.asarray(per_token)[:, valid], ref, atol=1e-5 * np.abs(ref).max(), rtol=1e-4
    )


def test_pipeline_config_carries_the_rule(model):
    """PipelineConfig.alpha_rule reaches the paper pipeline's attributions (demo, experiments:
    ``--alpha-rule``); a rule unknown or short of steps fails at construction."""
    from refusal_jax.study.pipeline import PipelineConfig, accumulate_attributions

    params, saes, ids, mask, r = model
    pc = PipelineConfig(n_steps=2, alpha_rule="radau", laig_batch_size=2)
    got = accumulate_attributions(params, CFG, saes, ids, mask, r, 7, pc)
    res = la_ig(params, CFG, ids, mask, r, refusal_token=7, n_steps=2, alpha_rule="radau")
    want = np.asarray(feature_attributions(res, saes, position_weights(mask)))
    np.testing.assert_allclose(got, want, atol=1e-6 * np.abs(want).max(), rtol=1e-5)
    left = accumulate_attributions(params, CFG, saes, ids, mask, r, 7, PipelineConfig(n_steps=2))
    assert np.abs(left - want).max() > 1e-3 * np.abs(want).max()
    with pytest.raises(ValueError, match="unknown alpha rule"):
        PipelineConfig(alpha_rule="simpson")
    with pytest.raises(ValueError, match="lobatto"):
        PipelineConfig(alpha_rule="lobatto", n_steps=1)
