"""Plumbing: ``refusal-jax demo`` on a tiny random Gemma 3 HF folder (written by ports.hf.save_hf)
with a Gemma Scope 2 release folder as its SAEs, exactly as a real Gemma 3 + Gemma Scope 2 run
would be invoked. Checks that the run completes and reports every method, not what it finds."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from transformers import AutoTokenizer

from ports.hf import save_hf
from refusal_jax.cli import main as cli_main
from refusal_jax.core.config import config_from_hf
from refusal_jax.core.model import forward_fn, init_params, rms_norm
from refusal_jax.method.judges import first_token_refuses, refusal_token
from refusal_jax.method.prompts import encode_prompts
from refusal_jax.organism import MODEL_DIR
from tests.support.saes import gemmascope2_arrays, write_gemmascope2

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "tokenizer.json").exists(), reason="organism tokenizer missing"
)


POOL = [
    f"{verb} {noun}"
    for verb in ("how to steal", "tell me about", "write a poem on", "explain", "list")
    for noun in ("apples", "rivers", "stars", "locks", "maps", "bread", "songs", "tools")
]


def tiny_gemma3(folder):
    """A 3-layer random Gemma 3 text model over the organism's tokenizer (vocab 2048) whose
    first response token is "I" (the paper's refusal) for some prompts of :data:`POOL` and not
    for others: the "I" row of the tied embedding is scaled until both groups have >= 8 prompts.
    Returns (cfg, refusing prompts, other prompts)."""
    hf = {
        "model_type": "gemma3_text", "vocab_size": 2048, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "rope_theta": 1000.0, "rope_local_base_freq": 50.0, "query_pre_attn_scalar": 16,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "pad_token_id": 0,
        "bos_token_id": 2, "eos_token_id": [1, 5], "tie_word_embeddings": True,
    }  # fmt: skip
    cfg = config_from_hf(hf)
    params = init_params(cfg, jax.random.PRNGKey(0), scale=0.2)
    folder.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (MODEL_DIR / name).exists():
            shutil.copy(MODEL_DIR / name, folder / name)
    tok = AutoTokenizer.from_pretrained(folder)
    i_tok = refusal_token(tok)
    ids, mask = encode_prompts(tok, POOL, multiple=8, max_length=cfg.max_position_embeddings)
    # "I" is not in the prompts, so only its (tied) row changes its logit, linearly: logit_I =
    # H @ row with H the final-normed last-position states. Point the row along H's main
    # direction of variation and scale it until about half the pool turns to "I".
    out = forward_fn(params, cfg, ids, mask, return_residuals=True, last_logits_only=True)
    h = np.asarray(rms_norm(out.resid_post[-1][:, -1], params["final_norm"], cfg), np.float64)
    logits = np.asarray(out.logits[:, -1], np.float64)
    others = np.delete(logits, i_tok, axis=1).max(1)
    w = np.linalg.svd(h - h.mean(0), full_matrices=False)[2][0]
    w = w if np.median(h @ w) > 0 else -w
    counts = {c: int(((h @ w) * c > others).sum()) for c in np.geomspace(0.1, 1e4, 200)}
    c = min(counts, key=lambda c: abs(counts[c] - len(POOL) / 2))
    row = jnp.asarray(w * c, jnp.float32)
    p = dict(params, embed=params["embed"].at[i_tok].set(row))
    refuses = first_token_refuses(p, cfg, ids, mask, [i_tok])
    assert 8 <= refuses.sum() <= len(POOL) - 8, (c, counts[c], refuses.sum())
    save_hf(p, cfg, folder)
    return (
        cfg,
        [x for x, r in zip(POOL, refuses, strict=True) if r],
        [x for x, r in zip(POOL, refuses, strict=True) if not r],
    )


def tiny_data(folder, refused, other):
    """A refusal_direction data folder: the refused prompts as "harmful", the others harmless."""
    records = lambda xs: json.dumps([{"instruction": x, "category": None} for x in xs])  # noqa: E731
    (folder / "splits").mkdir(parents=True)
    (folder / "processed").mkdir()
    for part in ("train", "val", "test"):
        (folder / "splits" / f"harmful_{part}.json").write_text(records(refused))
        (folder / "splits" / f"harmless_{part}.json").write_text(records(other))
    (folder / "processed" / "harmbench_test.json").write_text(records(refused))


@pytest.mark.slow  # ~40 s alone, 2-3 min on a busy machine
def test_demo_runs_on_gemma3_with_gemma_scope_2(tmp_path):
    cfg, refused, other = tiny_gemma3(tmp_path / "gemma-3-tiny")
    assert cfg.family == "gemma3"
    site = tmp_path / "gemma-scope-2-tiny-it" / "resid_post_all"
    for layer in range(cfg.n_layers):
        for tag, l0 in (("small", 10), ("big", 60)):
            arrays = gemmascope2_arrays(layer, d=cfg.d_model, s=48)
            write_gemmascope2(site / f"layer_{layer}_width_16k_l0_{tag}", arrays, layer, l0)
    tiny_data(tmp_path / "data", refused, other)
    args = [
        "demo", "--model-dir", str(tmp_path / "gemma-3-tiny"),
        "--sae-dir", str(site.parent), "--target-l0", "50", "--data-dir", str(tmp_path / "data"),
        "--out", str(tmp_path / "runs"), "--n-train", "4", "--n-test", "4", "--n-steps", "2",
        "--n-features", "3", "--n-candidates", "4", "--max-new-tokens", "3", "--quiet",
    ]  # fmt: skip
    assert cli_main(args) == 0
    report = json.loads(next((tmp_path / "runs").iterdir()).joinpath("report.json").read_text())
    assert report["model"]["n_layers"] == cfg.n_layers
    assert set(report["methods"]) == {"base", "AS", "cs", "act", "la", "random", "ours"}
    for r in report["methods"].values():
        assert 0.0 <= r["jailbreak_rate"] <= 1.0
    assert len(report["features"]["ours"]) == 3
