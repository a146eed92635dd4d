"""SAE training on data with attention sinks: a few positions per sequence carry 100x norms.
By default they are left out of training (position rule or norm outliers) and counted; the
reported content FVU matches an independent numpy computation; with exclusion off the loud
sink-domination warning fires and the groups' metrics show it."""

import numpy as np
import pytest

from refusal_jax.sae import train as sae_train

D, T, N_SEQ, N_FEAT, K_TRUE, N_SINK = 16, 16, 512, 32, 2, 2


def sink_data(seed=0):
    """[N_SEQ * T, D] planted sparse content; positions 0..N_SINK-1 of each sequence are a
    fixed large vector (100x the content norm) plus noise. Returns (x, content [N] bool)."""
    r = np.random.default_rng(seed)
    dic = r.normal(size=(N_FEAT, D))
    dic /= np.linalg.norm(dic, axis=1, keepdims=True)
    n = N_SEQ * T
    idx = np.argsort(r.random((n, N_FEAT)), axis=1)[:, :K_TRUE]
    codes = np.zeros((n, N_FEAT))
    np.put_along_axis(codes, idx, r.uniform(0.5, 2.0, (n, K_TRUE)), 1)
    x = codes @ dic
    content_norm = np.median(np.linalg.norm(x, axis=1))
    pos = np.tile(np.arange(T), N_SEQ)
    sink = r.normal(size=(N_SINK, D))
    sink *= 100 * content_norm / np.linalg.norm(sink, axis=1, keepdims=True)
    for p in range(N_SINK):
        rows = pos == p
        x[rows] = sink[p] + 0.5 * r.normal(size=(rows.sum(), D))
    return x.astype(np.float32), pos >= N_SINK


X, CONTENT = sink_data()
TCFG = sae_train.TrainConfig(architecture="topk", d_sae=64, k=3, n_steps=300, lr=3e-3,
                             lr_warmup_steps=20)  # fmt: skip


def numpy_topk_fvu(sae, x):
    """FVU of a TopK SAE (b_dec subtracted from the input) on x [n, d], in float64 numpy."""
    w_enc, b_enc = np.asarray(sae.W_enc, np.float64), np.asarray(sae.b_enc, np.float64)
    w_dec, b_dec = np.asarray(sae.W_dec, np.float64), np.asarray(sae.b_dec, np.float64)
    assert sae.cfg.apply_b_dec_to_input and sae.cfg.input_scale == 1.0
    pre = np.maximum((x - b_dec) @ w_enc + b_enc, 0.0)
    kth = -np.sort(-pre, axis=1)[:, sae.cfg.k - 1 : sae.cfg.k]
    f = np.where(pre >= kth, pre, 0.0)
    x_hat = f @ w_dec + b_dec
    return np.sum((x_hat - x) ** 2) / np.sum((x - x.mean(0)) ** 2)


@pytest.mark.parametrize("how", ["positions", "outliers"])
def test_sinks_excluded_by_default_and_content_fvu_is_right(how):
    kw = {"content": CONTENT} if how == "positions" else {}
    src = sae_train.ArraySource(X, 256, seed=0, **kw)
    res = sae_train.train_sae(src, TCFG, progress=False, log_every=100)
    assert res.warnings == []
    counts = res.data["counts"]
    if how == "outliers":  # no position info: the 100x tokens go as norm outliers, counted
        assert counts["outliers"][0] > 0.8 * counts["tokens"] * N_SINK / T
    else:  # the sink rows are never drawn
        assert counts["outliers"][0] == 0
    # the training batches after exclusion carry no sink
    for step in (0, 57, 299):
        assert np.linalg.norm(src.batch(step)[0], axis=-1).max() < 10
    # eval groups: every sink token is outside the content group
    x_ev, groups, _ = src.eval_batch()
    is_sink = np.linalg.norm(x_ev[0], axis=-1) > 20
    assert is_sink.any() and (groups[0][is_sink] != sae_train.CONTENT).all()
    ev = res.eval[0]
    content_x = x_ev[0][groups[0] == sae_train.CONTENT].astype(np.float64)
    want = numpy_topk_fvu(res.saes[0], content_x)
    assert abs(ev["content"]["fvu"] - want) < 1e-4 * max(want, 1.0), (ev["content"], want)
    assert ev["content"]["fvu"] < 0.3  # the content is learned
    assert ev["content"]["n_tokens"] == len(content_x)
    assert ev["excluded"]["variance_share"] > 0.9  # the sinks hold the variance ...
    assert res.data["half_variance_token_fraction"][0] > sae_train.SMALL_FRACTION  # ... not here
    # history and metrics carry the groups
    last = res.history[-1]["groups"]
    assert set(last) == {"all", "content", "excluded"}
    assert 0 <= last["content"]["alive_fraction"][0] <= 1


def test_exclusion_off_warns_loudly():
    src = sae_train.ArraySource(X, 256, seed=0, content=CONTENT, exclude=False, outlier_factor=None)
    with pytest.warns(UserWarning, match="half of the variance"):
        res = sae_train.train_sae(src, TCFG, progress=False, log_every=100)
    assert any("excluded positions" in w for w in res.warnings)
    assert res.data["half_variance_token_fraction"][0] <= N_SINK / T
    ev = res.eval[0]
    # the overall number looks fine; the content group's does not hide behind it
    assert ev["all"]["fvu"] < ev["content"]["fvu"]


def test_group_metrics_against_numpy():
    src = sae_train.ArraySource(X[:2048], 128, seed=1, content=CONTENT[:2048])
    tcfg = sae_train.TrainConfig(architecture="topk", d_sae=32, k=2, n_steps=20)
    res = sae_train.train_sae(src, tcfg, progress=False)
    x = X[:2048].astype(np.float64)
    groups = np.where(CONTENT[:2048], 1, 0)
    m = sae_train.group_metrics(res.saes[0], x.astype(np.float32), groups)
    for name, sel in (("all", slice(None)), ("content", CONTENT[:2048]),
                      ("excluded", ~CONTENT[:2048])):  # fmt: skip
        np.testing.assert_allclose(m[name]["fvu"], numpy_topk_fvu(res.saes[0], x[sel]), rtol=1e-4)
    assert m["content"]["n_tokens"] + m["excluded"]["n_tokens"] == 2048
    np.testing.assert_allclose(
        m["content"]["variance_share"] + m["excluded"]["variance_share"], 1.0, rtol=1e-5
    )


def test_model_source_rule_truncation_and_reuse():
    import dataclasses

    import jax

    from refusal_jax.core.config import ModelConfig
    from refusal_jax.core.model import forward, init_params

    cfg = ModelConfig(
        family="llama", vocab_size=64, d_model=16, n_layers=3, n_heads=2, n_kv_heads=1,
        head_dim=8, d_mlp=32, max_position_embeddings=64, bos_token_id=1,
    )  # fmt: skip
    params = init_params(cfg, jax.random.PRNGKey(0), scale=0.3)
    r = np.random.default_rng(0)
    ids = r.integers(2, 64, (12, 10)).astype(np.int32)
    ids[:, :3] = [1, 7, 9]  # BOS and a constant "template" prefix
    ids[:, 6] = 1  # a special token inside the content
    mask = np.ones_like(ids)
    mask[::3, :1] = 0  # left padding on some rows (their prefix starts one later)
    ids[::3, 1:4] = [1, 7, 9]
    src = sae_train.ModelSource(params, cfg, (ids, mask), layers=[1], batch_size=32,
                                seqs_per_step=4, reuse=2)  # fmt: skip
    assert src.positions.prefix_length == 3 and 1 in src.positions.special_ids
    assert src._run_cfg.n_layers == 2  # the model runs up to layer 1 only
    x0 = src.batch(0)
    c = src.last_counts
    seq_ids, seq_mask = src.token_batch(0)
    want_excl = int(seq_mask.sum() - np.asarray(src.positions.mask(seq_ids, seq_mask)).sum())
    assert c["excluded_positions"] == want_excl and c["excluded_positions"] >= 4 * 4
    # step 1 shares step 0's forward pass (reuse 2); its draw differs
    assert src._cache[0] == 0 and src.batch(1).shape == x0.shape and src._cache[0] == 0
    # truncated activations equal the full model's
    full = forward(params, cfg, seq_ids, seq_mask, return_residuals=True).resid_post[1]
    keep = np.asarray(src.positions.mask(seq_ids, seq_mask)).reshape(-1)
    pool = np.asarray(full).reshape(-1, 16)[keep]
    d = np.abs(x0[0][:, None, :] - pool[None]).max(-1).min(1)  # every row is a content row
    assert d.max() < 1e-5
    assert dataclasses.asdict(src._run_cfg)["n_layers"] == 2


def test_ce_recovered_on_content_positions_only():
    import jax

    from refusal_jax.core.config import ModelConfig
    from refusal_jax.core.model import init_params
    from refusal_jax.core.positions import ContentPositions
    from refusal_jax.sae import zeros

    cfg = ModelConfig(
        family="llama", vocab_size=64, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1,
        head_dim=8, d_mlp=32, max_position_embeddings=64,
    )  # fmt: skip
    params = init_params(cfg, jax.random.PRNGKey(1), scale=0.3)
    ids = np.random.default_rng(1).integers(0, 64, (4, 8)).astype(np.int32)
    mask = np.ones_like(ids)
    sae = zeros(sae_train.TrainConfig(architecture="topk", d_sae=8, k=2).sae_config(16))
    full = sae_train.ce_loss_recovered(params, cfg, sae, 0, ids, mask)
    assert full["ce_spliced"] != pytest.approx(full["ce_clean"])
    # a rule that marks nothing as content: the splice changes nothing
    none = ContentPositions(prefix_length=99)
    out = sae_train.ce_loss_recovered(params, cfg, sae, 0, ids, mask, none)
    assert out["ce_spliced"] == pytest.approx(out["ce_clean"], abs=1e-6)
    part = sae_train.ce_loss_recovered(params, cfg, sae, 0, ids, mask, ContentPositions((), 4))
    assert part["ce_spliced"] != pytest.approx(full["ce_spliced"])
