"""Gemma Scope 2 (Gemma 3) SAE folders as released: params.safetensors with lower-case keys and
config.json, under <site>/layer_{l}_width_{w}_l0_{tag}. Fixtures are written with the project's
safetensors writer; the converted SAE is checked against an independent numpy JumpReLU."""

import json

import ml_dtypes
import numpy as np
import pytest

from ports import sae as sae_io
from refusal_jax import sae as sae_lib
from tests.support.saes import gemmascope2_arrays, gemmascope2_ref, write_gemmascope2

D, S = 12, 40
X = np.random.default_rng(3).normal(0, 1, (7, D)).astype(np.float32)


@pytest.fixture
def release(tmp_path):
    """A gemma-scope-2-<size>-it release root: resid_post_all for layers 0-2 with two L0s at
    width 16k and one at 65k for layer 1, plus a transcoder site the loader must ignore."""
    site = tmp_path / "resid_post_all"
    seeds = {}
    for layer in range(3):
        for tag, l0, seed in (("small", 18, 10 * layer + 1), ("big", 120, 10 * layer + 2)):
            name = f"layer_{layer}_width_16k_l0_{tag}"
            write_gemmascope2(site / name, gemmascope2_arrays(seed, D, S), layer, l0)
            seeds[name] = seed
    write_gemmascope2(site / "layer_1_width_65k_l0_small", gemmascope2_arrays(99, D, 2 * S), 1, 20)
    tc = gemmascope2_arrays(7, D, S)
    tc["affine_skip_connection"] = np.eye(D, dtype=np.float32)
    write_gemmascope2(
        tmp_path / "transcoder_all" / "layer_0_width_16k_l0_big_affine", tc, 0, 50, "transcoder"
    )
    return tmp_path, seeds


def test_reconstructs_as_the_format_specifies(release):
    root, seeds = release
    folder = root / "resid_post_all" / "layer_2_width_16k_l0_big"
    assert sae_io.detect_format(folder) == "gemmascope2"
    sae = sae_io.load_sae(folder, expected_d_in=D)
    assert sae.cfg == sae_lib.SAEConfig("jumprelu", D, S)  # no b_dec on input, no scaling
    f, rec = gemmascope2_ref(gemmascope2_arrays(seeds[folder.name], D, S), X)
    assert 0 < (f > 0).mean() < 1  # the threshold bites on some features, not all
    np.testing.assert_allclose(sae_lib.encode(sae, X), f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sae_lib.reconstruct(sae, X), rec, rtol=1e-5, atol=1e-5)
    assert sae_io.gemmascope2_layer(folder) == 2


def test_bfloat16_params_load_exactly(tmp_path):
    a = {k: v.astype(ml_dtypes.bfloat16) for k, v in gemmascope2_arrays(4, D, S).items()}
    write_gemmascope2(tmp_path / "layer_0_width_16k_l0_small", a, 0, 10)
    sae = sae_io.load_gemmascope2(tmp_path / "layer_0_width_16k_l0_small" / "params.safetensors")
    np.testing.assert_array_equal(sae.W_dec, a["w_dec"].astype(np.float32))
    f, rec = gemmascope2_ref(a, X)
    np.testing.assert_allclose(sae_lib.reconstruct(sae, X), rec, rtol=1e-5, atol=1e-5)


def test_set_picks_width_and_l0_from_a_release_root(release):
    root, seeds = release
    sets = sae_io.load_sae_set(root, width="16k", target_l0=100)
    assert list(sets) == [0, 1, 2]
    for layer, sae in sets.items():
        want = gemmascope2_arrays(seeds[f"layer_{layer}_width_16k_l0_big"], D, S)
        np.testing.assert_array_equal(sae.W_enc, want["w_enc"])
    small = sae_io.load_sae_set(root / "resid_post_all", width=16384, target_l0=10, layers=[1])
    want = gemmascope2_arrays(seeds["layer_1_width_16k_l0_small"], D, S)
    np.testing.assert_array_equal(small[1].W_dec, want["w_dec"])
    wide = sae_io.find_gemmascope2(root, 1, "65k")
    assert wide.name == "layer_1_width_65k_l0_small"
    stacked = sae_io.load_saes(root, 3, "16k", 100)
    assert stacked.W_enc.shape == (3, D, S)
    with pytest.raises(ValueError, match=r"widths \['16k', '65k'\]: pass width="):
        sae_io.load_sae_set(root)
    with pytest.raises(FileNotFoundError, match="no width 1m"):
        sae_io.find_gemmascope2(root, 1, "1m")
    with pytest.raises(FileNotFoundError, match="no SAE for layers \\[5\\]"):
        sae_io.load_sae_set(root, width="16k", layers=[5])


def test_transcoders_and_bad_configs_are_refused(release, tmp_path):
    root, _ = release
    tc = root / "transcoder_all" / "layer_0_width_16k_l0_big_affine"
    with pytest.raises(sae_io.SAEFormatError, match="transcoder .*residual-stream SAEs"):
        sae_io.load_sae(tc)
    folder = root / "resid_post_all" / "layer_0_width_16k_l0_small"
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(cfg, width=S + 1)))
    with pytest.raises(sae_io.SAEFormatError, match=f"width={S + 1} but w_enc gives {S}"):
        sae_io.load_sae(folder)
    (folder / "config.json").write_text(json.dumps(dict(cfg, architecture="topk")))
    with pytest.raises(sae_io.SAEFormatError, match="'topk' is not supported"):
        sae_io.load_sae(folder)
    (folder / "config.json").write_text(
        json.dumps(
            dict(
                cfg,
                hf_hook_point_in="model.layers.4.output",
                hf_hook_point_out="model.layers.4.output",
            )
        )
    )
    with pytest.raises(sae_io.SAEFormatError, match="hooks layer 4, folder says 0"):
        sae_io.load_sae_set(root, width="16k", target_l0=10)
    with pytest.raises(sae_io.SAEFormatError, match="d_model is 16"):
        sae_io.load_sae(root / "resid_post_all" / "layer_1_width_16k_l0_big", expected_d_in=16)
    bad = gemmascope2_arrays(0, D, S)
    del bad["threshold"]
    write_gemmascope2(tmp_path / "x" / "layer_0_width_16k_l0_small", bad, 0, 10)
    with pytest.raises(sae_io.SAEFormatError, match="missing array 'threshold'"):
        sae_io.load_sae(tmp_path / "x" / "layer_0_width_16k_l0_small")
