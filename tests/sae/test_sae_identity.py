"""SAE-training identity: a checkpoint folder records its layers, data, model and config; a
rerun with other ones is refused naming the difference; history.json keeps every record across
resumes and a finished rerun."""

import argparse
import json
import re

import jax
import numpy as np
import pytest

from refusal_jax.cli.sae import add_sae_commands
from refusal_jax.core.config import ModelConfig
from refusal_jax.core.errors import UsageError
from refusal_jax.core.identity import CACHE_ENV
from refusal_jax.core.model import init_params
from refusal_jax.sae import train as sae_train

R = np.random.default_rng(0)
ACTS = R.normal(size=(2, 512, 16)).astype(np.float32)  # [L, N, d]
TCFG = sae_train.TrainConfig(
    architecture="topk", d_sae=32, k=4, n_steps=20, lr=3e-3, lr_warmup_steps=2
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "digests"))


def _train(ckpt, src=None, tcfg=TCFG, **kw):
    src = src or sae_train.ArraySource(ACTS, 64, seed=1, layers=[1, 2])
    return sae_train.train_sae(
        src, tcfg, ckpt_dir=ckpt, checkpoint_every=5, log_every=5, progress=False, **kw
    )


def test_history_is_kept_across_resume_and_a_finished_rerun(tmp_path):
    ref = _train(tmp_path / "ref")
    assert [r["step"] for r in ref.history] == [5, 10, 15, 20]
    with pytest.raises(sae_train.TrainingInterrupted):
        _train(tmp_path / "ckpt", stop_after=12)
    resumed = _train(tmp_path / "ckpt")
    # records of steps 5 and 10 kept from the first run (compared as JSON: an empty token group
    # reports NaN metrics, and NaN != NaN)
    assert json.dumps(resumed.history) == json.dumps(ref.history)
    again = _train(tmp_path / "ckpt")  # finished: nothing trained, nothing lost
    assert json.dumps(again.history) == json.dumps(ref.history)
    for a, b in zip(jax.tree.leaves(ref.state), jax.tree.leaves(again.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpoint_folder_refuses_other_layers_data_model_or_config(tmp_path):
    ckpt = tmp_path / "ckpt"
    with pytest.raises(sae_train.TrainingInterrupted):
        _train(ckpt, stop_after=5)
    cases = {
        "settings.layers: [1, 2] vs [3, 4]": sae_train.ArraySource(ACTS, 64, 1, layers=[3, 4]),
        "data differ": sae_train.ArraySource(ACTS + 1e-3, 64, seed=1, layers=[1, 2]),
        "settings.source.batch_size: 64 vs 32": sae_train.ArraySource(ACTS, 32, 1, [1, 2]),
    }
    for what, src in cases.items():
        with pytest.raises(ValueError, match=f"different configuration: {re.escape(what)}"):
            _train(ckpt, src)
    with pytest.raises(ValueError, match=r"settings.train_config.d_sae: 32 vs 48"):
        _train(ckpt, tcfg=sae_train.TrainConfig(architecture="topk", d_sae=48, k=4, n_steps=20))
    # a model source: another model (one interior weight) is refused as "model weights differ"
    cfg = ModelConfig(family="llama", vocab_size=32, d_model=16, n_layers=2, n_heads=2,
                      n_kv_heads=1, head_dim=8, d_mlp=32, max_position_embeddings=16)  # fmt: skip
    params = init_params(cfg, jax.random.PRNGKey(0))
    ids = R.integers(0, 32, (8, 6)).astype(np.int32)
    tokens = (ids, np.ones_like(ids))
    src = sae_train.ModelSource(params, cfg, tokens, [0, 1], 32, seqs_per_step=2)
    mckpt = tmp_path / "model-ckpt"
    with pytest.raises(sae_train.TrainingInterrupted):
        _train(mckpt, src, stop_after=5)
    leaves, treedef = jax.tree.flatten(params)
    i = int(np.argmax([np.size(x) for x in leaves]))
    bumped = np.array(leaves[i])
    bumped.reshape(-1)[bumped.size // 2] += 1e-3  # an interior value
    other = jax.tree.unflatten(treedef, [*leaves[:i], bumped, *leaves[i + 1 :]])
    with pytest.raises(ValueError, match="model weights differ"):
        _train(mckpt, sae_train.ModelSource(other, cfg, tokens, [0, 1], 32, seqs_per_step=2))
    ids2 = ids.copy()
    ids2[0, 0] = (ids2[0, 0] + 1) % 32
    with pytest.raises(ValueError, match="data differ"):
        _train(mckpt, sae_train.ModelSource(params, cfg, (ids2, tokens[1]), [0, 1], 32, 2))


def test_cli_train_sae_rerun_refuses_other_layers_and_keeps_history(tmp_path):
    np.save(tmp_path / "acts.npy", ACTS)
    p = argparse.ArgumentParser()
    add_sae_commands(p.add_subparsers(dest="command", required=True))
    out = tmp_path / "run"
    argv = ["train-sae", "--activations", str(tmp_path / "acts.npy"), "--out", str(out),
            "--architecture", "topk", "--k", "4", "--d-sae", "32", "--steps", "20",
            "--batch-size", "64", "--lr-warmup", "2", "--checkpoint-every", "10",
            "--layers", "1,2"]  # fmt: skip
    args = p.parse_args(argv)
    assert args.func(args) == 0
    history = json.loads((out / "history.json").read_text())
    assert [r["step"] for r in history] == [10, 20]
    args = p.parse_args(argv)  # a finished run, rerun: history unchanged, not emptied
    assert args.func(args) == 0
    assert json.loads((out / "history.json").read_text()) == history
    args = p.parse_args([*argv[:-1], "3,4"])
    with pytest.raises(UsageError, match=r"settings.layers: \[1, 2\] vs \[3, 4\]"):
        args.func(args)
    np.save(tmp_path / "acts.npy", ACTS[:, ::-1])  # same file, other content
    args = p.parse_args(argv)
    with pytest.raises(UsageError, match=r"data differ: .*acts.npy \(acts.npy changed\)"):
        args.func(args)
    assert (out / "layer_1").is_dir() and not (out / "layer_3").exists()
