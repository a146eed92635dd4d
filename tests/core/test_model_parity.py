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

KINDS = ["gemma2", "llama3", "llama_tied", "qwen2"]


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
