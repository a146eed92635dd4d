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


def write_gemmascope2(folder, arrays, layer, l0, kind="sae", model_name="google/gemma-3-1b-it"):
    """A Gemma Scope 2 SAE folder as released (``params.safetensors`` with lower-case keys and
    ``config.json``), written with the project's safetensors writer. ``arrays`` uses the
    release's names (w_enc [d, S], w_dec [S, d], b_enc, b_dec, threshold[, affine_skip_connection])."""
    import json
    from pathlib import Path

    from ports.safetensors_io import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(arrays, folder / "params.safetensors")
    hook_in = f"model.layers.{layer}.output"
    hook_out = hook_in
    if kind == "transcoder":
        hook_in = f"model.layers.{layer}.pre_feedforward_layernorm.output"
        hook_out = f"model.layers.{layer}.post_feedforward_layernorm.output"
    cfg = {
        "hf_hook_point_in": hook_in,
        "hf_hook_point_out": hook_out,
        "width": int(arrays["w_enc"].shape[1]),
        "model_name": model_name,
        "architecture": "jump_relu",
        "l0": l0,
        "affine_connection": "affine_skip_connection" in arrays,
        "type": kind,
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def gemmascope_arrays(seed=0, d=D_IN, s=D_SAE):
    """Random GemmaScope JumpReLU arrays (the release's params.npz key names), float32."""
    r = np.random.default_rng(seed)
    return {
        "W_enc": r.normal(0, 0.5, (d, s)).astype(np.float32),
        "W_dec": r.normal(0, 0.5, (s, d)).astype(np.float32),
        "b_enc": r.normal(0, 0.2, s).astype(np.float32),
        "b_dec": r.normal(0, 0.3, d).astype(np.float32),
        "threshold": r.uniform(0.0, 0.4, s).astype(np.float32),
    }


def gemmascope2_arrays(seed=0, d=D_IN, s=D_SAE):
    """The same random arrays under Gemma Scope 2's key names (w_enc, w_dec), float32."""
    return {k.lower(): v for k, v in gemmascope_arrays(seed, d, s).items()}


def gemmascope2_ref(a, x):
    """Gemma Scope 2's JumpReLU in float64 numpy: (features, reconstruction)."""
    a = {k: np.asarray(v, np.float64) for k, v in a.items()}
    pre = np.asarray(x, np.float64) @ a["w_enc"] + a["b_enc"]
    f = (pre > a["threshold"]) * np.maximum(pre, 0)
    return f, f @ a["w_dec"] + a["b_dec"]
