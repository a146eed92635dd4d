"""LA-IG throughput: refusal_jax (JAX) vs the original PyTorch approach, CPU; clamp generation cost.

Model: a Gemma-2-shaped transformer built by transformers with its default random init (d_model
768, 12 layers, 8 query / 4 KV heads of 64, MLP 3072, vocab 32000, tied embeddings: 123.7M
parameters), saved with ``save_pretrained``; our side loads the folder with ``ports.hf.load_hf``.
SAEs: random JumpReLU SAEs of width 16384 at every layer (unit decoder rows, W_enc = W_dec^T,
per-layer thresholds set so about 1% of features fire), generated from one seed identically on
both sides.

* JAX: ``la_ig`` (all N alpha steps one vmapped batch, residual gradients, no SAE in autodiff) +
  position-mean ``feature_attributions``, jitted.
* PyTorch: the original approach, SAEs in the loop through forward hooks on every decoder layer,
  a Python loop over alpha with one backward each (``tests/torch_laig_ref.py``, HF Gemma-2, eager
  attention). TransformerLens is not used: the 4.x releases that install next to transformers 5
  no longer have ``HookedTransformer`` (only ``TransformerBridge``, itself hooks on the HF model),
  and TransformerLens 2.x would downgrade transformers to 4.57 and numpy to 1.26.

Each side runs in its own subprocess, one after the other, so peak RSS (``ru_maxrss``) is its own
and the sides never compete for the CPU. The torch side reports per-token attributions, reduced to
the same position mean, and the parent compares them. The JAX side also times one jitted forward
on the same batch (LA-IG cost in forward passes) and greedy generation with and without a clamp
of 20 features at every layer (``clamp_features``, multiply by -3), EOS disabled::

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


def sae_arrays(thresholds, d_sae: int, seed: int = 2):
    """Stacked JumpReLU arrays (W_enc [L,D,S], b_enc, W_dec [L,S,D], b_dec, threshold)."""
    L, D = len(thresholds), MODEL["hidden_size"]
    rng = np.random.default_rng(seed)
    w_dec = rng.standard_normal((L, d_sae, D), dtype=np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=-1, keepdims=True)
    w_enc = np.ascontiguousarray(w_dec.transpose(0, 2, 1))
    thr = np.broadcast_to(np.asarray(thresholds, np.float32)[:, None], (L, d_sae)).copy()
    zeros_s, zeros_d = np.zeros((L, d_sae), np.float32), np.zeros((L, D), np.float32)
    return w_enc, zeros_s, w_dec, zeros_d, thr


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
    from refusal_jax.core.model import forward, generate
    from refusal_jax.method.features import feature_set
    from refusal_jax.method.interventions import clamp_features
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

    def laig():
        res = la_ig(params, cfg, ids, mask, r, refusal_token=REFUSAL_TOKEN, n_steps=args.n_steps)
        return jax.block_until_ready(feature_attributions(res, saes, weights))

    t0 = time.perf_counter()
    attr = laig()
    compile_s = time.perf_counter() - t0
    laig_s, laig_times = timed(laig, args.runs)
    np.save(folder / "attr_jax.npy", np.asarray(attr))
    out = forward(params, cfg, ids, mask, return_residuals=True)
    f = jax.vmap(sae_lib.encode)(saes, out.resid_post)
    active = float(jnp.mean((f > 0)[:, mask.astype(bool)]))
    del f, out

    fwd = lambda: jax.block_until_ready(forward(params, cfg, ids, mask).logits)  # noqa: E731
    fwd()
    fwd_s, _ = timed(fwd, 5)

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
        "laig_s": laig_s,
        "laig_times": laig_times,
        "compile_s": compile_s,
        "forward_s": fwd_s,
        "active_fraction": active,
        "gen_plain_s": statistics.median(gen_times["plain"]),
        "gen_clamp_s": statistics.median(gen_times["clamp"]),
        "gen_compact_s": statistics.median(gen_times["compact"]),
        "peak_mb": peak_rss_mb(),
        "backend": f"jax {jax.__version__} {jax.devices()[0].platform}",
    }


# ----------------------------------------------------------------------------- torch side
def run_torch(folder: Path, meta: dict, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(REPO))
    from tests.torch_laig_ref import la_ig_torch, saes_from_arrays

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
    times, attr = [], None
    for _ in range(args.torch_runs):
        t0 = time.perf_counter()
        attr, _ = run()
        times.append(time.perf_counter() - t0)
    np.save(folder / "attr_torch.npy", position_mean(attr, mask))
    return {
        "laig_s": statistics.median(times),
        "laig_times": times,
        "peak_mb": peak_rss_mb(),
        "backend": f"torch {torch.__version__}, {torch.get_num_threads()} threads",
    }


# ----------------------------------------------------------------------------- driver
def _subprocess(side: str, folder: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--folder", str(folder)]
    for k in ("batch", "seq", "n_steps", "d_sae", "new_tokens", "runs", "torch_runs", "threads"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(meta, jx, pt, err, args) -> str:
    B = args.batch
    jax_pps, torch_pps = B / jx["laig_s"], B / pt["laig_s"]
    lines = [
        f"model: Gemma-2-shaped, {meta['n_params'] / 1e6:.1f}M parameters (d_model 768, 12 "
        "layers, 8/4 heads x 64, MLP 3072, vocab 32000); JumpReLU SAEs of width "
        f"{args.d_sae} at all 12 layers (active fraction {jx['active_fraction']:.3f})",
        f"batch {B} left-padded prompts, {args.seq}-token window (lengths {args.seq // 2}.."
        f"{args.seq}), N = {args.n_steps} alpha steps, float32",
        f"JAX   ({jx['backend']}): LA-IG + position-mean attributions {jx['laig_s']:.2f} s "
        f"(runs {', '.join(f'{t:.2f}' for t in jx['laig_times'])}) -> {jax_pps:.2f} prompts/s; "
        f"compile+first run {jx['compile_s']:.1f} s; peak RSS {jx['peak_mb']:.0f} MB",
        f"torch ({pt['backend']}, HF + hooks, SAEs in the loop): {pt['laig_s']:.2f} s "
        f"(runs {', '.join(f'{t:.2f}' for t in pt['laig_times'])}) -> {torch_pps:.2f} "
        f"prompts/s; peak RSS {pt['peak_mb']:.0f} MB",
        f"speed-up JAX / torch: {jax_pps / torch_pps:.2f}x",
        f"attribution agreement (position mean, [L,B,S]): max |A_jax - A_torch| / max |A_torch| "
        f"= {err:.2e}",
        f"one jitted JAX forward on the same batch: {jx['forward_s'] * 1e3:.1f} ms; LA-IG = "
        f"{jx['laig_s'] / jx['forward_s']:.1f} forward passes (N = {args.n_steps})",
        f"generation, {args.new_tokens} new tokens, batch {B}: plain {jx['gen_plain_s']:.3f} s, "
        f"20-feature clamp at every layer {jx['gen_clamp_s']:.3f} s -> "
        f"{jx['gen_clamp_s'] / jx['gen_plain_s']:.2f}x; same clamp on a compact 20-feature SAE "
        f"per layer (identical tokens) {jx['gen_compact_s']:.3f} s -> "
        f"{jx['gen_compact_s'] / jx['gen_plain_s']:.2f}x",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", choices=("jax", "torch"))
    p.add_argument("--folder")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--n-steps", type=int, default=10)
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--torch-runs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", help="append the report to this Markdown file")
    args = p.parse_args(argv)

    if args.side:
        folder = Path(args.folder)
        meta = json.loads((folder / "meta.json").read_text())
        fn = run_jax if args.side == "jax" else run_torch
        print(json.dumps(fn(folder, meta, args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        meta = prepare(folder, args)
        (folder / "meta.json").write_text(json.dumps(meta))
        jx = _subprocess("jax", folder, args)
        pt = _subprocess("torch", folder, args)
        a_j, a_t = np.load(folder / "attr_jax.npy"), np.load(folder / "attr_torch.npy")
        err = float(np.abs(a_j - a_t).max() / max(np.abs(a_t).max(), 1e-30))
    text = report(meta, jx, pt, err, args)
    print(text)
    if args.results:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        block = f"\n{HEADING}\n\nRun {stamp}:\n\n```\n{machine_info()}\n{text}\n```\n"
        with open(args.results, "a") as fh:
            fh.write(block)


if __name__ == "__main__":
    main()
