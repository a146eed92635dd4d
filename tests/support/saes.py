"""Random SAEs of every architecture and a plain-numpy reference of encode/decode (the formats
and the SAE layer are tested against it)."""

import jax.numpy as jnp
import numpy as np

from refusal_jax import sae as sae_lib

D_IN, D_SAE = 12, 40


def random_sae(arch, seed=0, k=None, apply_b_dec=False, input_scale=1.0, d_in=D_IN, d_sae=D_SAE):
    rng = np.random.default_rng(seed)
    cfg = sae_lib.SAEConfig(
        architecture=arch,
        d_in=d_in,
        d_sae=d_sae,
        k=k,
        apply_b_dec_to_input=apply_b_dec,
        input_scale=input_scale,
    )
    thr = rng.uniform(0.0, 0.4, d_sae) if arch in ("jumprelu", "batchtopk") else np.zeros(d_sae)
    return sae_lib.SAE(
        W_enc=jnp.asarray(rng.normal(0, 0.5, (d_in, d_sae)), jnp.float32),
        b_enc=jnp.asarray(rng.normal(0, 0.2, d_sae), jnp.float32),
        W_dec=jnp.asarray(rng.normal(0, 0.5, (d_sae, d_in)), jnp.float32),
        b_dec=jnp.asarray(rng.normal(0, 0.3, d_in), jnp.float32),
        threshold=jnp.asarray(thr, jnp.float32),
        cfg=cfg,
    )


def np_encode(sae, x):
    """The obvious per-architecture reference, in float64 numpy."""
    p = {k: np.asarray(getattr(sae, k), np.float64) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    thr = np.asarray(sae.threshold, np.float64)
    xi = np.asarray(x, np.float64) * sae.cfg.input_scale
    if sae.cfg.apply_b_dec_to_input:
        xi = xi - p["b_dec"]
    pre = xi @ p["W_enc"] + p["b_enc"]
    relu = np.maximum(pre, 0)
    arch = sae.cfg.architecture
    if arch == "relu":
        return relu
    if arch in ("jumprelu", "batchtopk"):
        return relu * (pre > thr)
    out = np.zeros_like(relu)
    for i in np.ndindex(relu.shape[:-1]):
        top = np.argsort(-relu[i])[: sae.cfg.k]
        out[i][top] = relu[i][top]
    return out


def np_decode(sae, f):
    W, b = np.asarray(sae.W_dec, np.float64), np.asarray(sae.b_dec, np.float64)
    return (f @ W + b) / sae.cfg.input_scale
