"""LA-IG throughput: refusal_jax (JAX) vs the original PyTorch approach, CPU; clamp generation cost.

Model: a Gemma-2-shaped transformer built by transformers with its default random init (d_model
768, 12 layers, 8 query / 4 KV heads of 64, MLP 3072, vocab 32000, tied embeddings: 123.7M
parameters), saved with ``save_pretrained``; our side loads the folder with ``ports.hf.load_hf``.
SAEs: random JumpReLU SAEs of width 16384 at every layer (unit decoder rows, W_enc = W_dec^T,
per-layer thresholds set so about 1% of features fire), generated from one seed identically on
both sides.

* JAX: ``la_ig`` (the N alpha steps scanned one at a time, or ``B`` at a time as one vmapped
  batch with ``RULE:N:B`` = ``alpha_batch=B``; residual gradients, no SAE in autodiff) +
  position-mean ``feature_attributions``, jitted.
* PyTorch: the original approach, SAEs in the loop through forward hooks on every decoder layer,
  a Python loop over alpha with one backward each (``tests/support/torch_laig_ref.py``, HF
  Gemma-2, eager attention).
* TransformerLens + SAELens (the peer users pick): the same approach on a HookedSAETransformer
  built offline from the same weights, SAELens JumpReLU SAEs at every resid_post (``run_tl``); it
  runs in its own venv (``--tl-python``, default /work/venvs/tl; RESULTS.md says how to create
  it) and prints "skipped: transformer_lens not installed" when there is none.

JAX runs every ``--configs`` RULE:N[:B] (``alpha_schedule``, ``alpha_batch``) and a
Gauss-Legendre N = 256 reference; each row reports forward-equivalents, seconds, speed-up vs
each peer (which run the paper's left N = ``--n-steps``, one alpha step at a time, as the
reference code does), relative L2 error of the attributions vs the reference and the overlap
of the top-20 F*, then two headlines: the fastest rule with an F* overlap at least that of left
N, and the fastest that also has a relative L2 error at most left N's. The rules with an end
node (left, lobatto, radau, ...) compute it the cheap way (``quadrature_ends``; alpha = 0 reuses
the clean run, alpha = 1 needs no model run).

Each side runs in its own subprocess, one after the other, so peak RSS (``ru_maxrss``) is its own
and the sides never compete for the CPU. The torch side reports per-token attributions, reduced to
the same position mean, and the parent compares them. The JAX side also times one jitted forward
on the same batch (LA-IG cost in forward passes) and greedy generation with and without a clamp
of 20 features at every layer (``clamp_features``, multiply by -3), EOS disabled, with
``--generation``::

    cd experiments/benchmarks && python bench_laig.py --results RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import machine_info, peak_rss_mb, timed  # noqa: E402

HEADING = "## LA-IG (issue 4)"

MODEL = dict(
    vocab_size=32000,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
    intermediate_size=3072,
    query_pre_attn_scalar=64,
    max_position_embeddings=4096,
    sliding_window=4096,
    bos_token_id=2,
    eos_token_id=1,
    pad_token_id=0,
)
REFUSAL_TOKEN = 1000
ACTIVE_Z = 2.33  # threshold = z * typical |pre|: ~1% of features fire
REF = ("gauss", 256)  # the reference integral: Gauss-Legendre with 256 nodes
TOP_K = 20  # F*: the top 20 (layer, feature) pairs of the batch-mean attributions
CONFIGS = (
    "left:10,midpoint:4,gauss:2,gauss:2:2,gauss:3,radau:2,lobatto:3,lobatto:3:2,radau:3,radau:3:2"
)
TL_PYTHON = "/work/venvs/tl/bin/python"  # the peer venv (RESULTS.md: how to create it)


def batch_inputs(batch: int, seq: int, seed: int = 0):
    """Left-padded prompts of lengths seq/2..seq."""
    rng = np.random.default_rng(seed)
    lengths = np.linspace(seq // 2, seq, batch).astype(int)
    ids = rng.integers(3, MODEL["vocab_size"], size=(batch, seq))
    mask = (np.arange(seq)[None, :] >= seq - lengths[:, None]).astype(np.int64)
    ids[:, 0] = MODEL["bos_token_id"]
    ids = np.where(mask == 1, ids, MODEL["pad_token_id"])
    ids[np.arange(batch), seq - lengths] = MODEL["bos_token_id"]
    return ids, mask


def direction(seed: int = 1) -> np.ndarray:
    r = np.random.default_rng(seed).standard_normal(MODEL["hidden_size"]).astype(np.float32)
    return r / np.linalg.norm(r)


def sae_arrays(thresholds, d_sae: int, seed: int = 2, d_in: int = MODEL["hidden_size"]):
    """Stacked JumpReLU arrays (W_enc [L,D,S], b_enc, W_dec [L,S,D], b_dec, threshold)."""
    L, D = len(thresholds), d_in
    rng = np.random.default_rng(seed)
    w_dec = rng.standard_normal((L, d_sae, D), dtype=np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=-1, keepdims=True)
    w_enc = np.ascontiguousarray(w_dec.transpose(0, 2, 1))
    thr = np.broadcast_to(np.asarray(thresholds, np.float32)[:, None], (L, d_sae)).copy()
    zeros_s, zeros_d = np.zeros((L, d_sae), np.float32), np.zeros((L, D), np.float32)
    return w_enc, zeros_s, w_dec, zeros_d, thr


def top_pairs(attr, k: int = TOP_K) -> set:
    """F*: the top ``k`` (layer, feature) pairs of the batch-mean attributions [L, B, S]."""
    mean = np.asarray(attr).mean(axis=1)
    flat = np.argsort(-mean, axis=None, kind="stable")[:k]
    return set(zip(*np.unravel_index(flat, mean.shape), strict=True))


def accuracy(attr, ref) -> dict:
    """Relative L2 error of attributions [L, B, S] vs the reference and F* overlap (0..1)."""
    attr, ref = np.asarray(attr, np.float64), np.asarray(ref, np.float64)
    rel = float(np.linalg.norm(attr - ref) / max(np.linalg.norm(ref), 1e-30))
    return {"rel_l2": rel, "overlap": len(top_pairs(attr) & top_pairs(ref)) / TOP_K}


def position_mean(per_token, mask, skip=1):
    """[L,B,T,S] -> [L,B,S]: mean over real tokens at position >= skip."""
    pos = np.cumsum(mask, -1) - 1
    w = ((pos >= skip) & (mask == 1)).astype(np.float32)
    return np.einsum("lbts,bt->lbs", per_token, w) / np.maximum(w.sum(-1), 1.0)[None, :, None]


# ----------------------------------------------------------------------------- prepare
def prepare(folder: Path, args) -> dict:
    """Save the random HF model; per-layer thresholds from its residual-stream norms."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma2Config

    torch.manual_seed(0)
    cfg = Gemma2Config(attn_implementation="eager", tie_word_embeddings=True, **MODEL)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    ids, mask = batch_inputs(args.batch, args.seq)
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    valid = mask.astype(bool)
    # hidden_states[l + 1] is layer l's output (the last one after the final norm: use the layer
    # output norm of the previous layer for it, close enough for a threshold).
    norms = [np.linalg.norm(h.numpy(), axis=-1)[valid].mean() for h in out.hidden_states[1:]]
    norms[-1] = norms[-2]
    thr = [ACTIVE_Z * n / np.sqrt(MODEL["hidden_size"]) for n in norms]
    return {"n_params": n_params, "thresholds": [float(t) for t in thr]}


# ----------------------------------------------------------------------------- JAX side
def run_jax(folder: Path, meta: dict, args) -> dict:
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(REPO))
    from ports.hf import load_hf
    from refusal_jax import sae as sae_lib
    from refusal_jax.core.model import forward
    from refusal_jax.method.laig import feature_attributions, la_ig, position_weights

    cfg, params = load_hf(folder)
    w_enc, b_enc, w_dec, b_dec, thr = sae_arrays(meta["thresholds"], args.d_sae)
    scfg = sae_lib.SAEConfig(architecture="jumprelu", d_in=cfg.d_model, d_sae=args.d_sae)
    saes = sae_lib.SAE(*(jnp.asarray(a) for a in (w_enc, b_enc, w_dec, b_dec, thr)), cfg=scfg)
    del w_enc, w_dec
    ids, mask = batch_inputs(args.batch, args.seq)
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    r = jnp.asarray(direction())
    weights = position_weights(mask, skip=1)

    def laig(rule, n, alpha_batch=None):
        def go():
            res = la_ig(
                params,
                cfg,
                ids,
                mask,
                r,
                refusal_token=REFUSAL_TOKEN,
                n_steps=n,
                alpha_rule=rule,
                alpha_batch=alpha_batch,
            )
            return jax.block_until_ready(feature_attributions(res, saes, weights))

        return go

    # the high-N reference of the integral: Gauss-Legendre, REF_N nodes, 16 at a time
    t0 = time.perf_counter()
    ref = np.asarray(laig(*REF, alpha_batch=16)())
    ref_s = time.perf_counter() - t0
    rows = []
    for rule, n, batch in args.configs:
        go = laig(rule, n, batch)
        t0 = time.perf_counter()
        attr = np.asarray(go())
        compile_s = time.perf_counter() - t0
        laig_s, laig_times = timed(go, args.runs)
        if (rule, n, batch) == ("left", args.n_steps, None):
            np.save(folder / "attr_jax.npy", attr)
        rows.append(
            {
                "rule": rule,
                "n": n,
                "alpha_batch": batch,
                "laig_s": laig_s,
                "laig_times": laig_times,
                "compile_s": compile_s,
                **accuracy(attr, ref),
            }
        )
    out = forward(params, cfg, ids, mask, return_residuals=True)
    f = jax.vmap(sae_lib.encode)(saes, out.resid_post)
    active = float(jnp.mean((f > 0)[:, mask.astype(bool)]))
    del f, out

    fwd = lambda: jax.block_until_ready(forward(params, cfg, ids, mask).logits)  # noqa: E731
    fwd()
    fwd_s, _ = timed(fwd, 5)

    result = {
        "rows": rows,
        "ref_s": ref_s,
        "forward_s": fwd_s,
        "active_fraction": active,
    }
    if args.generation:
        result |= generation(params, cfg, saes, ids, mask, args)
    return result | {
        "peak_mb": peak_rss_mb(),
        "backend": f"jax {jax.__version__} {jax.devices()[0].platform}",
    }


def generation(params, cfg, saes, ids, mask, args) -> dict:
    """Greedy generation, plain vs a 20-feature clamp at every layer (full and compact SAE)."""
    import jax
    import jax.numpy as jnp

    from refusal_jax import sae as sae_lib
    from refusal_jax.core.model import generate
    from refusal_jax.method.features import feature_set
    from refusal_jax.method.interventions import clamp_features

    rng = np.random.default_rng(3)
    pairs = [
        (layer, int(i))
        for layer in range(cfg.n_layers)
        for i in rng.choice(args.d_sae, 20, replace=False)
    ]
    clamp = clamp_features(saes, feature_set(pairs, cfg.n_layers, args.d_sae), -3.0)

    def gen(patch):
        def go():
            out = generate(
                params,
                cfg,
                ids,
                mask,
                max_new_tokens=args.new_tokens,
                patch=patch,
                eos_token_ids=(),
            )
            return jax.block_until_ready(out.tokens)

        return go

    # The same clamp on a compact SAE holding only the 20 features of each layer (encoder columns
    # and decoder rows gathered once, outside the decode loop): isolates what slicing the full
    # 16384-wide SAE inside the layer scan at every step costs.
    idx = jnp.asarray(np.asarray(clamp.features.idx))  # [L, 20]
    take = jax.vmap(lambda w, i: w[:, i])
    compact = sae_lib.SAE(
        W_enc=take(saes.W_enc, idx),
        b_enc=jnp.take_along_axis(saes.b_enc, idx, 1),
        W_dec=jax.vmap(lambda w, i: w[i])(saes.W_dec, idx),
        b_dec=saes.b_dec,
        threshold=jnp.take_along_axis(saes.threshold, idx, 1),
        cfg=sae_lib.SAEConfig(architecture="jumprelu", d_in=cfg.d_model, d_sae=idx.shape[1]),
    )
    local = feature_set(
        [(layer, k) for layer in range(cfg.n_layers) for k in range(idx.shape[1])], cfg.n_layers
    )
    clamp_compact = clamp_features(compact, local, -3.0)
    plain, clamped, compacted = gen(None), gen(clamp), gen(clamp_compact)
    np.testing.assert_array_equal(np.asarray(clamped()), np.asarray(compacted()))
    plain()
    gen_times = {"plain": [], "clamp": [], "compact": []}
    for _ in range(args.runs + 1):  # alternate so background load hits all alike
        for name, fn in (("plain", plain), ("clamp", clamped), ("compact", compacted)):
            t0 = time.perf_counter()
            fn()
            gen_times[name].append(time.perf_counter() - t0)
    return {
        "gen_plain_s": statistics.median(gen_times["plain"]),
        "gen_clamp_s": statistics.median(gen_times["clamp"]),
        "gen_compact_s": statistics.median(gen_times["compact"]),
    }


# ----------------------------------------------------------------------------- torch side
def timed_runs(fn, runs: int):
    """Call ``fn`` ``runs`` times: (wall seconds of each call, the last call's result)."""
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def run_torch(folder: Path, meta: dict, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(REPO))
    from tests.support.torch_laig_ref import la_ig_torch, saes_from_arrays

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    saes = saes_from_arrays(*sae_arrays(meta["thresholds"], args.d_sae))
    ids, mask = batch_inputs(args.batch, args.seq)
    r = direction()
    run = lambda alphas=None: la_ig_torch(  # noqa: E731
        model,
        saes,
        ids,
        mask,
        r,
        refusal_token=REFUSAL_TOKEN,
        n_steps=args.n_steps,
        alphas=alphas,
    )
    run([0.0])  # warm-up: one alpha step
    times, (attr, _) = timed_runs(run, args.torch_runs)
    np.save(folder / "attr_torch.npy", position_mean(attr, mask))
    return {
        "laig_s": statistics.median(times),
        "laig_times": times,
        "peak_mb": peak_rss_mb(),
        "backend": f"torch {torch.__version__}, {torch.get_num_threads()} threads",
    }


# ----------------------------------------------------------------------------- TransformerLens side
TL_SKIP = "skipped: transformer_lens not installed"


def tl_config(n_layers: int):
    """HookedTransformerConfig of the Gemma-2-shaped model (TransformerLens's gemma-2 settings
    with this model's sizes; no hub access)."""
    import torch
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        d_model=MODEL["hidden_size"],
        d_head=MODEL["head_dim"],
        n_heads=MODEL["num_attention_heads"],
        n_key_value_heads=MODEL["num_key_value_heads"],
        d_mlp=MODEL["intermediate_size"],
        n_layers=n_layers,
        n_ctx=512,
        eps=1e-6,
        d_vocab=MODEL["vocab_size"],
        act_fn="gelu_pytorch_tanh",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_base=10000.0,
        rotary_dim=MODEL["head_dim"],
        use_attn_scale=True,
        window_size=MODEL["sliding_window"],
        use_local_attn=True,
        attn_types=["local", "global"] * (n_layers // 2),
        attn_scores_soft_cap=50.0,
        output_logits_soft_cap=30.0,
        gated_mlp=True,
        final_rms=True,
        use_normalization_before_and_after=True,
        original_architecture="Gemma2ForCausalLM",
        default_prepend_bos=False,
        dtype=torch.float32,
        device="cpu",
    )


def run_tl(folder: Path, meta: dict, args) -> dict:
    """The original approach the way the reference code builds it: a TransformerLens
    HookedSAETransformer (weights converted from the saved HF folder, no hub), SAELens JumpReLU
    SAEs spliced at every layer's resid_post (hook functions, so the error term keeps its
    gradient: ``add_sae(use_error_term=True)`` computes it under ``no_grad``), a Python loop over
    alpha with one backward per step."""
    try:
        import transformer_lens  # noqa: F401
    except ImportError:
        return {"skipped": TL_SKIP}
    import torch
    from sae_lens import HookedSAETransformer, JumpReLUSAE, JumpReLUSAEConfig
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    hf = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    L = hf.config.num_hidden_layers
    cfg = tl_config(L)
    model = HookedSAETransformer(cfg)
    model.load_and_process_state_dict(
        convert_gemma_weights(hf, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    model.eval().requires_grad_(False)
    ids_np, mask_np = batch_inputs(args.batch, args.seq)
    ids, mask = torch.tensor(ids_np), torch.tensor(mask_np)
    with torch.no_grad():  # same weights: TL vs HF on the left-padded batch
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        got = model(ids, attention_mask=mask)[:, -1]
        parity = float((ref - got).abs().max() / ref.abs().max())
    del hf
    arrays = sae_arrays(meta["thresholds"], args.d_sae)
    saes = []
    for i in range(L):
        sae = JumpReLUSAE(
            JumpReLUSAEConfig(d_in=cfg.d_model, d_sae=args.d_sae, apply_b_dec_to_input=False)
        )
        names = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
        sae.load_state_dict({n: torch.tensor(a[i]) for n, a in zip(names, arrays, strict=True)})
        saes.append(sae.eval().requires_grad_(False))
    del arrays
    r = torch.tensor(direction())
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(L)]
    batch = torch.arange(ids.shape[0])

    def laig(alphas):
        clean, pre, abl = {}, {}, {}

        def record(h, hook):
            clean[hook.layer()] = h.detach().clone()

        def ablate(h, hook):
            pre[hook.layer()] = h.detach().clone()
            out = h - (h @ r)[..., None] * r
            abl[hook.layer()] = out.detach().clone()
            return out

        with torch.no_grad():
            model.run_with_hooks(ids, attention_mask=mask, fwd_hooks=[(h, record) for h in hooks])
            logits = model.run_with_hooks(
                ids, attention_mask=mask, fwd_hooks=[(h, ablate) for h in hooks]
            )
            jb = logits[:, -1].argmax(-1)
            f_clean = [saes[i].encode(clean[i]) for i in range(L)]
            f_patch = [saes[i].encode(abl[i]) for i in range(L)]
            e_patch = [pre[i] - saes[i].decode(f_patch[i]) for i in range(L)]
        grad_sum = [torch.zeros_like(f) for f in f_patch]
        for alpha in alphas:
            f_alpha = {}

            def sae_in_loop(h, hook, alpha=alpha, f_alpha=f_alpha):
                i = hook.layer()
                f = saes[i].encode(h)
                f_a = (1 - alpha) * f + alpha * f_patch[i]
                if f_a.requires_grad:
                    f_a.retain_grad()
                else:
                    f_a.requires_grad_(True)
                f_alpha[i] = f_a
                e_a = (1 - alpha) * (h - saes[i].decode(f)) + alpha * e_patch[i]
                return saes[i].decode(f_a) + e_a

            logits = model.run_with_hooks(
                ids, attention_mask=mask, fwd_hooks=[(h, sae_in_loop) for h in hooks]
            )
            last = logits[:, -1]
            (last[batch, jb] - last[:, REFUSAL_TOKEN]).sum().backward()
            for i in range(L):
                grad_sum[i] += f_alpha[i].grad
        attr = [(f_patch[i] - f_clean[i]) * grad_sum[i] / len(alphas) for i in range(L)]
        return torch.stack(attr).numpy()

    laig([0.0])  # warm-up: one alpha step
    times, attr = timed_runs(
        lambda: laig([k / args.n_steps for k in range(args.n_steps)]), args.torch_runs
    )
    np.save(folder / "attr_tl.npy", position_mean(attr, mask_np))
    return {
        "laig_s": statistics.median(times),
        "laig_times": times,
        "peak_mb": peak_rss_mb(),
        "logit_parity": parity,
        "backend": f"transformer-lens {version('transformer-lens')}, sae-lens "
        f"{version('sae-lens')}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
    }


# ----------------------------------------------------------------------------- driver
def _subprocess(side: str, folder: Path, args, python: str = sys.executable) -> dict:
    cmd = [python, __file__, "--side", side, "--folder", str(folder)]
    for k in ("batch", "seq", "n_steps", "d_sae", "new_tokens", "runs", "torch_runs", "threads"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    cmd += ["--configs", ",".join(_config_text(*c) for c in args.configs)]
    cmd += ["--generation"] if args.generation else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _config_text(rule: str, n: int, alpha_batch: int | None) -> str:
    """The inverse of :func:`_configs` for one entry: RULE:N or RULE:N:B."""
    return f"{rule}:{n}" if alpha_batch is None else f"{rule}:{n}:{alpha_batch}"


def _configs(text: str) -> list[tuple[str, int, int | None]]:
    """RULE:N[:B],... -> [(rule, n, alpha_batch or None)]."""
    out = []
    for item in text.split(","):
        rule, *nums = item.split(":")
        if len(nums) not in (1, 2) or not all(x.isdigit() and int(x) > 0 for x in nums):
            raise argparse.ArgumentTypeError(f"--configs: {item!r} is not RULE:N or RULE:N:B")
        out.append((rule, int(nums[0]), int(nums[1]) if len(nums) == 2 else None))
    return out


def _agreement(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _label(row: dict) -> str:
    """The rule column: the rule, and ``alpha_batch`` when the steps ran B at a time."""
    b = row.get("alpha_batch")
    return row["rule"] if b is None else f"{row['rule']} ({b} steps at once)"


def report(meta, jx, peers, args) -> str:
    """The headline table (one row per method / rule / N) and the context lines."""
    fwd = jx["forward_s"]
    by = {(r["rule"], r["n"]): r for r in jx["rows"] if r.get("alpha_batch") is None}
    paper = by.get(("left", args.n_steps))
    lines = [
        f"model: Gemma-2-shaped, {meta['n_params'] / 1e6:.1f}M parameters (d_model 768, 12 "
        "layers, 8/4 heads x 64, MLP 3072, vocab 32000); JumpReLU SAEs of width "
        f"{args.d_sae} at all 12 layers (active fraction {jx['active_fraction']:.3f})",
        f"batch {args.batch} left-padded prompts, {args.seq}-token window (lengths "
        f"{args.seq // 2}..{args.seq}), float32; reference: JAX {REF[0]} N = {REF[1]} "
        f"({jx['ref_s']:.1f} s incl. compile); F* = top {TOP_K} of the batch-mean attributions",
        f"one jitted JAX forward on the same batch: {fwd * 1e3:.1f} ms (forward-equivalents = "
        "seconds / this)",
        f"JAX: {jx['backend']}, peak RSS {jx['peak_mb']:.0f} MB",
    ]
    for name, pk in peers.items():
        if "skipped" in pk:
            lines.append(f"{name}: {pk['skipped']}")
            continue
        lines.append(
            f"{name}: {pk['backend']}; runs {', '.join(f'{t:.2f}' for t in pk['laig_times'])} s; "
            f"peak RSS {pk['peak_mb']:.0f} MB; attributions vs JAX left N = {args.n_steps}: "
            f"max |diff| / max |A| = {pk['agreement']:.2e}"
            + (f"; TL vs HF logits {pk['logit_parity']:.1e}" if "logit_parity" in pk else "")
        )
    live = {k: v for k, v in peers.items() if "skipped" not in v}
    head = ["method", "rule", "N", "fwd-eq", "seconds"]
    head += [f"vs {k}" for k in live] + ["rel. L2 err", "F* overlap"]
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, pk in live.items():
        cells = [
            name,
            "left",
            str(args.n_steps),
            f"{pk['laig_s'] / fwd:.1f}",
            f"{pk['laig_s']:.2f}",
        ]
        cells += [f"{live[k]['laig_s'] / pk['laig_s']:.2f}x" for k in live]
        acc = paper or {"rel_l2": float("nan"), "overlap": float("nan")}
        cells += [f"{acc['rel_l2']:.1e} (as JAX)", f"{acc['overlap']:.2f} (as JAX)"]
        table.append("| " + " | ".join(cells) + " |")
    for row in jx["rows"]:
        cells = ["JAX", _label(row), str(row["n"]), f"{row['laig_s'] / fwd:.1f}"]
        cells += [f"{row['laig_s']:.2f}"]
        cells += [f"{live[k]['laig_s'] / row['laig_s']:.1f}x" for k in live]
        cells += [f"{row['rel_l2']:.1e}", f"{row['overlap']:.2f}"]
        table.append("| " + " | ".join(cells) + " |")
    if paper is not None:
        table.append("")
        criteria = (
            ("F* overlap >=", lambda r: r["overlap"] >= paper["overlap"]),
            (
                "F* overlap >= and rel. L2 <=",
                lambda r: r["overlap"] >= paper["overlap"] and r["rel_l2"] <= paper["rel_l2"],
            ),
        )
        for text, keep in criteria:
            best = min(filter(keep, jx["rows"]), key=lambda r: r["laig_s"])
            ratios = ", ".join(f"{live[k]['laig_s'] / best['laig_s']:.1f}x vs {k}" for k in live)
            table.append(
                f"headline: fastest JAX rule with {text} the paper's left N = {args.n_steps} "
                f"({paper['overlap']:.2f}, {paper['rel_l2']:.1e}): {_label(best)} N = "
                f"{best['n']}, {best['laig_s']:.2f} s, overlap {best['overlap']:.2f}, rel. L2 "
                f"{best['rel_l2']:.1e}" + (f" -> {ratios}" if ratios else "")
            )
    if args.generation:
        B = args.batch
        lines.append(
            f"generation, {args.new_tokens} new tokens, batch {B}: plain "
            f"{jx['gen_plain_s']:.3f} s, 20-feature clamp at every layer {jx['gen_clamp_s']:.3f} "
            f"s -> {jx['gen_clamp_s'] / jx['gen_plain_s']:.2f}x; same clamp on a compact "
            f"20-feature SAE per layer (identical tokens) {jx['gen_compact_s']:.3f} s -> "
            f"{jx['gen_compact_s'] / jx['gen_plain_s']:.2f}x"
        )
    return "\n".join(lines + [""] + table)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", choices=("jax", "torch", "tl"))
    p.add_argument("--folder")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--n-steps", type=int, default=10, help="the peers' (paper's) left N")
    p.add_argument("--configs", type=_configs, default=_configs(CONFIGS), help="JAX RULE:N,...")
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--generation", action="store_true", help="also time clamped generation")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--torch-runs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tl-python", default=TL_PYTHON, help="python of the TransformerLens venv")
    p.add_argument("--results", help="append the report to this Markdown file")
    args = p.parse_args(argv)

    if args.side:
        folder = Path(args.folder)
        meta = json.loads((folder / "meta.json").read_text())
        fn = {"jax": run_jax, "torch": run_torch, "tl": run_tl}[args.side]
        print(json.dumps(fn(folder, meta, args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        meta = prepare(folder, args)
        (folder / "meta.json").write_text(json.dumps(meta))
        jx = _subprocess("jax", folder, args)
        a_j = np.load(folder / "attr_jax.npy")
        peers = {}
        pt = _subprocess("torch", folder, args)
        peers["torch (HF + hooks)"] = pt | {
            "agreement": _agreement(np.load(folder / "attr_torch.npy"), a_j)
        }
        if Path(args.tl_python).exists():
            tl = _subprocess("tl", folder, args, python=args.tl_python)
        else:
            tl = {"skipped": TL_SKIP}
        if "skipped" not in tl:
            tl["agreement"] = _agreement(np.load(folder / "attr_tl.npy"), a_j)
        peers["TransformerLens + SAELens"] = tl
    text = report(meta, jx, peers, args)
    print(text)
    if args.results:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        block = f"\n{HEADING}\n\nRun {stamp}:\n\n```\n{machine_info()}\n{text}\n```\n"
        with open(args.results, "a") as fh:
            fh.write(block)


if __name__ == "__main__":
    main()
