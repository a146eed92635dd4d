"""PyTorch LA-IG reference, written the way the original (wj210/refusal_sae) computes it.

A Hugging Face ``Gemma2ForCausalLM`` (float32, eager attention) with forward hooks on every
decoder layer's output (resid_post; in transformers 5.x the decoder layer returns a plain tensor,
older versions a tuple whose first element is the hidden state; both are handled):

1. clean run: record x_l at every layer, f_clean,l = enc_l(x_l);
2. patched run: the refusal direction is ablated at every layer; record x_l^pre (the layer output
   before the ablation) and x~_l (after). f_patch,l = enc_l(x~_l), e_patch,l = x^pre - dec(f_patch)
   (error mode ``paper``) or x~ - dec(f_patch) (``ablated``); jb = per-sample argmax of the ablated
   run's last-position logits;
3. for each alpha in a Python loop: SAEs in the loop at every layer, f = enc(a),
   f_a = (1-alpha) f + alpha f_patch (``retain_grad``), e_a = (1-alpha)(a - dec(f)) +
   alpha e_patch, out = dec(f_a) + e_a; m = sum_b logit[b,-1,jb_b] - logit[b,-1,refusal];
   one backward per alpha;
4. A = (f_patch - f_clean) * mean_alpha dm/df_a, per token: [L, B, T, d_sae].

Nothing here is shared with :mod:`refusal_jax`; the JumpReLU SAEs are plain torch tensors built
from the same arrays (W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec, threshold).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TorchJumpReLU:
    W_enc: torch.Tensor  # [d_in, d_sae]
    b_enc: torch.Tensor
    W_dec: torch.Tensor  # [d_sae, d_in]
    b_dec: torch.Tensor
    threshold: torch.Tensor

    def encode(self, x):
        pre = x @ self.W_enc + self.b_enc
        return pre * (pre > self.threshold).to(pre.dtype)

    def decode(self, f):
        return f @ self.W_dec + self.b_dec


def saes_from_arrays(W_enc, b_enc, W_dec, b_dec, threshold) -> list[TorchJumpReLU]:
    """Per-layer torch SAEs from stacked arrays with a leading layer axis (numpy or JAX)."""
    arrs = [torch.tensor(np.asarray(a), dtype=torch.float32) for a in (W_enc, b_enc, W_dec, b_dec)]
    thr = torch.tensor(np.asarray(threshold), dtype=torch.float32)
    return [
        TorchJumpReLU(arrs[0][i], arrs[1][i], arrs[2][i], arrs[3][i], thr[i])
        for i in range(arrs[0].shape[0])
    ]


def saes_from_jax(saes) -> list[TorchJumpReLU]:
    """From a stacked :class:`refusal_jax.sae.SAE` (JumpReLU, input_scale 1, no b_dec input)."""
    if saes.cfg.architecture != "jumprelu" or saes.cfg.input_scale != 1.0:
        raise ValueError("the torch reference only implements plain JumpReLU SAEs")
    if saes.cfg.apply_b_dec_to_input:
        raise ValueError("the torch reference does not subtract b_dec from the input")
    return saes_from_arrays(saes.W_enc, saes.b_enc, saes.W_dec, saes.b_dec, saes.threshold)


def decoder_layers(model):
    """The decoder layers of an HF causal LM (``model.model.layers``)."""
    return list(model.model.layers)


def _split(output):
    if isinstance(output, tuple):
        return output[0], lambda h: (h,) + tuple(output[1:])
    return output, lambda h: h


@contextlib.contextmanager
def layer_hooks(model, fn):
    """Forward hooks calling ``fn(layer, hidden) -> new hidden or None`` on every layer output."""
    handles = []
    for i, layer in enumerate(decoder_layers(model)):

        def hook(_mod, _inp, output, i=i):
            h, rebuild = _split(output)
            new = fn(i, h)
            return None if new is None else rebuild(new)

        handles.append(layer.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def frozen(model):
    """Parameters without gradients for the duration (only activations need them)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Left-padding positions: 0 at the first real token (pads clamped to 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def run(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits


def la_ig_torch(
    model,
    saes: list[TorchJumpReLU],
    ids,
    mask,
    direction,
    *,
    refusal_token: int,
    n_steps: int = 10,
    error_mode: str = "paper",
    alphas=None,
):
    """Per-token LA-IG attributions [L, B, T, d_sae] (numpy) and the jailbreak tokens [B]."""
    if error_mode not in ("paper", "ablated"):
        raise ValueError(f"error_mode must be paper or ablated, got {error_mode!r}")
    ids = torch.tensor(np.array(ids), dtype=torch.long)
    mask = torch.tensor(np.array(mask), dtype=torch.long)
    r = torch.tensor(np.array(direction), dtype=torch.float32)
    r = r / r.norm()
    L = len(decoder_layers(model))
    if len(saes) != L:
        raise ValueError(f"{len(saes)} SAEs for {L} layers")

    clean, pre, abl = {}, {}, {}

    def record(i, h):
        clean[i] = h.detach().clone()

    def ablate(i, h):
        pre[i] = h.detach().clone()
        out = h - (h @ r)[..., None] * r
        abl[i] = out.detach().clone()
        return out

    with torch.no_grad():
        with layer_hooks(model, record):
            run(model, ids, mask)
        with layer_hooks(model, ablate):
            logits_abl = run(model, ids, mask)
        jb = logits_abl[:, -1].argmax(-1)
        f_clean = [saes[i].encode(clean[i]) for i in range(L)]
        f_patch = [saes[i].encode(abl[i]) for i in range(L)]
        x_err = pre if error_mode == "paper" else abl
        e_patch = [x_err[i] - saes[i].decode(f_patch[i]) for i in range(L)]

    if alphas is None:
        alphas = [k / n_steps for k in range(n_steps)]
    grad_sum = [torch.zeros_like(f) for f in f_patch]
    batch = torch.arange(ids.shape[0])
    for alpha in alphas:
        f_alpha = {}

        def sae_in_loop(i, h, alpha=alpha, f_alpha=f_alpha):
            f = saes[i].encode(h)
            f_a = (1 - alpha) * f + alpha * f_patch[i]
            if f_a.requires_grad:  # depends on upstream f_a's: keep its .grad
                f_a.retain_grad()
            else:  # the first layer (parameters are frozen): a leaf
                f_a.requires_grad_(True)
            f_alpha[i] = f_a
            e_a = (1 - alpha) * (h - saes[i].decode(f)) + alpha * e_patch[i]
            return saes[i].decode(f_a) + e_a

        with layer_hooks(model, sae_in_loop), frozen(model):
            logits = run(model, ids, mask)
        last = logits[:, -1]
        metric = (last[batch, jb] - last[:, refusal_token]).sum()
        metric.backward()
        for i in range(L):
            grad_sum[i] += f_alpha[i].grad
    attr = [(f_patch[i] - f_clean[i]) * grad_sum[i] / len(alphas) for i in range(L)]
    return torch.stack(attr).numpy(), jb.numpy()
