"""Parity of the JAX model core with transformers' PyTorch implementation (float32, eager)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ports.hf import load_hf  # noqa: E402
from refusal_jax.core.model import forward, generate, rms_norm  # noqa: E402
from tests.support.hf_tiny import left_padded_batch, make_hf_model  # noqa: E402

KINDS = ["gemma2", "llama3", "llama_tied", "qwen2", "gemma3", "qwen3"]


@pytest.fixture(scope="module", params=KINDS)
def pair(request, tmp_path_factory):
    """(kind, hf_model, cfg, params) built once per family for the whole module."""
    hf = make_hf_model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    cfg, params = load_hf(folder)
    return request.param, hf, cfg, params


def _hf_forward(hf, ids, mask):
    with torch.no_grad():
        return hf(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)


def test_config_is_read_faithfully(pair):
    kind, hf, cfg, _ = pair
    assert cfg.n_layers == hf.config.num_hidden_layers
    assert cfg.n_kv_heads == hf.config.num_key_value_heads
    assert cfg.tie_embeddings == bool(hf.config.tie_word_embeddings)
    if kind == "gemma2":
        assert cfg.layer_is_sliding == (True, False, True)
        assert cfg.sliding_window == 5 and cfg.final_softcap == 30.0
    if kind == "llama3":
        assert dict(cfg.rope_scaling)["rope_type"] == "llama3"
    if kind == "qwen2":
        assert cfg.qkv_bias
    if kind == "gemma3":
        assert cfg.layer_is_sliding == (True, False, True) and cfg.sliding_window == 5
        assert cfg.qk_norm and cfg.norm_plus_one and cfg.sandwich_norms and cfg.embed_scale
        assert (cfg.rope_theta, cfg.rope_local_theta) == (1000.0, 50.0)
        assert dict(cfg.rope_scaling) == {"rope_type": "linear", "factor": 4.0}
        assert cfg.query_pre_attn_scalar == 12 and cfg.head_dim == 16
        assert cfg.attn_softcap is None and cfg.final_softcap is None
    if kind == "qwen3":
        assert cfg.qk_norm and not cfg.qkv_bias and not cfg.norm_plus_one
        assert cfg.head_dim == 24 != cfg.d_model // cfg.n_heads
        assert not cfg.tie_embeddings


def test_logits_and_every_layer_match_hf(pair):
    kind, hf, cfg, params = pair
    ids, mask = left_padded_batch(seed=1)
    ref = _hf_forward(hf, ids, mask)
    out = forward(params, cfg, jnp.asarray(ids), jnp.asarray(mask), return_residuals=True)
    valid = mask.astype(bool)
    err = np.abs(np.asarray(out.logits) - ref.logits.numpy())[valid].max()
    assert err <= 1e-4, f"{kind}: logits max-abs error {err:.2e}"
    # hidden_states[0] = embeddings, [l+1] = after layer l; the last one is after the final norm.
    hs = [h.numpy() for h in ref.hidden_states]
    assert np.abs(np.asarray(out.resid_pre[0]) - hs[0])[valid].max() <= 1e-5
    for layer in range(cfg.n_layers - 1):
        e = np.abs(np.asarray(out.resid_post[layer]) - hs[layer + 1])[valid].max()
        assert e <= 1e-4 * max(1.0, np.abs(hs[layer + 1]).max()), f"{kind} layer {layer}: {e:.2e}"
        e_pre = np.abs(np.asarray(out.resid_pre[layer + 1]) - hs[layer + 1])[valid].max()
        assert e_pre == pytest.approx(e, abs=1e-6)
    last = rms_norm(out.resid_post[-1], params["final_norm"], cfg)
    assert np.abs(np.asarray(last) - hs[-1])[valid].max() <= 1e-4


def test_left_padding_does_not_change_logits(pair):
    kind, _, cfg, params = pair
    ids, mask = left_padded_batch(seed=2, pads=(0, 5, 0))
    padded = forward(params, cfg, jnp.asarray(ids), jnp.asarray(mask)).logits
    alone = forward(params, cfg, jnp.asarray(ids[1:2, 5:])).logits
    err = np.abs(np.asarray(padded[1, 5:]) - np.asarray(alone[0])).max()
    assert err <= 1e-5, f"{kind}: padded vs unpadded {err:.2e}"


def test_greedy_generation_matches_hf_generate(pair):
    kind, hf, cfg, params = pair
    ids, mask = left_padded_batch(seed=3)
    new = 14
    with torch.no_grad():
        free = hf.generate(
            torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            max_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=1,
        )
    free = free[:, ids.shape[1] :].numpy()
    assert len(np.unique(free)) >= 6, "degenerate random model: the test would prove little"
    # Make one row stop early: its 5th token becomes the EOS for a second run.
    eos = int(free[0, 4])
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            max_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=eos,
        )
    ref = ref[:, ids.shape[1] :].numpy()
    out = generate(params, cfg, ids, mask, max_new_tokens=new, eos_token_ids=(eos,), pad_token_id=0)
    tokens = np.asarray(out.tokens)
    np.testing.assert_array_equal(tokens[:, : ref.shape[1]], ref)
    assert (tokens[:, ref.shape[1] :] == 0).all()
    first_eos = int(np.argmax(ref[0] == eos)) + 1
    assert int(out.lengths[0]) == first_eos


def test_bfloat16_stays_close_to_float32(pair):
    """bf16 parameters and activations stay as close to float32 as HF's own bf16 run does."""
    import copy

    kind, hf, cfg, params = pair
    ids, mask = left_padded_batch(seed=4)
    valid = mask.astype(bool)
    f32 = np.asarray(forward(params, cfg, jnp.asarray(ids), jnp.asarray(mask)).logits)
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    b16 = np.asarray(forward(p16, cfg, jnp.asarray(ids), jnp.asarray(mask)).logits)
    with torch.no_grad():
        hf16 = copy.deepcopy(hf).to(torch.bfloat16)
        ref16 = hf16(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.float().numpy()
    scale = np.abs(f32[valid]).max()
    rel = np.abs(b16 - f32)[valid].max() / scale
    rel_hf = np.abs(ref16 - f32)[valid].max() / scale
    # Measured: ours 0.9-1.7% (llama/qwen), 10.6% on the high-gain random Gemma-2 where HF's
    # own bf16 run is off by 6.1%. Allow twice HF's error, and never more than 15%.
    assert rel <= max(0.03, 2 * rel_hf) and rel <= 0.15, f"{kind}: {rel:.3f} (HF {rel_hf:.3f})"
    top_agree = (b16.argmax(-1) == f32.argmax(-1))[valid].mean()
    assert top_agree >= 0.85, f"{kind}: bf16 top-1 agreement {top_agree:.2f}"


@pytest.mark.parametrize("kind", ["gemma3", "qwen3"])
def test_gemma3_and_qwen3_switches_are_visible(kind, tmp_path):
    """Guard: the parity above would fail without q/k norms, without Gemma 3's local RoPE or
    its global RoPE scaling (each changes the logits by far more than the 1e-4 tolerance)."""
    make_hf_model(kind).save_pretrained(tmp_path)
    cfg, params = load_hf(tmp_path)
    ids, mask = left_padded_batch(seed=1)
    valid = mask.astype(bool)
    base = np.asarray(forward(params, cfg, jnp.asarray(ids), jnp.asarray(mask)).logits)
    ones = 0.0 if cfg.norm_plus_one else 1.0  # the identity norm weight
    no_qk = params | {
        "layers": params["layers"]
        | {k: jnp.full_like(params["layers"][k], ones) for k in ("q_norm", "k_norm")}
    }
    variants = {"no q/k norm": (no_qk, cfg)}
    if kind == "gemma3":
        variants["one RoPE for all layers"] = (params, cfg.replace(rope_local_theta=None))
        variants["no RoPE scaling"] = (params, cfg.replace(rope_scaling=()))
    for name, (p, c) in variants.items():
        other = np.asarray(forward(p, c, jnp.asarray(ids), jnp.asarray(mask)).logits)
        diff = np.abs(other - base)[valid].max()
        assert diff > 1e-2, f"{kind}: {name} changes logits by only {diff:.2e}"


def test_save_hf_round_trips_through_transformers(pair, tmp_path):
    """save_hf writes a folder transformers loads into the same model (no missing or unexpected
    tensors, same logits), and load_hf reads it back to the same config and parameters."""
    from transformers import AutoModelForCausalLM

    from ports.hf import save_hf

    kind, hf, cfg, params = pair
    save_hf(params, cfg, tmp_path)
    back, info = AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager", output_loading_info=True
    )
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"}
    assert not problems, f"{kind}: {problems}"
    assert type(back) is type(hf)
    ids, mask = left_padded_batch(seed=5)
    valid = mask.astype(bool)
    ref = _hf_forward(hf, ids, mask).logits.numpy()
    got = _hf_forward(back.eval(), ids, mask).logits.numpy()
    assert np.abs(got - ref)[valid].max() <= 1e-5 * max(1.0, np.abs(ref).max()), kind
    cfg2, params2 = load_hf(tmp_path)
    assert cfg2 == cfg
    for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_multimodal_gemma3_text_part_matches_hf(tmp_path):
    """A Gemma3ForConditionalGeneration folder (text_config, tensors under language_model.*, a
    vision tower we do not use): load_hf reads the language model, whose logits on text match
    transformers' multimodal model."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    from tests.support.hf_tiny import hf_config

    torch.manual_seed(0)
    text = hf_config("gemma3")
    vision = SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=8,
    )  # fmt: skip
    mm = Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4,
        image_token_index=96, boi_token_index=94, eoi_token_index=95,
    )  # fmt: skip
    mm._attn_implementation = "eager"
    model = Gemma3ForConditionalGeneration(mm).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "language_model" in name:
                p.normal_(0, 0.3 if "norm" in name else 4 / np.sqrt(p.shape[-1]))
    model.save_pretrained(tmp_path)
    cfg, params = load_hf(tmp_path)
    assert cfg.family == "gemma3" and cfg.layer_is_sliding == (True, False, True)
    ids, mask = left_padded_batch(seed=6)
    ref = _hf_forward(model, ids, mask).logits.numpy()
    ours = np.asarray(forward(params, cfg, jnp.asarray(ids), jnp.asarray(mask)).logits)
    valid = mask.astype(bool)
    assert np.abs(ref).max() > 1.0
    err = np.abs(ours - ref)[valid].max()
    assert err <= 1e-4 * np.abs(ref).max(), f"logits max-abs error {err:.2e}"
