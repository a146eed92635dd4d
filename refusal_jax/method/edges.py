"""Edges between SAE features: how upstream-layer features drive downstream attributions.

Definitions (one batch, every sample separately; b = sample, t, t' = positions):

* downstream layer d, features J = (j_1..j_K); ḡ_d = the LA-IG mean gradient dm/d out_d
  (``LAIGResult.grad[d]``), held fixed (stop_gradient);
* the downstream attribution, as a function of the clean run's residual stream,
  A_d,j[b] = sum_t' w[b,t'] f_d,j[b,t'] (ḡ_d[b,t'] . W_dec,d[j]) / s_d
  with f_d = enc_d(out_d) the clean activations, w the position weights and s_d the SAE's
  input_scale (1 for plain SAEs);
* upstream layer u < d, every upstream feature i, Δf_u = f_patch,u - f_clean,u (the LA-IG
  feature change at u):
  E[b, i, j] = sum_t Δf_u[b,t,i] ∂A_d,j[b] / ∂f_u[b,t,i],
  with ∂A/∂f_u,i = (∂A/∂out_u) . W_dec,u[i] / s_u, because out_u = dec_u(f_u) + error and the
  decoder is affine. The derivative is taken at the clean run (attribution patching: the linear
  approximation around it); E[b,i,j] equals the directional derivative of A_d,j[b] along the
  perturbation out_u[b,t] += Δf_u[b,t,i] W_dec,u[i] / s_u at every position t at once.

``stop_intermediate``: contributions through the computation of layers strictly between u and d
are blocked, only the residual identity path of those layers is kept (their blocks see the
perturbation but their output change is stop_gradient-ed), i.e. out_l = out_{l-1} +
stop_gradient(block_l(out_{l-1}) - out_{l-1}) for u < l < d. Then ∂out_{d-1}/∂out_u = I, so the
derivative with respect to out_u is the derivative with respect to out_{d-1} (layer d's input);
that is how it is computed. For d = u + 1 both options agree.

The K downstream features are one vmapped VJP; E is reduced one downstream feature at a time, so
memory stays at one [B, T, d_sae] block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from refusal_jax import sae as sae_lib
from refusal_jax.core.config import ModelConfig
from refusal_jax.core.model import forward_fn
from refusal_jax.method.interventions import Interpolate
from refusal_jax.method.laig import LAIGResult
from refusal_jax.sae import SAE


def _scale(sae_l):
    return jnp.asarray(getattr(sae_l.cfg, "input_scale", 1.0), jnp.float32)


def downstream_attribution(
    params: dict,
    cfg: ModelConfig,
    saes: SAE,
    grad_d: jax.Array,
    ids: jax.Array,
    mask: jax.Array,
    weights: jax.Array,
    downstream: int,
    features: jax.Array,
    source_layer: int,
    delta: jax.Array,
) -> jax.Array:
    """A_d,J [B, K] of the run with ``delta`` [B, T, D] added to out_{source_layer}.

    grad_d [B, T, D]: LA-IG's residual gradient at layer ``downstream``; ids, mask, weights
    [B, T]; features [K] indices at layer ``downstream``."""
    L = cfg.n_layers
    full = jnp.zeros((L,) + delta.shape, delta.dtype).at[source_layer].set(delta)
    patch = Interpolate(jnp.float32(0.0), jnp.zeros_like(full), full)
    out = forward_fn(params, cfg, ids, mask, patch=patch, return_residuals=True)
    sae_d = sae_lib.sae_layer(saes, downstream)
    f = sae_lib.encode_features(sae_d, out.resid_post[downstream], features)  # [B, T, K]
    gw = jnp.einsum("btd,kd->btk", jax.lax.stop_gradient(grad_d), sae_d.W_dec[features])
    return jnp.einsum("btk,btk,bt->bk", f, gw, weights) / _scale(sae_d)


@functools.partial(jax.jit, static_argnames=("cfg", "upstream", "downstream", "stop_intermediate"))
def _edges(
    params, cfg, saes, result, ids, mask, weights, features, upstream, downstream, stop_intermediate
):
    runs = result.runs
    source = downstream - 1 if stop_intermediate else upstream
    x0 = jnp.zeros(runs.x_clean.shape[1:], runs.x_clean.dtype)
    grad_d = result.grad[downstream]

    def total(delta):  # sum over the batch: samples are independent, gradients stay per sample
        a = downstream_attribution(
            params, cfg, saes, grad_d, ids, mask, weights, downstream, features, source, delta
        )
        return a.sum(0)  # [K]

    _, vjp = jax.vjp(total, x0)
    K = features.shape[0]
    G = jax.vmap(lambda e: vjp(e)[0])(jnp.eye(K, dtype=x0.dtype))  # [K, B, T, D]

    sae_u = sae_lib.sae_layer(saes, upstream)
    df = sae_lib.encode(sae_u, runs.x_ablated[upstream]) - sae_lib.encode(
        sae_u, runs.x_clean[upstream]
    )  # [B, T, S]

    def one(g):  # g [B, T, D] -> [B, S]
        return jnp.einsum("bts,bts->bs", df, g @ sae_u.W_dec.T) / _scale(sae_u)

    return jnp.moveaxis(jax.lax.map(one, G), 0, -1)  # [B, S, K]


def feature_edges(
    params: dict,
    cfg: ModelConfig,
    saes: SAE,
    result: LAIGResult,
    ids: jax.Array,
    mask: jax.Array,
    *,
    upstream: int,
    downstream: int,
    features: jax.Array | list[int],
    weights: jax.Array | None = None,
    stop_intermediate: bool = False,
) -> jax.Array:
    """Edges E [B, d_sae_u, K] from every feature at layer ``upstream`` to the downstream
    features ``features`` [K] at layer ``downstream`` (see the module docstring).

    ``result``: :func:`refusal_jax.method.laig.la_ig` on the same ids/mask; ``weights`` [B, T]
    position weights (default: every real token; :func:`refusal_jax.method.laig.position_weights`
    skips BOS).
    """
    L = cfg.n_layers
    if not 0 <= upstream < downstream < L:
        raise ValueError(f"need 0 <= upstream < downstream < {L}, got {upstream}, {downstream}")
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    if result.runs.x_clean.shape[1:3] != ids.shape:
        raise ValueError(
            f"LA-IG result is for a {result.runs.x_clean.shape[1:3]} batch, ids are {ids.shape}"
        )
    features = jnp.atleast_1d(jnp.asarray(features, jnp.int32))
    if features.ndim != 1:
        raise ValueError(f"features must be a 1-D list of downstream indices, got {features.shape}")
    weights = mask.astype(jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    return _edges(
        params,
        cfg,
        saes,
        result,
        ids,
        mask,
        weights,
        features,
        upstream,
        downstream,
        stop_intermediate,
    )


__all__ = ["downstream_attribution", "feature_edges"]
