"""Tiny random Hugging Face models (built offline) shared by the parity tests."""

from __future__ import annotations

import numpy as np

VOCAB = 97
NORM_STD = 0.1
# (embedding std, weight gain, bias std) per family, chosen so greedy continuations vary.
INIT = {
    "gemma2": (0.05, 1.0, 0.1),
    "llama3": (0.05, 1.0, 0.1),
    "llama_tied": (1.0, 2.0, 0.1),
    "qwen2": (0.05, 2.0, 0.1),
    "gemma3": (0.05, 1.0, 0.1),
    "qwen3": (0.05, 2.0, 0.1),
}
# (mean, std) of the per-head q/k norm weights: Gemma scales by (1 + w), Qwen3 by w.
QK_NORM = {"gemma3": (0.0, 0.3), "qwen3": (1.0, 0.3)}


def hf_config(kind: str):
    from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation="eager",
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
        max_position_embeddings=256,
    )
    if kind == "gemma2":
        # sliding_window 5 < the 12-token prompts: the window actually bites.
        return Gemma2Config(head_dim=16, sliding_window=5, query_pre_attn_scalar=16, **common)
    if kind == "llama3":
        rope = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        }
        return LlamaConfig(
            rope_scaling=rope, rope_theta=500000.0, tie_word_embeddings=False, **common
        )
    if kind == "llama_tied":  # SmolLM2-style: tied embeddings, full multi-head attention
        common["num_key_value_heads"] = 4
        return LlamaConfig(tie_word_embeddings=True, **common)
    if kind == "qwen2":
        return Qwen2Config(tie_word_embeddings=True, **common)
    if kind == "gemma3":
        # Layers sliding, global, sliding; window 5 < the 12-token prompts; local and global
        # RoPE bases differ and the global one is linearly scaled; head_dim != hidden / heads.
        rope = {
            "sliding_attention": {"rope_type": "default", "rope_theta": 50.0},
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000.0},
        }
        return Gemma3TextConfig(
            head_dim=16, sliding_window=5, sliding_window_pattern=2, query_pre_attn_scalar=12,
            rope_parameters=rope, **common,
        )  # fmt: skip
    if kind == "qwen3":  # untied, head_dim 24 != hidden / heads = 8
        return Qwen3Config(head_dim=24, tie_word_embeddings=False, rope_theta=1e6, **common)
    raise KeyError(kind)


def make_hf_model(kind: str, seed: int = 0):
    """A random float32 HF causal LM whose greedy continuations are not degenerate."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(kind)).eval()
    embed_std, gain, bias_std = INIT[kind]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("q_norm" in name or "k_norm" in name) and kind in QK_NORM:
                p.normal_(*QK_NORM[kind])
            elif "norm" in name:
                p.normal_(0, NORM_STD)
            elif "bias" in name:
                p.normal_(0, bias_std)
            elif "embed" in name:
                p.normal_(0, embed_std)
                p[0] = 0.0  # the pad token's row, as in real checkpoints
            else:
                p.normal_(0, gain * 4 / np.sqrt(p.shape[-1]))
    return model


def left_padded_batch(seed: int = 0, batch: int = 3, length: int = 12, pads=(0, 4, 7)):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, VOCAB, size=(batch, length))
    mask = np.ones_like(ids)
    for row, n in enumerate(pads[:batch]):
        ids[row, :n] = 0
        mask[row, :n] = 0
    return ids, mask


def save_tiny_classifier(folder, tokenizer_dir, seed: int = 0, vocab_size: int = 2048):
    """A random 2-layer HF Llama saved with ``save_pretrained`` plus the tokenizer files of
    ``tokenizer_dir``: a stand-in for a causal-LM classifier (the HarmBench judge), for plumbing
    tests only."""
    import shutil
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=False, pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # large weights: the yes/no margin then depends on the prompt
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, NORM_STD)
            elif "embed" in name:
                p.normal_(0, 1.0)
            else:
                p.normal_(0, 4.0 / np.sqrt(p.shape[-1]))
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(tokenizer_dir) / name, Path(folder) / name)
    return folder
