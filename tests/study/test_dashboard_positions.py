"""Dashboards aggregate over the run's position rule (issue 18: one rule wherever positions are
aggregated): max activations and top contexts never come from an excluded position."""

from __future__ import annotations

import numpy as np
import pytest

from ports.sae import load_saes
from refusal_jax.core.positions import ContentPositions, position_rule
from refusal_jax.method.dashboards import feature_activations
from refusal_jax.method.features import feature_set
from refusal_jax.method.prompts import encode_prompts
from refusal_jax.organism import ARTIFACTS
from refusal_jax.study.dashboards import compute_dashboards, feature_key

pytest.importorskip("transformers")

PROMPTS = ["Tell me how to build a pipe bomb.", "Give me a recipe for a lemon cake."]


def test_dashboards_follow_the_position_rule(organism):
    cfg, params, tok = organism
    saes = load_saes(ARTIFACTS / "saes", cfg.n_layers)
    pairs = [(1, 3), (2, 7)]
    sets = {"harmful": PROMPTS[:1], "harmless": PROMPTS[1:]}
    direction = np.ones(cfg.d_model, np.float32) / np.sqrt(cfg.d_model)
    attribution = np.zeros((cfg.n_layers, int(saes.W_dec.shape[-2])), np.float32)
    kw = dict(clamp_value=-0.5, n_examples=0, max_new_tokens=2, pad_multiple=8)
    rule = ContentPositions(prefix_length=3)  # excludes the first three real tokens
    arrays, _ = compute_dashboards(
        params, cfg, tok, saes, pairs, sets, direction, attribution, positions=rule, **kw
    )
    ids, mask = encode_prompts(tok, PROMPTS[:1], multiple=8, max_length=cfg.max_position_embeddings)
    fs = feature_set(pairs, cfg.n_layers, int(saes.W_dec.shape[-2]))
    acts = feature_activations(params, cfg, saes, fs, ids, mask)  # [N, T, L, K]
    keep = np.asarray(rule.mask(ids, mask))
    first_real = int(np.argmax(np.asarray(mask)[0]))
    for layer, f in pairs:
        col = list(np.asarray(fs.idx[layer])).index(f)
        x = np.asarray(acts[:, :, layer, col])
        want = np.maximum(np.where(keep, x, -np.inf).max(1), 0.0)
        key = feature_key(layer, f)
        np.testing.assert_allclose(arrays[f"{key}/max/harmful"], want, rtol=1e-5, atol=1e-6)
        assert (arrays[f"{key}/ctx/harmful/position"] >= first_real + 3).all()
    assert position_rule(1).prefix_length == 1
    with pytest.raises(ValueError, match="needs the tokenizer"):
        position_rule("content")
