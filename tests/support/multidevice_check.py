"""Sharded vs single-device results on 8 fake CPU devices (run by tests/core/test_sharding.py in a
subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8; prints one JSON line).

For each layout (data x model) = 8x1 (data parallel), 2x4 (both), 1x8 (tensor parallel): the
model is loaded sharded from an HF folder (ports.hf.load_hf(mesh=)), SAEs are split over their
width, prompts over the data axis; forward logits, greedy generation and SAE encode are compared
with the same computations on one device, and LA-IG attributions from a sharded sweep with
``la_ig`` on one device. A Gemma 3 model (q/k
norms, local and global RoPE) and a Qwen3 model (q/k norms, head_dim != d_model / n_heads, untied)
are also loaded sharded (2x4, 1x8: their heads split) and compared on logits and greedy tokens.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ports.hf import load_hf, save_hf  # noqa: E402
from ports.loading import load_model  # noqa: E402
from refusal_jax import sae as sae_lib  # noqa: E402
from refusal_jax.core.checkpoint import save_model
from refusal_jax.core.config import ModelConfig, gemma2_config, gemma3_config  # noqa: E402
from refusal_jax.core.model import forward, generate, init_params  # noqa: E402
from refusal_jax.core.sharding import make_mesh, shard_batch, shard_saes  # noqa: E402
from refusal_jax.method.laig import feature_attributions, la_ig, position_weights  # noqa: E402
from refusal_jax.study.sweep import SweepConfig, run_sweep  # noqa: E402

CFG = gemma2_config(
    vocab_size=64, d_model=32, n_layers=3, n_heads=8, n_kv_heads=4, head_dim=8, d_mlp=64,
    sliding_window=6, eos_token_ids=(1,),
)  # fmt: skip
D_SAE = 64
# The families with q/k norms: 4 KV heads (split over 4, replicated over 8), 8 query heads.
GEMMA3 = gemma3_config(
    vocab_size=64, d_model=32, n_layers=3, n_heads=8, n_kv_heads=4, head_dim=8, d_mlp=64,
    sliding_window=4, sliding_layers=(True, False, True), rope_local_theta=50.0,
    rope_theta=1000.0, rope_scaling=(("factor", 4.0), ("rope_type", "linear")), eos_token_ids=(1,),
)  # fmt: skip
QWEN3 = ModelConfig(
    family="qwen3", vocab_size=64, d_model=32, n_layers=2, n_heads=8, n_kv_heads=4, head_dim=12,
    d_mlp=64, qk_norm=True, tie_embeddings=False, eos_token_ids=(1,),
)  # fmt: skip


def _random_norms(params, key):
    """Norm weights away from the identity, so that a misplaced q/k norm would show."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(key, len(leaves))
    out = [
        v + 0.3 * jax.random.normal(k, v.shape) if "norm" in jax.tree_util.keystr(path) else v
        for (path, v), k in zip(leaves, keys)
    ]
    return jax.tree.unflatten(treedef, out)


def qk_norm_families(tmp: Path, ids, mask, one) -> dict:
    """Sharded vs one device for GEMMA3 and QWEN3 (logits, greedy tokens) per layout."""
    report = {}
    for cfg in (GEMMA3, QWEN3):
        params = init_params(cfg, jax.random.PRNGKey(2), scale=0.3)
        params = _random_norms(params | {"embed": params["embed"] * 0.2}, jax.random.PRNGKey(3))
        save_hf(params, cfg, tmp / cfg.family)
        with jax.default_device(one):
            _, p1 = load_hf(tmp / cfg.family)
            ref_logits = np.asarray(forward(p1, cfg, jnp.asarray(ids), jnp.asarray(mask)).logits)
            ref_tokens = np.asarray(generate(p1, cfg, ids, mask, max_new_tokens=6).tokens)
        for data, model in ((2, 4), (1, 8)):  # pure data parallel: the Gemma-2 model's 8x1
            mesh = make_mesh(data=data, model=model)
            _, p = load_hf(tmp / cfg.family, mesh=mesh)
            i, m = shard_batch(mesh, ids, mask)
            logits = np.asarray(forward(p, cfg, i, m).logits)
            tokens = np.asarray(generate(p, cfg, i, m, max_new_tokens=6).tokens)
            report[f"{cfg.family}/{data}x{model}"] = {
                "q_norm_spec": [str(x) for x in p["layers"]["q_norm"].sharding.spec],
                "q_spec": [str(x) for x in p["layers"]["q"].sharding.spec],
                "logits_max_abs_err": float(np.abs(logits - ref_logits).max()),
                "logits_scale": float(np.abs(ref_logits).max()),
                "tokens_equal": bool((tokens == ref_tokens).all()),
                "distinct_tokens": len(np.unique(ref_tokens)),
            }
    return report


def main() -> None:
    assert len(jax.devices()) == 8, jax.devices()
    one = jax.devices()[0]
    params = init_params(CFG, jax.random.PRNGKey(0), scale=0.3)
    params = params | {"embed": params["embed"] * 0.2}
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    w = jax.random.normal(k1, (CFG.n_layers, D_SAE, CFG.d_model))
    w = w / jnp.linalg.norm(w, axis=-1, keepdims=True)
    saes = sae_lib.SAE(
        W_enc=jnp.swapaxes(w, 1, 2),
        b_enc=jnp.zeros((CFG.n_layers, D_SAE)),
        W_dec=w,
        b_dec=jnp.zeros((CFG.n_layers, CFG.d_model)),
        threshold=jnp.full((CFG.n_layers, D_SAE), 0.2),
        cfg=sae_lib.SAEConfig(architecture="jumprelu", d_in=CFG.d_model, d_sae=D_SAE),
    )
    rng = np.random.default_rng(0)
    ids = rng.integers(3, CFG.vocab_size, size=(8, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    for row in range(0, 8, 3):
        ids[row, :3], mask[row, :3] = 0, 0
    direction = np.asarray(jax.random.normal(k2, (CFG.d_model,)))
    tmp = Path(tempfile.mkdtemp())
    save_hf(params, CFG, tmp / "hf")
    save_model(tmp / "orbax", CFG, params)

    def compute(p, s, i, m):
        out = forward(p, CFG, i, m, return_residuals=True)
        gen = generate(p, CFG, i, m, max_new_tokens=6)
        codes = sae_lib.encode(sae_lib.sae_layer(s, 1), out.resid_post[1])
        return {
            "logits": np.asarray(out.logits),
            "tokens": np.asarray(gen.tokens),
            "codes": np.asarray(codes),
        }

    with jax.default_device(one):
        cfg1, p1 = load_hf(tmp / "hf")
        i1, m1 = jnp.asarray(ids), jnp.asarray(mask)
        ref = compute(p1, saes, i1, m1)
        # LA-IG on one device through the public la_ig + feature_attributions; sharded, through
        # the sweep (attribute_batch: the same computation fused into one program per shard,
        # equal up to float32 rounding, hence the relative tolerance below)
        res = la_ig(p1, CFG, i1, m1, jnp.asarray(direction), refusal_token=5, n_steps=4)
        ref["attr"] = np.asarray(feature_attributions(res, saes, position_weights(m1, skip=1)))

    sc = SweepConfig(kind="laig", shard_size=8, n_steps=4)
    scale = np.abs(ref["attr"]).max()
    report = {}
    for data, model in ((8, 1), (2, 4), (1, 8)):
        mesh = make_mesh(data=data, model=model)
        _, p = load_hf(tmp / "hf", mesh=mesh)
        q_spec = tuple(p["layers"]["q"].sharding.spec)
        _, p_orbax = load_model(tmp / "orbax", mesh=mesh)  # orbax restores onto the shards
        orbax_ok = all(
            a.sharding == b.sharding and bool((np.asarray(a) == np.asarray(b)).all())
            for a, b in zip(jax.tree.leaves(p_orbax), jax.tree.leaves(p))
        )
        # bfloat16 while restoring, still onto the shards
        _, p_bf16 = load_model(tmp / "orbax", mesh=mesh, dtype=jnp.bfloat16)
        bf16_ok = all(
            a.dtype == jnp.bfloat16
            and a.sharding == b.sharding
            and bool((np.asarray(a) == np.asarray(b.astype(jnp.bfloat16))).all())
            for a, b in zip(jax.tree.leaves(p_bf16), jax.tree.leaves(p))
        )
        s = shard_saes(saes, mesh)
        i, m = shard_batch(mesh, ids, mask)
        got = compute(p, s, i, m)
        sw = run_sweep(
            p, CFG, ids, mask, tmp / f"sweep{data}x{model}", sc, saes=s, direction=direction,
            refusal_token=5, mesh=mesh, progress=False,
        )["results"]["attributions"]  # fmt: skip
        report[f"{data}x{model}"] = {
            "q_spec": [str(x) for x in q_spec],
            "q_shards": len(p["layers"]["q"].addressable_shards),
            "orbax_sharded_load_equal": orbax_ok,
            "orbax_bf16_sharded_load_equal": bf16_ok,
            "k_spec": [str(x) for x in p["layers"]["k"].sharding.spec],
            "sae_w_dec_spec": [str(x) for x in s.W_dec.sharding.spec],
            "logits_max_abs_err": float(np.abs(got["logits"] - ref["logits"]).max()),
            "tokens_equal": bool((got["tokens"] == ref["tokens"]).all()),
            "codes_max_abs_err": float(np.abs(got["codes"] - ref["codes"]).max()),
            # the sweep stores [prompt, layer, feature]; feature_attributions gives [layer, ...]
            "attr_max_rel_err": float(np.abs(sw - ref["attr"].swapaxes(0, 1)).max() / scale),
            "logits_scale": float(np.abs(ref["logits"]).max()),
        }
    report.update(qk_norm_families(tmp, ids, mask, one))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
