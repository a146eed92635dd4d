"""Hub ids and SAE release names resolved through a fabricated Hugging Face cache folder
(refs/, snapshots/<commit>/ with symlinks into blobs/, as huggingface_hub lays it out)."""

import os

import jax
import numpy as np
import pytest

from ports import registry
from ports.hf import load_hf, save_hf
from ports.loading import load_model
from ports.sae import load_sae, load_sae_set
from refusal_jax.core.config import ModelConfig
from refusal_jax.core.model import init_params
from tests.support.saes import gemmascope2_arrays, write_gemmascope2

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CFG = ModelConfig(
    family="llama", vocab_size=64, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=8,
    d_mlp=32,
)  # fmt: skip


def cache_repo(cache, repo, files_from, commit=COMMIT, ref="main"):
    """Move the files of ``files_from`` into the cache as huggingface_hub does: blobs named by
    content, snapshot entries symlinked to them, refs/<ref> holding the commit."""
    base = cache / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / commit
    for path in sorted(p for p in files_from.rglob("*") if p.is_file()):
        rel = path.relative_to(files_from)
        blob = base / "blobs" / f"{abs(hash(str(rel))):x}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, blob)
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).symlink_to(os.path.relpath(blob, (snap / rel).parent))
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture
def cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return cache


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HOME", raising=False)
    assert registry.hf_cache_dir().parts[-3:] == (".cache", "huggingface", "hub")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert registry.hf_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert registry.hf_cache_dir() == tmp_path / "c"


def test_model_id_loads_from_the_cache(cache, tmp_path):
    params = init_params(CFG, jax.random.PRNGKey(1))
    save_hf(params, CFG, tmp_path / "src")
    snap = cache_repo(cache, "google/gemma-2-2b-it", tmp_path / "src")
    assert registry.resolve_model("google/gemma-2-2b-it") == snap
    cfg, back = load_hf("google/gemma-2-2b-it")
    assert cfg == CFG
    np.testing.assert_array_equal(back["layers"]["q"], params["layers"]["q"])
    cfg2, _ = load_model("google/gemma-2-2b-it")
    assert cfg2 == CFG
    assert registry.resolve_model(tmp_path / "src") == tmp_path / "src"  # a path stays a path
    # a pinned commit without a ref, and an unknown branch
    assert registry.snapshot("google/gemma-2-2b-it", COMMIT) == snap
    with pytest.raises(registry.NotCachedError, match="--revision dev"):
        registry.snapshot("google/gemma-2-2b-it", "dev")


def test_absent_model_says_what_to_download(cache):
    with pytest.raises(registry.NotCachedError) as e:
        load_hf("google/gemma-2-9b-it")
    msg = str(e.value)
    assert "\n" not in msg
    assert "`huggingface-cli download google/gemma-2-9b-it`" in msg and str(cache) in msg


def test_cli_absent_model_is_a_one_line_exit(cache, capsys):
    from refusal_jax.cli import main as cli_main

    argv = ["demo", "--model", "google/gemma-2-9b-it", "--sae-dir", "gemma-scope-9b-it-res"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "huggingface-cli download google/gemma-scope-9b-it-res" in err


def test_gemma_scope_2_release_from_the_cache(cache, tmp_path):
    src = tmp_path / "gs2"
    for layer in (0, 1):
        for tag, l0 in (("small", 12), ("big", 90)):
            a = gemmascope2_arrays(10 * layer + l0, 8, 24)
            write_gemmascope2(
                src / "resid_post_all" / f"layer_{layer}_width_16k_l0_{tag}", a, layer, l0
            )
    snap = cache_repo(cache, "google/gemma-scope-2-1b-it", src)
    one = registry.resolve_sae("gemma-scope-2-1b-it", layer=1, width="16k", l0="big")
    assert one == snap / "resid_post_all" / "layer_1_width_16k_l0_big"
    np.testing.assert_array_equal(load_sae(one).W_enc, gemmascope2_arrays(100, 8, 24)["w_enc"])
    near = registry.resolve_sae("gemma-scope-2-1b-it", layer=0, target_l0=10)
    assert near.name == "layer_0_width_16k_l0_small"
    site = registry.resolve_sae_dir("gemma-scope-2-1b-it-res-all")
    assert sorted(load_sae_set(site, target_l0=100)) == [0, 1]
    with pytest.raises(registry.NotCachedError) as e:
        registry.resolve_sae("gemma-scope-2-1b-it", layer=7, width="65k", l0="small")
    assert str(e.value).endswith(
        "run `huggingface-cli download google/gemma-scope-2-1b-it "
        '--include "resid_post_all/layer_7_width_65k_l0_small/*"`'
    )
    with pytest.raises(registry.NotCachedError, match='--include "resid_post/layer_'):
        registry.resolve_sae_dir("gemma-scope-2-1b-it-res")  # that site was not downloaded
    with pytest.raises(registry.NotCachedError, match="gemma-scope-2-4b-pt"):
        registry.resolve_sae_dir("gemma-scope-2-4b-pt")


def test_gemmascope_and_llamascope_releases(cache, tmp_path):
    src = tmp_path / "gs"
    for l0 in (20, 82):
        folder = src / "layer_3" / "width_16k" / f"average_l0_{l0}"
        folder.mkdir(parents=True)
        a = gemmascope2_arrays(l0, 8, 24)
        np.savez(folder / "params.npz", W_enc=a["w_enc"], W_dec=a["w_dec"], b_enc=a["b_enc"],
                 b_dec=a["b_dec"], threshold=a["threshold"])  # fmt: skip
    cache_repo(cache, "google/gemma-scope-2b-pt-res", src)
    path = registry.resolve_sae("gemma-scope-2b-pt-res", layer=3, width="16k", target_l0=100)
    assert path.parent.name == "average_l0_82"
    exact = registry.resolve_sae("gemma-scope-2b-pt-res", layer=3, width="16k", l0=20)
    assert exact.name == "average_l0_20"
    assert list(load_sae_set(registry.resolve_sae_dir("gemma-scope-2b-pt-res"), width="16k")) == [3]
    with pytest.raises(registry.NotCachedError, match='"layer_4/width_16k/average_l0_\\*/\\*"'):
        registry.resolve_sae("gemma-scope-2b-pt-res", layer=4)
    with pytest.raises(registry.NotCachedError, match="fnlp/Llama3_1-8B-Base-LXR-8x"):
        registry.resolve_sae("llama_scope_lxr_8x", layer=15)
    with pytest.raises(KeyError, match="unknown SAE release 'nope'"):
        registry.resolve_sae("nope", layer=0)
