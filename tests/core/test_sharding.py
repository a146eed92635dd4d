"""Sharded = single device, on 8 fake CPU devices (a subprocess: the device count is fixed when
JAX starts, and this test process already runs on one device)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    script = Path(__file__).parents[1] / "support" / "multidevice_check.py"
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["8x1", "2x4", "1x8"])
def test_sharded_equals_single_device(report, layout):
    r = report[layout]
    model = int(layout.split("x")[1])
    # parameters really are split over the model axis (heads), one shard per device
    assert r["q_shards"] == 8
    assert r["orbax_sharded_load_equal"] and r["orbax_bf16_sharded_load_equal"], r
    assert (r["q_spec"][-1] == "model") == (model > 1)
    # 4 KV heads: split over a model axis of 4, replicated over 8 (8 does not divide them)
    assert (r["k_spec"][-1] == "model") == (model == 4), r
    assert (r["sae_w_dec_spec"][1] == "model") == (model > 1), r  # SAE width split
    assert r["logits_max_abs_err"] <= 1e-4, r
    assert r["tokens_equal"], r
    assert r["attr_max_rel_err"] <= 1e-4, r  # the sharded sweep vs la_ig on one device
    assert r["codes_max_abs_err"] <= 1e-5, r


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gemma3", "qwen3"])
@pytest.mark.parametrize("layout", ["2x4", "1x8"])
def test_qk_norm_families_sharded_equal_single_device(report, family, layout):
    r = report[f"{family}/{layout}"]
    model = int(layout.split("x")[1])
    assert r["q_norm_spec"] == [], r  # per-head norms: replicated
    assert (r["q_spec"][-1] == "model") == (model > 1), r
    assert r["logits_max_abs_err"] <= 1e-4 * max(1.0, r["logits_scale"]), r
    assert r["tokens_equal"] and r["distinct_tokens"] >= 3, r


def test_sharding_rules_and_mesh_errors():
    """Partition rules on a stand-in mesh of 2 x 4 (no devices needed), and clear errors."""
    from types import SimpleNamespace

    from jax.sharding import PartitionSpec as P

    from refusal_jax.core.config import ModelConfig, gemma2_config, gemma3_config
    from refusal_jax.core.sharding import make_mesh, param_specs, shard_batch

    cfg = gemma2_config(
        vocab_size=66, d_model=32, n_layers=2, n_heads=8, n_kv_heads=2, head_dim=8, d_mlp=64
    )
    specs = param_specs(cfg, SimpleNamespace(shape={"data": 2, "model": 4}))
    layers = specs["layers"]
    assert layers["q"] == P(None, None, "model") and layers["o"] == P(None, "model", None)
    assert layers["k"] == P(None, None, None)  # 2 KV heads over 4 devices: replicated
    assert layers["gate"] == P(None, None, "model") and layers["down"] == P(None, "model", None)
    assert specs["embed"] == P(None, None)  # vocabulary 66 is not divisible by 4
    assert layers["attn_norm"] == P()
    # Gemma 3 / Qwen3: per-head q/k norms replicated, heads split whatever head_dim is
    for qk in (
        gemma3_config(
            vocab_size=64, d_model=32, n_layers=2, n_heads=8, n_kv_heads=4, head_dim=8, d_mlp=64
        ),
        ModelConfig(
            family="qwen3", vocab_size=64, d_model=32, n_layers=2, n_heads=8, n_kv_heads=4,
            head_dim=12, d_mlp=64, qk_norm=True, tie_embeddings=False,
        ),
    ):  # fmt: skip
        specs = param_specs(qk, SimpleNamespace(shape={"data": 2, "model": 4}))
        layers = specs["layers"]
        assert layers["q_norm"] == P() and layers["k_norm"] == P()
        assert layers["q"] == P(None, None, "model") and layers["k"] == P(None, None, "model")
        assert layers["o"] == P(None, "model", None) and specs["embed"] == P("model", None)
        assert "lm_head" not in specs or specs["lm_head"] == P(None, "model")
    with pytest.raises(ValueError, match="needs 2 devices"):
        make_mesh(data=2, model=1, devices=[object()])
    with pytest.raises(ValueError, match="does not divide"):
        make_mesh(model=3, devices=[object()] * 4)
    with pytest.raises(ValueError, match="positive int"):
        make_mesh(model=0)
    mesh = make_mesh()
    with pytest.raises(ValueError, match="cannot be split"):
        shard_batch(mesh, np.zeros(()))
