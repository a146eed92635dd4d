"""Feature edges (refusal_jax.method.edges) against central finite differences of the downstream
attribution, on a tiny Gemma-2 with ReLU SAEs (continuous, so finite differences are meaningful)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refusal_jax import sae as sae_lib
from refusal_jax.method.edges import downstream_attribution, feature_edges
from refusal_jax.method.laig import la_ig, position_weights
from tests.support.tiny import TINY4

CFG = TINY4
D_SAE = 48
FEATURES = jnp.asarray([3, 10, 17, 40])


@pytest.fixture(scope="module")
def setup(tiny4_params):
    params = tiny4_params
    cfg = sae_lib.SAEConfig(architecture="relu", d_in=CFG.d_model, d_sae=D_SAE)
    layers = []
    for k in jax.random.split(jax.random.PRNGKey(1), CFG.n_layers):
        k1, k2, k3 = jax.random.split(k, 3)
        w = jax.random.normal(k1, (D_SAE, CFG.d_model))
        w = w / jnp.linalg.norm(w, axis=-1, keepdims=True)
        layers.append(
            sae_lib.SAE(
                W_enc=w.T + 0.1 * jax.random.normal(k2, (CFG.d_model, D_SAE)),
                b_enc=-0.1 + 0.05 * jax.random.normal(k3, (D_SAE,)),
                W_dec=w,
                b_dec=jnp.zeros((CFG.d_model,)),
                threshold=jnp.zeros((D_SAE,)),
                cfg=cfg,
            )
        )
    saes = sae_lib.stack_saes(layers)
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 64, size=(2, 10))
    mask = np.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0
    direction = jax.random.normal(jax.random.PRNGKey(2), (CFG.d_model,))
    res = la_ig(params, CFG, ids, mask, direction, refusal_token=5, n_steps=4)
    return params, saes, res, jnp.asarray(ids), jnp.asarray(mask)


def _finite_difference(setup, upstream, downstream, source, weights, eps=1e-2):
    """Directional derivative of A_d,J[b] along out_u[b,t] += Δf_u[b,t,i] W_dec,u[i], for all i,
    applied at layer ``source`` (u itself, or d-1 when intermediate layers are stopped)."""
    params, saes, res, ids, mask = setup
    sae_u = sae_lib.sae_layer(saes, upstream)
    df = sae_lib.encode(sae_u, res.runs.x_ablated[upstream]) - sae_lib.encode(
        sae_u, res.runs.x_clean[upstream]
    )
    grad_d = res.grad[downstream]

    def a(delta):
        return downstream_attribution(
            params, CFG, saes, grad_d, ids, mask, weights, downstream, FEATURES, source, delta
        )

    v = jnp.moveaxis(df, -1, 0)[..., None] * sae_u.W_dec[:, None, None, :]  # [S, B, T, D]
    fd = jax.jit(jax.vmap(lambda v: (a(eps * v) - a(-eps * v)) / (2 * eps)))(v)  # [S, B, K]
    return np.asarray(jnp.moveaxis(fd, 0, 1))  # [B, S, K]


@pytest.mark.parametrize("stop", [False, True])
def test_edges_match_finite_differences(setup, stop):
    params, saes, res, ids, mask = setup
    weights = position_weights(mask, skip=1)
    u, d = 0, 3
    got = np.asarray(
        feature_edges(
            params,
            CFG,
            saes,
            res,
            ids,
            mask,
            upstream=u,
            downstream=d,
            features=FEATURES,
            weights=weights,
            stop_intermediate=stop,
        )
    )
    assert got.shape == (2, D_SAE, len(FEATURES))
    fd = _finite_difference(setup, u, d, d - 1 if stop else u, weights)
    scale = np.abs(fd).max()
    assert scale > 1e-4, "degenerate setup: no edge signal"
    err = np.abs(got - fd).max() / scale
    print(f"stop={stop}: max rel err {err:.2e}")
    assert err < 5e-3, f"stop={stop}: max |E - FD| / max |FD| = {err:.2e}"


def test_stopping_matters_and_adjacent_layers_agree(setup):
    params, saes, res, ids, mask = setup
    kw = dict(features=FEATURES)
    full = feature_edges(params, CFG, saes, res, ids, mask, upstream=0, downstream=3, **kw)
    stop = feature_edges(
        params, CFG, saes, res, ids, mask, upstream=0, downstream=3, stop_intermediate=True, **kw
    )
    assert not np.allclose(full, stop, rtol=1e-2, atol=1e-6)
    adj = [
        feature_edges(
            params, CFG, saes, res, ids, mask, upstream=1, downstream=2, stop_intermediate=s, **kw
        )
        for s in (False, True)
    ]
    np.testing.assert_allclose(adj[0], adj[1], rtol=1e-5, atol=1e-7)


def test_bad_layers_raise(setup):
    params, saes, res, ids, mask = setup
    with pytest.raises(ValueError, match="upstream < downstream"):
        feature_edges(params, CFG, saes, res, ids, mask, upstream=2, downstream=2, features=[0])
