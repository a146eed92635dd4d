"""SAE training: dictionary recovery on planted sparse data for each trainer, moving JumpReLU
thresholds, the straight-through estimator, kill-and-resume, multi-layer vmapped training from
the model, and CE loss recovered."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refusal_jax import sae as sae_lib
from refusal_jax.core.config import ModelConfig
from refusal_jax.core.model import generate, init_params
from refusal_jax.sae import train as sae_train

D, N_FEAT, K_TRUE = 32, 64, 3


def planted(n=16384, seed=0):
    """x = sum of K_TRUE random unit dictionary rows (of N_FEAT) with magnitudes U(0.5, 2)."""
    r = np.random.default_rng(seed)
    dic = r.normal(size=(N_FEAT, D))
    dic /= np.linalg.norm(dic, axis=1, keepdims=True)
    idx = np.argsort(r.random((n, N_FEAT)), axis=1)[:, :K_TRUE]
    codes = np.zeros((n, N_FEAT))
    np.put_along_axis(codes, idx, r.uniform(0.5, 2.0, (n, K_TRUE)), 1)
    return (codes @ dic).astype(np.float32), dic


X, DICT = planted()


def best_match_cosines(dic, sae):
    w = np.asarray(sae.W_dec)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    return (dic @ w.T).max(1)


TRAINERS = {
    "topk": dict(architecture="topk", k=4),
    "jumprelu": dict(
        architecture="jumprelu",
        sparsity_coeff=0.02,
        sparsity_warmup_steps=200,
        bandwidth=0.1,
        init_threshold=0.1,
    ),
    "relu": dict(architecture="relu", sparsity_coeff=0.03, sparsity_warmup_steps=200),
    "batchtopk": dict(architecture="batchtopk", k=4),
}
# held-out FVU after 1200 steps, measured: topk 0.058, jumprelu 0.074, relu 0.085, batchtopk 0.063
# (median best-match cosines 0.996 / 0.995 / 0.990 / 0.995; L0 4 / 3.0 / 12 / 3.9, planted 3)
MAX_FVU = {"topk": 0.1, "jumprelu": 0.12, "relu": 0.15, "batchtopk": 0.1}


@pytest.mark.parametrize("name", list(TRAINERS))
def test_trainer_recovers_planted_dictionary(name):
    tcfg = sae_train.TrainConfig(
        d_sae=128, n_steps=1200, lr=3e-3, lr_warmup_steps=50, **TRAINERS[name]
    )
    src = sae_train.ArraySource(X[:12288], 256, seed=0)
    res = sae_train.train_sae(src, tcfg, progress=False, log_every=200)
    sae = res.saes[0]
    assert sae.cfg.input_scale == 1.0  # the scale is folded in
    cos = best_match_cosines(DICT, sae)
    assert np.median(cos) >= 0.9, np.median(cos)
    m = sae_train.reconstruction_metrics(sae, jnp.asarray(X[12288:]))
    assert float(m["fvu"]) < MAX_FVU[name]
    assert 2.0 < float(m["l0"]) < 15.0  # sparse: a few latents per token, as planted
    assert res.history[-1]["fvu"][0] < res.history[0]["fvu"][0]
    if name == "jumprelu":
        # thresholds move from their 0.1 init (in scaled units) to separate noise from features
        thr = np.asarray(res.state.sae.threshold[0])
        assert np.median(thr) > 0.3
    if name == "batchtopk":
        assert float(res.state.sae.threshold[0, 0]) > 0  # learned global inference threshold


def test_jumprelu_ste_gradients():
    pre = jnp.asarray([[0.5, 1.02, 0.98, 2.0]])
    thr = jnp.asarray([1.0, 1.0, 1.0, 1.0])
    bw = 0.1
    out = sae_train.jumprelu_ste(pre, thr, bw)
    np.testing.assert_allclose(out, [[0.0, 1.02, 0.0, 2.0]])
    g_pre, g_thr = jax.grad(lambda p, t: sae_train.jumprelu_ste(p, t, bw).sum(), (0, 1))(pre, thr)
    np.testing.assert_allclose(g_pre, [[0, 1, 0, 1]])
    # -(theta/eps) K((pre - theta)/eps): only pre within eps/2 of the threshold contributes
    np.testing.assert_allclose(g_thr, [0.0, -10.0, -10.0, 0.0], rtol=1e-6)
    g_thr = jax.grad(lambda t: sae_train.step_ste(pre, t, bw).sum())(thr)
    np.testing.assert_allclose(g_thr, [0.0, -10.0, -10.0, 0.0], rtol=1e-6)


def test_array_source_is_a_pure_function_of_seed_and_step():
    src = sae_train.ArraySource(np.arange(40, dtype=np.float32).reshape(10, 4), 4, seed=3)
    first = [src.batch(s)[0, :, 0].tolist() for s in range(5)]
    again = sae_train.ArraySource(np.arange(40, dtype=np.float32).reshape(10, 4), 4, seed=3)
    assert [again.batch(s)[0, :, 0].tolist() for s in (4, 2, 0, 1, 3)] == [
        first[i] for i in (4, 2, 0, 1, 3)
    ]
    epoch0 = sorted(first[0] + first[1] + first[2][:2])  # 10 rows: each once per epoch
    assert epoch0 == [4.0 * i for i in range(10)]


def test_kill_and_resume_gives_identical_params(tmp_path):
    tcfg = sae_train.TrainConfig(
        architecture="jumprelu",
        d_sae=48,
        n_steps=30,
        lr=3e-3,
        lr_warmup_steps=5,
        sparsity_coeff=0.01,
        sparsity_warmup_steps=10,
    )
    src = sae_train.ArraySource(X[:4096], 64, seed=1)
    ref = sae_train.train_sae(src, tcfg, progress=False)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(sae_train.TrainingInterrupted) as e:
        sae_train.train_sae(
            src, tcfg, ckpt_dir=ckpt, checkpoint_every=10, stop_after=17, progress=False
        )
    assert e.value.step == 17
    resumed = sae_train.train_sae(src, tcfg, ckpt_dir=ckpt, checkpoint_every=10, progress=False)
    for a, b in zip(jax.tree.leaves(ref.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(ref.saes[0].W_dec, resumed.saes[0].W_dec)
    assert np.abs(np.asarray(ref.saes[0].threshold) - 0.1).max() > 1e-3  # thresholds trained

    # a Ctrl-C while batch 13 is being prepared: the 13 finished steps are saved, none lost
    class Interrupting(sae_train.ArraySource):
        def batch(self, step):
            if step == 13:
                raise KeyboardInterrupt
            return super().batch(step)

    ckpt2 = tmp_path / "ckpt2"
    with pytest.raises(KeyboardInterrupt):
        sae_train.train_sae(
            Interrupting(X[:4096], 64, seed=1), tcfg, ckpt_dir=ckpt2, progress=False
        )
    assert sorted(int(p.name) for p in ckpt2.iterdir() if p.name.isdigit())[-1] == 13
    resumed = sae_train.train_sae(src, tcfg, ckpt_dir=ckpt2, progress=False)
    for a, b in zip(jax.tree.leaves(ref.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = sae_train.TrainConfig(architecture="topk", d_sae=48, k=3, n_steps=30)
    with pytest.raises(ValueError, match="different configuration"):
        sae_train.train_sae(src, other, ckpt_dir=ckpt, progress=False)


TINY = ModelConfig(
    family="llama",
    vocab_size=64,
    d_model=16,
    n_layers=3,
    n_heads=2,
    n_kv_heads=1,
    head_dim=8,
    d_mlp=32,
    max_position_embeddings=64,
)


def test_model_source_multilayer_vmapped_and_ce_recovered():
    params = init_params(TINY, jax.random.PRNGKey(0), scale=0.3)
    r = np.random.default_rng(0)
    # targets the model predicts well: its own greedy continuations of random prompts
    prompt = r.integers(0, 64, (32, 3)).astype(np.int32)
    gen = generate(params, TINY, prompt, max_new_tokens=9, eos_token_ids=())
    ids = np.concatenate([prompt, np.asarray(gen.tokens)], 1)
    mask = np.ones_like(ids)
    mask[::2, :2] = 0  # left padding on half the sequences
    src = sae_train.ModelSource(
        params, TINY, (ids, mask), layers=[0, 2], batch_size=128, seqs_per_step=8
    )
    b = src.batch(0)
    assert b.shape == (2, 128, 16)
    np.testing.assert_array_equal(b, src.batch(0))
    tcfg = sae_train.TrainConfig(
        architecture="topk", d_sae=64, k=8, n_steps=150, lr=3e-3, lr_warmup_steps=10
    )
    res = sae_train.train_sae(src, tcfg, progress=False, log_every=50)
    assert res.layers == [0, 2] and len(res.saes) == 2
    assert res.state.sae.W_enc.shape == (2, 16, 64)
    for layer, sae in res.sae_set().items():
        x = src.batch(999)[res.layers.index(layer)]
        m = sae_train.reconstruction_metrics(sae, jnp.asarray(x))
        assert float(m["fvu"]) < 0.5
        ce = sae_train.ce_loss_recovered(params, TINY, sae, layer, ids, mask)
        assert ce["ce_zero"] > ce["ce_clean"]
        assert 0.5 < ce["recovered"] <= 1.05, ce
    # a useless SAE (all zeros: the splice outputs 0) recovers nothing
    zero = sae_lib.zeros(res.saes[0].cfg)
    ce0 = sae_train.ce_loss_recovered(params, TINY, zero, 0, ids, mask)
    assert abs(ce0["recovered"]) < 1e-5


def test_cli_train_sae_on_activations(tmp_path):
    import argparse
    import json

    from ports import sae as sae_io
    from refusal_jax.cli.sae import add_sae_commands

    np.save(tmp_path / "acts.npy", X[:2048])
    p = argparse.ArgumentParser()
    add_sae_commands(p.add_subparsers(dest="command", required=True))
    argv = [
        "train-sae",
        "--activations",
        str(tmp_path / "acts.npy"),
        "--out",
        str(tmp_path / "run"),
        "--architecture",
        "topk",
        "--k",
        "4",
        "--d-sae",
        "64",
        "--steps",
        "40",
        "--batch-size",
        "128",
        "--lr",
        "3e-3",
        "--lr-warmup",
        "5",
        "--checkpoint-every",
        "20",
    ]
    args = p.parse_args(argv)
    assert args.func(args) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["layers"]["0"]["fvu"] < 0.6
    sae = sae_io.load_sae(tmp_path / "run" / "layer_0", expected_d_in=D)
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.d_sae) == ("topk", 4, 64)


def test_warm_start_keeps_the_function_and_fine_tuning_keeps_the_features(tmp_path):
    """Fine-tuning from saved SAEs (train_sae(init=)): at step 0 the SAEs compute exactly what
    the saved ones do (scale and b_dec moved into the training's space); after more steps the
    features keep their identities (decoder rows barely turn) and the error does not grow."""
    from ports.sae import load_gemmascope, save_gemmascope
    from refusal_jax.sae import encode, stack_saes

    src = sae_train.ArraySource(X[:8192], 256, seed=0)
    base = sae_train.TrainConfig(d_sae=128, n_steps=300, lr=3e-3, **TRAINERS["batchtopk"])
    first = sae_train.train_sae(src, base, progress=False).saes[0]
    save_gemmascope(first, tmp_path / "sae")
    saved = load_gemmascope(tmp_path / "sae")  # JumpReLU form, b_dec folded into b_enc
    init = stack_saes([saved])
    x = jnp.asarray(X[12288:13312])

    states = sae_train.warm_start(sae_train.init_states(src, base), init)
    same = sae_train.export_saes(states)[0]
    np.testing.assert_allclose(encode(same, x), encode(saved, x), rtol=1e-5, atol=1e-5)
    before = float(sae_train.reconstruction_metrics(saved, x)["fvu"])

    tune = dataclasses.replace(base, n_steps=300, lr=1e-3, lr_decay_fraction=0.5)
    tuned = sae_train.train_sae(src, tune, progress=False, init=init).saes[0]
    after = float(sae_train.reconstruction_metrics(tuned, x)["fvu"])
    rows = lambda s: np.asarray(s.W_dec) / np.linalg.norm(np.asarray(s.W_dec), axis=1)[:, None]
    cos = (rows(tuned) * rows(saved)).sum(1)
    assert np.median(cos) > 0.95, np.median(cos)
    assert after <= before * 1.02, (before, after)

    with pytest.raises(ValueError, match="warm start"):
        sae_train.warm_start(sae_train.init_states(src, dataclasses.replace(base, d_sae=64)), init)
