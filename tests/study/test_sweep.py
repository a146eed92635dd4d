"""Resumable sweeps (single device): an interrupted sweep resumes to the same results without
recomputing finished shards; inputs are keyed (model, SAEs, patch, settings) but memory settings
are not; out-of-memory handling; remat policies and bf16 with float32 accumulation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refusal_jax import sae as sae_lib
from refusal_jax.core.model import forward
from refusal_jax.core.patches import add_at_layers
from refusal_jax.method.laig import feature_attributions, la_ig, position_weights
from refusal_jax.method.prompts import generate_tokens
from refusal_jax.study.sweep import OutOfMemory, SweepConfig, oom_guard, run_sweep
from tests.support.tiny import TINY

CFG = TINY
D_SAE = 48
SC = SweepConfig(kind="laig", shard_size=4, n_steps=3)


@pytest.fixture(scope="module")
def setup(tiny_params):
    params = tiny_params
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


def _laig(setup, out, sc=SC, **kw):
    params, saes, ids, mask, direction = setup
    return run_sweep(
        params, CFG, ids, mask, out, sc, saes=saes, direction=direction, refusal_token=5,
        progress=False, **kw,
    )  # fmt: skip


def _direct(setup, rows, params=None, saes=None, **kw):
    """Position-mean LA-IG attributions [4, L, d_sae] of ``rows`` (padded to a shard of 4 by
    repeating the last row, as the sweep does), in one direct call."""
    p0, s0, ids, mask, direction = setup
    rows = list(rows) + [rows[-1]] * (4 - len(rows))
    i, m = ids[rows], mask[rows]
    res = la_ig(p0 if params is None else params, CFG, i, m, direction, refusal_token=5, **kw)
    attr = feature_attributions(res, s0 if saes is None else saes, position_weights(m, skip=1))
    return np.asarray(attr).transpose(1, 0, 2), res


def test_interrupted_sweep_resumes_to_identical_results(setup, tmp_path):
    full = _laig(setup, tmp_path / "a")
    assert full["done"] and full["computed"] == [0, 1, 2]
    first = _laig(setup, tmp_path / "b", max_new_shards=2)  # "killed" after two shards
    assert not first["done"] and first["computed"] == [0, 1] and first["results"] is None
    assert not (tmp_path / "b" / "laig.safetensors").exists()
    shards = tmp_path / "b" / "shards"
    mtimes = {p.name: p.stat().st_mtime_ns for p in shards.iterdir()}
    assert len(mtimes) == 2
    second = _laig(setup, tmp_path / "b")
    assert second["done"] and second["computed"] == [2]  # finished shards not recomputed
    for p in shards.iterdir():
        if p.name in mtimes:
            assert p.stat().st_mtime_ns == mtimes[p.name]
    assert set(full["results"]) == {"attributions", "jailbreak_token", "metric"}
    # throughput of the shards computed now (on this tiny model dispatch dominates the times,
    # so only their presence is checked; experiments/benchmarks/bench_sweep.py measures them)
    t, t2 = full["throughput"], second["throughput"]
    assert (t["prompts"], t["shards"], t["shard_size"], t2["prompts"]) == (11, 3, 4, 3)
    assert t["prompts_per_s"] > 0 and 0 < t["first_shard_seconds"] <= t["seconds"]
    assert np.isfinite(t["forward_equivalents_per_prompt"]) and t2["shards"] == 1
    for k, v in full["results"].items():
        np.testing.assert_array_equal(second["results"][k], v)
    # Each shard is one direct LA-IG call on its rows (padding rows of the last shard dropped).
    # The sweep runs la_ig and the feature projection as one compiled program (attribute_batch),
    # the direct call as two: equal up to float32 rounding, not bit for bit (the compiler may
    # fuse the two differently; measured 2e-9 absolute on values of 1e-3).
    attr = full["results"]["attributions"]
    assert attr.shape == (11, CFG.n_layers, D_SAE) and attr.dtype == np.float32
    a0, r0 = _direct(setup, range(0, 4), n_steps=3)
    a2, _ = _direct(setup, range(8, 11), n_steps=3)
    scale = np.abs(a0).max()
    np.testing.assert_allclose(attr[:4], a0, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(attr[8:], a2[:3], rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(full["results"]["metric"][0], np.asarray(r0.metric), rtol=1e-5)


def test_memory_settings_resume_and_sum_only(setup, tmp_path):
    """remat / alpha_batch are not keyed: a sweep started without them continues with them
    (here remat=True and 2 of the 3 alpha steps at a time, i.e. one chunk and a remainder)
    and gives the same attributions within float32 summation order."""
    ref = _laig(setup, tmp_path / "ref")["results"]
    _laig(setup, tmp_path / "mixed", max_new_shards=1)
    low_mem = SweepConfig(kind="laig", shard_size=4, n_steps=3, remat=True, alpha_batch=2)
    mixed = _laig(setup, tmp_path / "mixed", sc=low_mem)
    assert mixed["computed"] == [1, 2]
    np.testing.assert_array_equal(mixed["results"]["attributions"][:4], ref["attributions"][:4])
    np.testing.assert_allclose(
        mixed["results"]["attributions"], ref["attributions"], rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(mixed["results"]["metric"], ref["metric"], rtol=1e-5, atol=1e-6)
    # per_prompt=False keeps only the sum over the real prompts (padding rows excluded)
    summed = _laig(setup, tmp_path / "sum", sc=dataclasses.replace(SC, per_prompt=False))
    assert summed["results"]["n_prompts"].tolist() == [11]
    np.testing.assert_allclose(
        summed["results"]["attribution_sum"], ref["attributions"].sum(0), rtol=1e-5, atol=1e-6
    )


def test_sweep_refuses_a_folder_of_other_inputs(setup, tmp_path):
    params, saes, ids, mask, direction = setup
    _laig(setup, tmp_path, max_new_shards=1)
    other_params = params | {"final_norm": params["final_norm"] + 1e-3}
    other_saes = saes.replace(threshold=saes.threshold + 1e-3)
    for kw in (
        {"sc": SweepConfig(kind="laig", shard_size=4, n_steps=4)},
        {"params": other_params},
        {"saes": other_saes},
        {"direction": direction + 1e-3},
        {"ids": ids[::-1].copy()},
    ):
        args = {"params": params, "saes": saes, "direction": direction, "ids": ids, "sc": SC}
        args |= kw
        with pytest.raises(ValueError, match="holds a sweep of other inputs"):
            run_sweep(
                args["params"], CFG, args["ids"], mask, tmp_path, args["sc"], saes=args["saes"],
                direction=args["direction"], refusal_token=5, progress=False,
            )  # fmt: skip
    with pytest.raises(ValueError, match="needs saes"):
        run_sweep(params, CFG, ids, mask, tmp_path / "x", SC, progress=False)
    with pytest.raises(ValueError, match="positive int"):
        SweepConfig(kind="laig", shard_size=0)
    with pytest.raises(ValueError, match="unknown sweep kind"):
        SweepConfig(kind="train")
    with pytest.raises(ValueError, match="unknown alpha rule 'simpson'"):
        SweepConfig(kind="laig", alpha_rule="simpson")
    with pytest.raises(ValueError, match="lobatto rule needs n_steps >= 2"):
        SweepConfig(kind="laig", alpha_rule="lobatto", n_steps=1)
    with pytest.raises(ValueError, match="error_mode must be one of"):
        SweepConfig(kind="laig", error_mode="clean")


def test_sweep_with_an_end_node_rule_equals_direct_la_ig(setup, tmp_path):
    """A rule with cheap end nodes (lobatto: alpha = 0 reuses the clean run, alpha = 1 needs no
    model run) through the sweep's fused program gives la_ig's numbers; its key differs from
    the left rule's, so a left sweep's folder refuses it."""
    sc = dataclasses.replace(SC, alpha_rule="lobatto")
    got = _laig(setup, tmp_path, sc=sc)["results"]
    ref, res = _direct(setup, range(4), n_steps=3, alpha_rule="lobatto")
    scale = np.abs(ref).max()
    assert scale > 0
    np.testing.assert_allclose(got["attributions"][:4], ref, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(got["metric"][0], np.asarray(res.metric), rtol=1e-5)
    params, saes, ids, mask, direction = setup
    with pytest.raises(ValueError, match="holds a sweep of other inputs"):
        run_sweep(
            params, CFG, ids, mask, tmp_path, SC, saes=saes, direction=direction,
            refusal_token=5, progress=False,
        )  # fmt: skip


def test_generation_sweep_with_per_sample_patch_and_trimmed_padding(setup, tmp_path):
    """A per-sample steering patch is sliced per shard like the prompts; trimming a shard's
    all-padding columns (shard 0 here: 4 pads in every row) gives the same tokens."""
    params, _, ids, mask, _ = setup
    ids, mask = ids.copy(), mask.copy()
    ids[:4, :4], mask[:4, :4] = 0, 0
    v = jax.random.normal(jax.random.PRNGKey(3), (CFG.d_model,))
    patch = add_at_layers(v, [1], CFG.n_layers).replace(coeff=jnp.linspace(-3.0, 3.0, 11))
    toks, lens = generate_tokens(
        params, CFG, ids, mask, batch_size=4, max_new_tokens=5, patch=patch
    )
    sc = SweepConfig(kind="generate", shard_size=4, max_new_tokens=5, trim_padding=2)
    res = run_sweep(params, CFG, ids, mask, tmp_path, sc, patch=patch, progress=False)
    np.testing.assert_array_equal(res["results"]["tokens"], toks)
    np.testing.assert_array_equal(res["results"]["lengths"], lens)
    assert len(set(map(tuple, toks))) > 3  # the patch coefficients do change the outputs
    with pytest.raises(ValueError, match="built for 11 prompts"):
        run_sweep(params, CFG, ids[:8], mask[:8], tmp_path / "b", sc, patch=patch)
    with pytest.raises(ValueError, match="other inputs"):  # the patch is keyed
        run_sweep(params, CFG, ids, mask, tmp_path, sc, patch=patch.replace(coeff=patch.coeff * 2))


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
    with pytest.raises(OutOfMemory, match="lower --shard-size \\(now 4, prompts of 8 tokens\\)"):
        run_sweep(params, CFG, ids, mask, tmp_path / "a", sc, shard_fn=shard_fn, progress=False)
    laig = SweepConfig(kind="laig", shard_size=4, alpha_batch=5)
    with pytest.raises(OutOfMemory, match="lower --alpha-batch \\(now 5.*pass --remat"):
        run_sweep(
            params, CFG, ids, mask, tmp_path / "c", laig, saes=setup[1], direction=setup[4],
            refusal_token=5, shard_fn=shard_fn, progress=False,
        )  # fmt: skip
    res = run_sweep(
        params, CFG, ids, mask, tmp_path / "b", sc, shard_fn=shard_fn, auto_shrink=True,
        progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(res["results"]["tokens"], ids[:, :2])
    assert calls[-9:] == [4, 2, 2] * 3  # each shard: tried whole, then done in halves
    with pytest.raises(ValueError, match="other"), oom_guard("x", "y"):
        raise ValueError("other errors pass through")


def test_remat_policy_dots_gives_the_same_attributions(setup):
    """remat="dots" (keep the weight matmuls, recompute the rest) changes memory, not results;
    remat=True ("full") is covered by test_memory_settings_resume_and_sum_only."""
    params, _, ids, mask, _ = setup
    ref, _ = _direct(setup, range(4), n_steps=3)
    got, _ = _direct(setup, range(4), n_steps=3, remat="dots")
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    with pytest.raises(ValueError, match="remat must be"):
        forward(params, CFG, ids, mask, remat="everything")


def test_bf16_laig_accumulates_in_float32(setup):
    """bfloat16 weights and SAEs: logits, the metric, the alpha integral and the attributions
    are float32, and the attributions stay close to float32's (stated tolerance)."""
    params, saes, *_ = setup
    ref, _ = _direct(setup, range(4), n_steps=3)
    bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    saes16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), saes)
    low, res = _direct(setup, range(4), params=bf16, saes=saes16, n_steps=3)
    assert res.runs.x_clean.dtype == jnp.bfloat16  # compute in bfloat16 ...
    assert low.dtype == np.float32 and res.grad.dtype == jnp.float32  # ... sums in float32
    assert res.metric.dtype == jnp.float32
    rel = np.linalg.norm(low - ref) / np.linalg.norm(ref)
    corr = np.corrcoef(low.ravel(), ref.ravel())[0, 1]
    print(f"bf16 vs f32 attributions: relative L2 error {rel:.3f}, correlation {corr:.4f}")
    assert rel < 0.1 and corr > 0.99, (rel, corr)


@pytest.mark.slow
def test_sigkilled_sweep_cli_resumes(tmp_path):
    """The CLI on the organism, killed with SIGKILL mid-sweep, resumes to the same results as an
    uninterrupted run (no torn shard files: every shard is written atomically) and computes only
    the missing shards."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from refusal_jax.cli.sweep import main
    from refusal_jax.core.io import load_arrays
    from refusal_jax.organism import MODEL_DIR

    if not (MODEL_DIR / "config.json").exists():
        pytest.skip("organism artifacts missing")
    args = ["generate", "--n-prompts", "160", "--shard-size", "4", "--max-new-tokens", "8"]
    args += ["--quiet"]
    main([*args, "--out", str(tmp_path / "full")])  # the uninterrupted run, in this process
    cmd = [
        sys.executable,
        "-m",
        "refusal_jax.cli.sweep",
        *args,
        "--out",
        str(tmp_path / "killed"),
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    shards = tmp_path / "killed" / "shards"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(shards.glob("*.safetensors"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(list(shards.glob("*.safetensors")))
    assert 3 <= n_before < 40, n_before
    out = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    assert f"({40 - n_before} computed now)" in out.stdout
    full = load_arrays(tmp_path / "full" / "generate.safetensors")
    resumed = load_arrays(tmp_path / "killed" / "generate.safetensors")
    assert full["tokens"].shape == (160, 8)
    for k in full:
        np.testing.assert_array_equal(resumed[k], full[k])


def test_sweep_command_is_registered():
    from refusal_jax.cli import build_parser

    args = build_parser().parse_args(
        ["sweep", "laig", "--out", "x", "--remat", "--dtype", "bfloat16", "--alpha-rule", "radau"]
    )
    assert args.command == "sweep" and args.remat == "full" and args.dtype == "bfloat16"
    assert args.alpha_rule == "radau"
