"""LA-IG parity with a PyTorch reference written the way the original computes it (SAEs in the
loop via forward hooks on a Hugging Face Gemma-2, one backward per alpha; tests/support/torch_laig_ref.py).

The JAX side is the fast path: SAE-free interpolated runs, residual gradients, attributions from
``feature_attributions(..., per_token=True)``. Same random weights, same JumpReLU SAEs.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ports.hf import load_hf  # noqa: E402
from refusal_jax import sae as sae_lib  # noqa: E402
from refusal_jax.method.laig import feature_attributions, la_ig, position_weights  # noqa: E402
from tests.support.hf_tiny import left_padded_batch, make_hf_model  # noqa: E402
from tests.support.torch_laig_ref import la_ig_torch, saes_from_jax  # noqa: E402

D_SAE = 96
REFUSAL_TOKEN = 5
N_STEPS = 6


def random_saes(n_layers, d_model, d_sae, seed=0, threshold=0.08):
    """JumpReLU SAEs with encoder ~ decoder^T so a realistic fraction of features fires."""
    layers = []
    cfg = sae_lib.SAEConfig(architecture="jumprelu", d_in=d_model, d_sae=d_sae)
    for k in jax.random.split(jax.random.PRNGKey(seed), n_layers):
        k1, k2, k3, k4 = jax.random.split(k, 4)
        w_dec = jax.random.normal(k1, (d_sae, d_model))
        w_dec = w_dec / jnp.linalg.norm(w_dec, axis=-1, keepdims=True)
        layers.append(
            sae_lib.SAE(
                W_enc=w_dec.T + 0.1 * jax.random.normal(k2, (d_model, d_sae)),
                b_enc=0.02 * jax.random.normal(k3, (d_sae,)),
                W_dec=w_dec,
                b_dec=0.05 * jax.random.normal(k4, (d_model,)),
                threshold=jnp.full((d_sae,), threshold),
                cfg=cfg,
            )
        )
    return sae_lib.stack_saes(layers)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    hf = make_hf_model("gemma2")
    folder = tmp_path_factory.mktemp("gemma2_laig")
    hf.save_pretrained(folder)
    cfg, params = load_hf(folder)
    saes = random_saes(cfg.n_layers, cfg.d_model, D_SAE)
    direction = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (cfg.d_model,)))
    ids, mask = left_padded_batch(seed=2)
    return hf, cfg, params, saes, direction, ids, mask


def test_saes_have_a_realistic_active_fraction(setup):
    hf, cfg, params, saes, direction, ids, mask = setup
    from refusal_jax.core.model import forward

    out = forward(params, cfg, jnp.asarray(ids), jnp.asarray(mask), return_residuals=True)
    f = jax.vmap(sae_lib.encode)(saes, out.resid_post)
    frac = float((np.asarray(f) > 0)[:, mask.astype(bool)].mean())
    assert 0.02 < frac < 0.5, frac


@pytest.mark.parametrize("error_mode", ["paper", "ablated"])
def test_per_token_attributions_match_torch(setup, error_mode):
    hf, cfg, params, saes, direction, ids, mask = setup
    ref, jb_ref = la_ig_torch(
        hf,
        saes_from_jax(saes),
        ids,
        mask,
        direction,
        refusal_token=REFUSAL_TOKEN,
        n_steps=N_STEPS,
        error_mode=error_mode,
    )
    res = la_ig(
        params,
        cfg,
        ids,
        mask,
        direction,
        refusal_token=REFUSAL_TOKEN,
        n_steps=N_STEPS,
        error_mode=error_mode,
    )
    np.testing.assert_array_equal(np.asarray(res.runs.jailbreak_token), jb_ref)
    got = np.asarray(feature_attributions(res, saes, position_weights(mask), per_token=True))
    valid = mask.astype(bool)
    got, ref = got[:, valid], ref[:, valid]  # [L, n_tokens, d_sae]
    scale = np.abs(ref).max()
    assert scale > 1e-3, "degenerate setup: no attribution signal"
    assert (np.abs(ref) > 1e-3 * scale).mean() > 0.01, "too few non-zero attributions"
    err = np.abs(got - ref).max() / scale
    print(f"{error_mode}: max rel err {err:.2e}, max abs {np.abs(got - ref).max():.2e}")
    assert err <= 1e-4, f"{error_mode}: max |A_jax - A_torch| / max |A| = {err:.2e}"
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * scale)
