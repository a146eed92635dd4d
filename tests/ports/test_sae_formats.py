"""SAE file formats: one loader test per real layout (files written here with the published key
names, shapes and orientations), round trips through every writer, and clear errors."""

import json
import math

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from ports import sae as sae_io
from ports.safetensors_io import save_file
from refusal_jax import sae as sae_lib
from refusal_jax.core.errors import UsageError
from tests.support.saes import gemmascope_arrays, np_decode, np_encode, random_sae

D, S = 12, 40
RNG = np.random.default_rng(0)
X = RNG.normal(0, 1, (6, D)).astype(np.float32)


def gemma_ref(a, x):
    pre = x @ a["W_enc"] + a["b_enc"]
    f = (pre > a["threshold"]) * np.maximum(pre, 0)
    return f, f @ a["W_dec"] + a["b_dec"]


# ----------------------------------------------------------------------------- GemmaScope
def test_gemmascope_tree_and_find(tmp_path):
    for l0, seed in ((22, 1), (82, 2), (141, 3)):
        folder = tmp_path / "layer_5" / "width_16k" / f"average_l0_{l0}"
        folder.mkdir(parents=True)
        np.savez(folder / "params.npz", **gemmascope_arrays(seed))
    (tmp_path / "layer_5" / "width_65k" / "average_l0_100").mkdir(parents=True)
    path = sae_io.find_gemmascope(tmp_path, 5, 16384, target_l0=100)
    assert path.parent.name == "average_l0_82"
    assert sae_io.find_gemmascope(tmp_path, 5, "16k", 130).parent.name == "average_l0_141"
    sae = sae_io.load_sae(path, expected_d_in=D)
    assert sae.cfg == sae_lib.SAEConfig("jumprelu", D, S)
    a = gemmascope_arrays(2)
    f, rec = gemma_ref(a, X)
    np.testing.assert_allclose(sae_lib.encode(sae, X), f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sae_lib.reconstruct(sae, X), rec, rtol=1e-5, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="width_4k"):
        sae_io.find_gemmascope(tmp_path, 5, "4k")
    with pytest.raises(FileNotFoundError, match="no average_l0"):
        sae_io.find_gemmascope(tmp_path, 5, "65k")
    with pytest.raises(FileNotFoundError, match="layer_6"):
        sae_io.find_gemmascope(tmp_path, 6, "16k")
    sets = sae_io.load_sae_set(tmp_path, width="16k", target_l0=20)
    assert list(sets) == [5]
    np.testing.assert_array_equal(sets[5].W_enc, gemmascope_arrays(1)["W_enc"])


@pytest.mark.parametrize(
    "arch,k,apply_b_dec,scale",
    [("jumprelu", None, False, 1.0), ("relu", None, True, 2.0), ("batchtopk", 3, True, 1.5)],
)
def test_gemmascope_roundtrip(tmp_path, arch, k, apply_b_dec, scale):
    sae = random_sae(arch, k=k, apply_b_dec=apply_b_dec, input_scale=scale)
    path = sae_io.save_gemmascope(sae, tmp_path / "g")
    back = sae_io.load_gemmascope(path)
    np.testing.assert_allclose(sae_lib.encode(back, X), sae_lib.encode(sae, X), atol=2e-5)
    np.testing.assert_allclose(sae_lib.reconstruct(back, X), sae_lib.reconstruct(sae, X), atol=2e-5)
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]


def test_gemmascope_refuses_topk(tmp_path):
    with pytest.raises(ValueError, match="topk"):
        sae_io.save_gemmascope(random_sae("topk", k=3), tmp_path)


# ----------------------------------------------------------------------------- SAELens
def write_saelens(folder, cfg, arrays):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(arrays, folder / "sae_weights.safetensors")


def test_saelens_new_style_jumprelu_metadata(tmp_path):
    a = gemmascope_arrays(4)
    cfg = {
        "architecture": "jumprelu",
        "d_in": D,
        "d_sae": S,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"model_name": "gemma-2-2b", "hook_name": "blocks.7.hook_resid_post"},
    }
    write_saelens(tmp_path / "sae", cfg, {k: v.astype(ml_dtypes.bfloat16) for k, v in a.items()})
    sae = sae_io.load_sae(tmp_path / "sae")
    assert sae.W_enc.dtype == jnp.float32
    a32 = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in a.items()}
    np.testing.assert_allclose(sae_lib.encode(sae, X), gemma_ref(a32, X)[0], rtol=1e-5, atol=1e-5)
    assert list(sae_io.load_sae_set(tmp_path)) == [7]  # layer from metadata.hook_name


def test_saelens_old_style_topk_and_scaling_factor(tmp_path):
    r = np.random.default_rng(5)
    a = {
        "W_enc": r.normal(0, 0.5, (D, S)).astype(np.float32),
        "W_dec": r.normal(0, 0.5, (S, D)).astype(np.float32),
        "b_enc": r.normal(0, 0.2, S).astype(np.float32),
        "b_dec": r.normal(0, 0.3, D).astype(np.float32),
        "scaling_factor": r.uniform(0.5, 2.0, S).astype(np.float32),
    }
    cfg = {  # sae_lens 3/4 era field names, no "architecture"
        "d_in": D,
        "d_sae": S,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 4},
        "apply_b_dec_to_input": True,
        "normalize_activations": "expected_average_only_in",
        "hook_name": "blocks.2.hook_resid_post",
        "hook_layer": 2,
    }
    write_saelens(tmp_path / "old", cfg, a)
    with pytest.raises(sae_io.SAEFormatError, match="scaling factor"):
        sae_io.load_saelens(tmp_path / "old")
    sae = sae_io.load_saelens(tmp_path / "old", input_scale=0.5)
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.input_scale) == ("topk", 4, 0.5)
    pre = (X * 0.5 - a["b_dec"]) @ a["W_enc"] + a["b_enc"]
    relu = np.maximum(pre, 0)
    keep = np.argsort(-relu, axis=-1)[:, :4]
    f = np.zeros_like(relu)
    np.put_along_axis(f, keep, np.take_along_axis(relu, keep, -1), -1)
    rec = ((f * a["scaling_factor"]) @ a["W_dec"] + a["b_dec"]) / 0.5
    np.testing.assert_allclose(sae_lib.reconstruct(sae, X), rec, rtol=1e-4, atol=1e-4)


def test_saelens_log_threshold_and_defaults(tmp_path):
    a = gemmascope_arrays(6)
    a["log_threshold"] = np.log(a.pop("threshold"))
    write_saelens(tmp_path / "s", {"architecture": "jumprelu", "d_in": D, "d_sae": S}, a)
    sae = sae_io.load_saelens(tmp_path / "s")
    assert sae.cfg.apply_b_dec_to_input  # SAELens' default when the field is absent
    np.testing.assert_allclose(sae.threshold, np.exp(a["log_threshold"]), rtol=1e-6)


@pytest.mark.parametrize(
    "arch,k,apply_b_dec,scale",
    [
        ("relu", None, True, 1.0),
        ("jumprelu", None, False, 3.0),
        ("topk", 5, True, 0.5),
        ("batchtopk", 4, False, 1.0),
    ],
)
def test_saelens_roundtrip(tmp_path, arch, k, apply_b_dec, scale):
    sae = random_sae(arch, k=k, apply_b_dec=apply_b_dec, input_scale=scale)
    sae_io.save_saelens(sae, tmp_path / "s", hook_name="blocks.3.hook_resid_post")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    back = sae_io.load_sae(tmp_path / "s", expected_d_in=D)
    expect_arch = {"batchtopk": "jumprelu"}.get(arch, arch)
    assert back.cfg.architecture == expect_arch and back.cfg.k == (k if arch == "topk" else None)
    np.testing.assert_allclose(sae_lib.encode(back, X), sae_lib.encode(sae, X), atol=2e-5)
    np.testing.assert_allclose(sae_lib.reconstruct(back, X), sae_lib.reconstruct(sae, X), atol=2e-5)


# ----------------------------------------------------------------------------- LlamaScope
def write_llamascope(folder, avg_norm=6.3125, theta=0.2, dtype=ml_dtypes.bfloat16, seed=7):
    r = np.random.default_rng(seed)
    w = {
        "encoder.weight": r.normal(0, 0.3, (S, D)),  # [d_sae, d_model]
        "encoder.bias": r.normal(0, 0.1, S),
        "decoder.weight": r.normal(0, 0.3, (D, S)),  # [d_model, d_sae]
        "decoder.bias": r.normal(0, 0.2, D),
    }
    w = {k: v.astype(dtype) for k, v in w.items()}
    (folder / "checkpoints").mkdir(parents=True)
    save_file(w, folder / "checkpoints" / "final.safetensors")
    hp = {
        "d_model": D,
        "d_sae": S,
        "hook_point_in": "blocks.15.hook_resid_post",
        "hook_point_out": "blocks.15.hook_resid_post",
        "jump_relu_threshold": theta,
        "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": avg_norm, "out": avg_norm},
        "top_k": 50,
        "act_fn": "jumprelu",
        "apply_decoder_bias_to_pre_encoder": False,
    }
    (folder / "hyperparams.json").write_text(json.dumps(hp))
    return {k: np.asarray(v, np.float64) for k, v in w.items()}


def llamascope_unfolded(w, x, s, thr):
    """The SAE on normalized inputs x*s, output rescaled by 1/s, weights as stored."""
    pre = (x * s) @ w["encoder.weight"].T + w["encoder.bias"]
    f = np.maximum(pre, 0) * (pre > thr)
    return f, (f @ w["decoder.weight"].T + w["decoder.bias"]) / s


def test_llamascope_folding_equals_unfolded(tmp_path):
    folder = tmp_path / "Llama3_1-8B-Base-L15R-8x"
    w = write_llamascope(folder)
    s = math.sqrt(D) / 6.3125
    x = X * 5.0  # activations with a norm the normalization matters for
    folded = sae_io.load_sae(folder, expected_d_in=D)
    unfolded = sae_io.load_llamascope(folder, fold=False)
    assert folded.cfg.input_scale == 1.0 and unfolded.cfg.input_scale == pytest.approx(s)
    np.testing.assert_allclose(folded.threshold, np.full(S, 0.2 * s), rtol=1e-6)
    f_ref, rec_ref = llamascope_unfolded(w, x, s, 0.2 * s)
    assert 0.05 < (f_ref > 0).mean() < 0.95
    for sae in (folded, unfolded):
        np.testing.assert_allclose(sae_lib.encode(sae, x), f_ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(sae_lib.reconstruct(sae, x), rec_ref, rtol=1e-4, atol=1e-4)
    assert list(sae_io.load_sae_set(tmp_path)) == [15]


def test_llamascope_saelens_5_5_2_inflates_l0(tmp_path):
    folder = tmp_path / "L3R"
    w = write_llamascope(folder, avg_norm=1.0)  # s = sqrt(12) > 1
    s = math.sqrt(D)
    old = sae_io.load_llamascope(folder, saelens_5_5_2=True)
    new = sae_io.load_llamascope(folder)
    np.testing.assert_allclose(old.threshold, np.full(S, 0.2), rtol=1e-6)
    f_ref, _ = llamascope_unfolded(w, X, s, 0.2)
    np.testing.assert_allclose(sae_lib.encode(old, X), f_ref, rtol=1e-4, atol=1e-4)
    l0_old = float((sae_lib.encode(old, X) > 0).sum(-1).mean())
    l0_new = float((sae_lib.encode(new, X) > 0).sum(-1).mean())
    assert l0_old > l0_new


# ----------------------------------------------------------------------------- sparsify
def test_sparsify_topk(tmp_path):
    r = np.random.default_rng(8)
    w = {
        "encoder.weight": r.normal(0, 0.5, (S, D)).astype(np.float32),
        "encoder.bias": r.normal(0, 0.1, S).astype(np.float32),
        "W_dec": r.normal(0, 0.5, (S, D)).astype(np.float32),
        "b_dec": r.normal(0, 0.3, D).astype(np.float32),
    }
    folder = tmp_path / "layers.4"
    folder.mkdir()
    save_file(w, folder / "sae.safetensors")
    cfg = {"expansion_factor": 4, "normalize_decoder": True, "num_latents": S, "k": 6}
    (folder / "cfg.json").write_text(json.dumps({**cfg, "multi_topk": False, "d_in": D}))
    sae = sae_io.load_sae(folder)
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.apply_b_dec_to_input) == ("topk", 6, True)
    pre = np.maximum((X - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"], 0)
    top = np.argsort(-pre, -1)[:, :6]
    f = np.zeros_like(pre)
    np.put_along_axis(f, top, np.take_along_axis(pre, top, -1), -1)
    np.testing.assert_allclose(sae_lib.encode(sae, X), f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        sae_lib.reconstruct(sae, X), f @ w["W_dec"] + w["b_dec"], rtol=1e-5, atol=1e-5
    )
    assert list(sae_io.load_sae_set(tmp_path)) == [4]
    # the numpy reference of test_sae agrees too
    np.testing.assert_allclose(
        np_decode(sae, np_encode(sae, X)), f @ w["W_dec"] + w["b_dec"], atol=1e-4
    )


# ----------------------------------------------------------------------------- errors
def test_bad_files_give_clear_errors(tmp_path):
    a = gemmascope_arrays()
    bad = dict(a)
    del bad["threshold"]
    np.savez(tmp_path / "missing.npz", **bad)
    with pytest.raises(sae_io.SAEFormatError, match="missing array 'threshold'"):
        sae_io.load_sae(tmp_path / "missing.npz")
    bad = dict(a, b_dec=np.zeros(D + 1, np.float32))
    np.savez(tmp_path / "shape.npz", **bad)
    with pytest.raises(sae_io.SAEFormatError, match=r"b_dec has shape \(13,\), expected \(12,\)"):
        sae_io.load_sae(tmp_path / "shape.npz")
    np.savez(tmp_path / "ok.npz", **a)
    with pytest.raises(sae_io.SAEFormatError, match="d_in is 12 but the model's d_model is 16"):
        sae_io.load_sae(tmp_path / "ok.npz", expected_d_in=16)
    bad = dict(a, W_dec=a["W_dec"].astype(np.int32))
    np.savez(tmp_path / "int.npz", **bad)
    with pytest.raises(sae_io.SAEFormatError, match="'W_dec' has dtype int32"):
        sae_io.load_sae(tmp_path / "int.npz")
    obj = np.empty(2, dtype=object)
    np.savez(tmp_path / "pickled.npz", W_enc=obj)
    with pytest.raises(sae_io.SAEFormatError, match="without pickle"):
        sae_io.load_sae(tmp_path / "pickled.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(sae_io.SAEFormatError, match="no SAE found"):
        sae_io.load_sae(tmp_path / "empty")
    write_saelens(tmp_path / "gated", {"architecture": "gated", "d_in": D, "d_sae": S}, a)
    with pytest.raises(sae_io.SAEFormatError, match="'gated' is not supported"):
        sae_io.load_sae(tmp_path / "gated")
    cfg = {"architecture": "standard", "d_in": D, "d_sae": S, "normalize_activations": "layer_norm"}
    write_saelens(tmp_path / "ln", cfg, a)
    with pytest.raises(sae_io.SAEFormatError, match="per-token"):
        sae_io.load_sae(tmp_path / "ln")
    write_saelens(tmp_path / "wd", {"architecture": "standard", "d_in": 99, "d_sae": S}, a)
    with pytest.raises(sae_io.SAEFormatError, match="d_in=99 but W_enc gives 12"):
        sae_io.load_sae(tmp_path / "wd")
    write_saelens(tmp_path / "js", {}, a)
    (tmp_path / "js" / "cfg.json").write_text("{not json")
    with pytest.raises(sae_io.SAEFormatError, match="not valid JSON"):
        sae_io.load_sae(tmp_path / "js")
    folder = tmp_path / "llama"
    write_llamascope(folder)
    hp = json.loads((folder / "hyperparams.json").read_text())
    (folder / "hyperparams.json").write_text(json.dumps(dict(hp, d_model=D + 4)))
    with pytest.raises(
        sae_io.SAEFormatError, match=r"encoder.weight has shape \(40, 12\), expected \(40, 16\)"
    ):
        sae_io.load_sae(folder)
    with pytest.raises(ValueError, match="GemmaScope tree"):
        (tmp_path / "tree" / "layer_0" / "width_16k").mkdir(parents=True)
        sae_io.load_sae_set(tmp_path / "tree")


def _cli(argv):
    import argparse

    from refusal_jax.cli.sae import add_sae_commands

    p = argparse.ArgumentParser()
    add_sae_commands(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


def test_cli_convert_llamascope_to_saelens_and_gemmascope(tmp_path):
    src = tmp_path / "Llama3_1-8B-Base-L3R-8x"
    write_llamascope(src)
    assert _cli(["convert-sae", str(src), str(tmp_path / "sl"), "--expected-d-in", str(D)]) == 0
    assert (
        _cli(["convert-sae", str(tmp_path / "sl"), str(tmp_path / "gs"), "--to", "gemmascope"]) == 0
    )
    a, b = sae_io.load_sae(src), sae_io.load_sae(tmp_path / "gs")
    np.testing.assert_allclose(sae_lib.reconstruct(b, X), sae_lib.reconstruct(a, X), atol=1e-5)
    with pytest.raises(UsageError, match="--saelens-5-5-2"):
        _cli(["convert-sae", str(tmp_path / "sl"), str(tmp_path / "x"), "--saelens-5-5-2"])
