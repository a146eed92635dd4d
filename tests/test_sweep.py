"""Resumable sweeps (single device): a killed sweep resumes to the same results without
recomputing finished shards; out-of-memory handling; remat and bf16 options of LA-IG."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refusal_jax import sae as sae_lib
from refusal_jax.config import gemma2_config
from refusal_jax.laig import feature_attributions, la_ig, position_weights
from refusal_jax.model import init_params
from refusal_jax.prompts import generate_tokens
from refusal_jax.sweep import OutOfMemory, SweepConfig, oom_guard, run_sweep

CFG = gemma2_config(
    vocab_size=64, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, d_mlp=64,
    sliding_window=6, eos_token_ids=(1,),
)  # fmt: skip
D_SAE = 48


@pytest.fixture(scope="module")
def setup():
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
    ids = rng.integers(3, CFG.vocab_size, size=(11, 8)).astype(np.int32)
    mask = np.ones_like(ids)
    for row in range(0, 11, 3):
        ids[row, :2], mask[row, :2] = 0, 0
    direction = np.asarray(jax.random.normal(k2, (CFG.d_model,)))
    return params, saes, ids, mask, direction


def _laig(setup, out, **kw):
    params, saes, ids, mask, direction = setup
    sc = SweepConfig(kind="laig", shard_size=4, n_steps=3)
    return run_sweep(
        params, CFG, ids, mask, out, sc, saes=saes, direction=direction, refusal_token=5,
        progress=False, **kw,
    )  # fmt: skip


def test_killed_sweep_resumes_to_identical_results(setup, tmp_path):
    full = _laig(setup, tmp_path / "a")
    assert full["done"] and full["computed"] == [0, 1, 2]
    first = _laig(setup, tmp_path / "b", max_new_shards=2)  # "killed" after two shards
    assert not first["done"] and first["computed"] == [0, 1] and first["results"] is None
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "b" / "shards").iterdir()}
    second = _laig(setup, tmp_path / "b")
    assert second["done"] and second["computed"] == [2]  # finished shards not recomputed
    for p in (tmp_path / "b" / "shards").iterdir():
        if p.name in mtimes:
            assert p.stat().st_mtime_ns == mtimes[p.name]
    for k, v in full["results"].items():
        np.testing.assert_array_equal(second["results"][k], v)
    # The sweep's attributions are LA-IG's on each prompt (padding rows of the last shard
    # dropped): compare with one direct call over all 11 prompts.
    params, saes, ids, mask, direction = setup
    res = la_ig(params, CFG, ids, mask, direction, refusal_token=5, n_steps=3)
    direct = np.asarray(feature_attributions(res, saes, position_weights(mask, skip=1)))
    np.testing.assert_allclose(
        full["results"]["attributions"], direct.transpose(1, 0, 2), rtol=1e-4, atol=1e-6
    )
    assert full["results"]["attributions"].shape == (11, CFG.n_layers, D_SAE)


def test_sweep_refuses_a_folder_of_other_inputs(setup, tmp_path):
    _laig(setup, tmp_path, max_new_shards=1)
    params, saes, ids, mask, direction = setup
    with pytest.raises(ValueError, match="holds a sweep of other inputs"):
        run_sweep(
            params, CFG, ids, mask, tmp_path, SweepConfig(kind="laig", shard_size=4, n_steps=4),
            saes=saes, direction=direction, refusal_token=5, progress=False,
        )  # fmt: skip


def test_generation_sweep_matches_generate_tokens(setup, tmp_path):
    params, _, ids, mask, _ = setup
    sc = SweepConfig(kind="generate", shard_size=4, max_new_tokens=5)
    res = run_sweep(params, CFG, ids, mask, tmp_path, sc, progress=False)
    toks, lens = generate_tokens(params, CFG, ids, mask, batch_size=4, max_new_tokens=5)
    np.testing.assert_array_equal(res["results"]["tokens"], toks)
    np.testing.assert_array_equal(res["results"]["lengths"], lens)


class _FakeOOM(RuntimeError):
    pass


def test_out_of_memory_message_and_auto_shrink(setup, tmp_path):
    params, _, ids, mask, _ = setup
    calls = []

    def shard_fn(b_ids, b_mask):  # pretends that more than 2 prompts do not fit
        calls.append(len(b_ids))
        if len(b_ids) > 2:
            raise _FakeOOM("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
        return {"tokens": np.asarray(b_ids)[:, :2], "lengths": np.full(len(b_ids), 2)}

    sc = SweepConfig(kind="generate", shard_size=4)
    with pytest.raises(OutOfMemory, match="lower --shard-size \\(now 4\\)"):
        run_sweep(params, CFG, ids, mask, tmp_path / "a", sc, shard_fn=shard_fn, progress=False)
    res = run_sweep(
        params, CFG, ids, mask, tmp_path / "b", sc, shard_fn=shard_fn, auto_shrink=True,
        progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(res["results"]["tokens"], ids[:, :2])
    assert calls[-9:] == [4, 2, 2] * 3  # each shard: tried whole, then done in halves
    with pytest.raises(ValueError, match="other"), oom_guard("x", "y"):
        raise ValueError("other errors pass through")


def test_remat_and_bf16_laig(setup):
    """remat changes memory, not results; bf16 stays close to f32 (stated tolerance)."""
    params, saes, ids, mask, direction = setup
    w = position_weights(mask, skip=1)

    def attr(p, s, **kw):
        res = la_ig(p, CFG, ids, mask, direction, refusal_token=5, n_steps=4, **kw)
        return np.asarray(feature_attributions(res, s, w))

    ref = attr(params, saes)
    np.testing.assert_allclose(attr(params, saes, remat=True), ref, rtol=1e-5, atol=1e-6)
    bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    saes16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), saes)
    low = attr(bf16, saes16)
    assert low.dtype == np.float32  # f32 accumulation of the attributions
    rel = np.linalg.norm(low - ref) / np.linalg.norm(ref)
    corr = np.corrcoef(low.ravel(), ref.ravel())[0, 1]
    print(f"bf16 vs f32 attributions: relative L2 error {rel:.3f}, correlation {corr:.4f}")
    assert rel < 0.1 and corr > 0.99, (rel, corr)


def test_sigkilled_sweep_cli_resumes(tmp_path):
    """The CLI on the organism, killed with SIGKILL mid-sweep, resumes to the same results as an
    uninterrupted run (no torn shard files: every shard is written atomically)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from refusal_jax.organism import MODEL_DIR
    from refusal_jax.runs import load_arrays

    if not (MODEL_DIR / "config.json").exists():
        pytest.skip("organism artifacts missing")
    args = [
        "generate",
        "--n-prompts",
        "160",
        "--shard-size",
        "4",
        "--max-new-tokens",
        "8",
        "--quiet",
    ]
    cmd = lambda out: [sys.executable, "-m", "refusal_jax.sweep", *args, "--out", str(out)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run(cmd(tmp_path / "full"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cmd(tmp_path / "killed"), env=env, stderr=subprocess.DEVNULL)
    shards = tmp_path / "killed" / "shards"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(shards.glob("*.safetensors"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(list(shards.glob("*.safetensors")))
    assert 3 <= n_before < 40, n_before
    out = subprocess.run(
        cmd(tmp_path / "killed"), check=True, env=env, capture_output=True, text=True
    )
    assert f"({40 - n_before} computed now)" in out.stdout
    full = load_arrays(tmp_path / "full" / "generate.safetensors")
    resumed = load_arrays(tmp_path / "killed" / "generate.safetensors")
    for k in full:
        np.testing.assert_array_equal(resumed[k], full[k])
