"""Forward and greedy-generation throughput: refusal_jax (JAX) vs Hugging Face (PyTorch), CPU.

A ~100M-parameter Gemma-2-shaped model (d_model 768, 12 layers, 8 query / 4 KV heads of 96,
MLP 2048, vocab 32000, tied embeddings: 102.5M parameters) is built by transformers with random
weights and saved with ``save_pretrained``; our side loads the same folder with
``ports.hf.load_hf``. Each side runs in its own subprocess, one after the other, so its peak RSS
(``ru_maxrss``) is its own and the two never compete for the CPU.

* forward: batch 8 x 128 tokens, full logits. JAX: jitted ``forward``; torch: ``model(...)`` under
  ``torch.inference_mode`` with ``use_cache=False``.
* generation: 8 left-padded prompts (lengths 40..128 in a 128-token window), 64 new greedy tokens,
  EOS disabled on both sides so both produce all 64. JAX: ``refusal_jax.core.model.generate``;
  torch: ``model.generate(do_sample=False, use_cache=True)``.

Timings are medians (and minima) over ``--rounds`` x ``--runs`` calls after one warm-up call per
process, the sides alternating so that load from other users of the CPU hits both alike; the
JAX warm-up (trace + compile + first run) is reported separately as compile time. torch uses 2
intra-op threads::

    cd experiments/benchmarks && python bench_model.py --results RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import peak_rss_mb, timed  # noqa: E402

HEADING = "## Model forward and generation (issue 2)"

MODEL = dict(
    vocab_size=32000,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=96,
    intermediate_size=2048,
    query_pre_attn_scalar=96,
    max_position_embeddings=4096,
    sliding_window=4096,
    bos_token_id=2,
    eos_token_id=1,
    pad_token_id=0,
)
BATCH, SEQ, NEW_TOKENS = 8, 128, 64


def inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """Token ids for the forward pass and left-padded prompts for generation (both sides)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, MODEL["vocab_size"], size=(BATCH, SEQ), dtype=np.int64)
    lengths = np.linspace(40, SEQ, BATCH).astype(int)
    prompt = rng.integers(3, MODEL["vocab_size"], size=(BATCH, SEQ), dtype=np.int64)
    mask = (np.arange(SEQ)[None, :] >= SEQ - lengths[:, None]).astype(np.int64)
    prompt = np.where(mask == 1, prompt, MODEL["pad_token_id"])
    return {"ids": ids, "ones": np.ones_like(ids), "prompt": prompt, "prompt_mask": mask}


# ----------------------------------------------------------------------------- sides
def run_jax(model_dir: Path, out_dir: Path, runs: int) -> dict:
    import jax
    import jax.numpy as jnp

    from ports.hf import load_hf
    from refusal_jax.core.model import forward, generate

    x = inputs()
    cfg, params = load_hf(model_dir)
    res = {"side": "jax", "jax": jax.__version__, "device": str(jax.devices()[0])}
    res["params_m"] = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params)) / 1e6
    res["rss_after_load_mb"] = peak_rss_mb()
    ids, ones = jnp.asarray(x["ids"], jnp.int32), jnp.asarray(x["ones"], jnp.int32)

    def fwd():
        return forward(params, cfg, ids, ones).logits.block_until_ready()

    t0 = time.perf_counter()
    logits = fwd()
    res["forward_compile_s"] = time.perf_counter() - t0
    res["forward_s"], res["forward_runs"] = timed(fwd, runs)
    np.save(out_dir / "jax_last_logits.npy", np.asarray(logits[:, -1]))

    prompt = jnp.asarray(x["prompt"], jnp.int32)
    pmask = jnp.asarray(x["prompt_mask"], jnp.int32)

    def gen():
        out = generate(params, cfg, prompt, pmask, max_new_tokens=NEW_TOKENS, eos_token_ids=())
        return out.tokens.block_until_ready()

    t0 = time.perf_counter()
    tokens = gen()
    res["generate_compile_s"] = time.perf_counter() - t0
    res["generate_s"], res["generate_runs"] = timed(gen, runs)
    np.save(out_dir / "jax_tokens.npy", np.asarray(tokens))
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def run_torch(model_dir: Path, out_dir: Path, runs: int, attn: str) -> dict:
    import torch
    import transformers

    torch.set_num_threads(2)
    x = inputs()
    res = {"side": f"torch-{attn}", "torch": torch.__version__, "threads": torch.get_num_threads()}
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation=attn
        ).eval()
    except (ValueError, NotImplementedError) as e:
        res["error"] = f"{type(e).__name__}: {str(e).split('. ')[0]}"
        return res
    res["attn_implementation"] = model.config._attn_implementation
    res["rss_after_load_mb"] = peak_rss_mb()
    ids, ones = torch.as_tensor(x["ids"]), torch.as_tensor(x["ones"])
    prompt, pmask = torch.as_tensor(x["prompt"]), torch.as_tensor(x["prompt_mask"])

    with torch.inference_mode():

        def fwd():
            return model(input_ids=ids, attention_mask=ones, use_cache=False).logits

        t0 = time.perf_counter()
        logits = fwd()
        res["forward_warmup_s"] = time.perf_counter() - t0
        res["forward_s"], res["forward_runs"] = timed(fwd, runs)
        np.save(out_dir / f"torch_{attn}_last_logits.npy", logits[:, -1].float().numpy())

        def gen():
            return model.generate(
                input_ids=prompt,
                attention_mask=pmask,
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                use_cache=True,
                eos_token_id=None,
                pad_token_id=MODEL["pad_token_id"],
            )

        t0 = time.perf_counter()
        tokens = gen()
        res["generate_warmup_s"] = time.perf_counter() - t0
        res["generate_s"], res["generate_runs"] = timed(gen, runs)
    np.save(out_dir / f"torch_{attn}_tokens.npy", tokens[:, SEQ:].numpy())
    res["peak_rss_mb"] = peak_rss_mb()
    return res


# ----------------------------------------------------------------------------- driver
def build_model(model_dir: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Gemma2Config(**MODEL, tie_word_embeddings=True)
    model = transformers.Gemma2ForCausalLM(cfg).float()
    with torch.no_grad():  # non-trivial norms so the comparison exercises them
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.1)
    model.save_pretrained(model_dir)


def _spawn(side: str, model_dir: Path, out_dir: Path, runs: int) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--model-dir", str(model_dir)]
    cmd += ["--out-dir", str(out_dir), "--runs", str(runs)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} side failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _merge(rounds: list[dict]) -> dict:
    """One result per side: all timed runs pooled, first-call times of round 1, max peak RSS."""
    out = dict(rounds[0])
    if "error" in out:
        return out
    for key in ("forward", "generate"):
        out[f"{key}_runs"] = [t for r in rounds for t in r[f"{key}_runs"]]
        out[f"{key}_s"] = statistics.median(out[f"{key}_runs"])
        out[f"{key}_min_s"] = min(out[f"{key}_runs"])
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rounds)
    return out


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next(ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln)
    except (OSError, StopIteration):
        pass
    return f"{cpu}, nproc {os.cpu_count()}, {platform.platform()}"


def report(jx: dict, torch_runs: list[dict], out_dir: Path, load: list[float]) -> str:
    ok = [r for r in torch_runs if "error" not in r]
    best = min(ok, key=lambda r: r["forward_s"] + r["generate_s"])
    tok = BATCH * SEQ
    new = BATCH * NEW_TOKENS
    jl = np.load(out_dir / "jax_last_logits.npy")
    attn = best["side"].removeprefix("torch-")
    tl = np.load(out_dir / f"torch_{attn}_last_logits.npy")
    jt, tt = np.load(out_dir / "jax_tokens.npy"), np.load(out_dir / f"torch_{attn}_tokens.npy")
    first_diff = [int(np.argmax(a != b)) if (a != b).any() else NEW_TOKENS for a, b in zip(jt, tt)]
    lines = [
        f"{datetime.date.today().isoformat()}; {_machine()}; jax {jx['jax']} ({jx['device']}), "
        f"torch {best['torch']} ({best['threads']} threads), float32.",
        f"Gemma-2-shaped model, {jx['params_m']:.1f}M parameters (d 768, 12 layers, 8/4 heads of "
        f"96, MLP 2048, vocab 32000, tied). Median (and min) of {len(jx['forward_runs'])} timed "
        "runs per side after warm-up, sides alternating in separate processes; 1-min load "
        f"average during the run: {', '.join(f'{x:.1f}' for x in load)} (the CPU is shared).",
        "",
    ]
    for r in torch_runs:
        if "error" in r:
            lines.append(f"- {r['side']}: not available ({r['error']})")
    lines.append(f"- torch attention used below: `{best['attn_implementation']}`")
    lines += [
        "",
        "| | JAX | PyTorch | JAX speed-up |",
        "| --- | --- | --- | --- |",
        f"| forward {BATCH}x{SEQ} (s) | {jx['forward_s']:.3f} | {best['forward_s']:.3f} | "
        f"{best['forward_s'] / jx['forward_s']:.2f}x |",
        f"| forward, min of runs (s) | {jx['forward_min_s']:.3f} | {best['forward_min_s']:.3f} | "
        f"{best['forward_min_s'] / jx['forward_min_s']:.2f}x |",
        f"| forward tokens/s (median) | {tok / jx['forward_s']:.0f} | "
        f"{tok / best['forward_s']:.0f} | |",
        f"| generate {BATCH}x{NEW_TOKENS} new (s) | {jx['generate_s']:.3f} | "
        f"{best['generate_s']:.3f} | {best['generate_s'] / jx['generate_s']:.2f}x |",
        f"| generate, min of runs (s) | {jx['generate_min_s']:.3f} | {best['generate_min_s']:.3f} "
        f"| {best['generate_min_s'] / jx['generate_min_s']:.2f}x |",
        f"| generated tokens/s (median) | {new / jx['generate_s']:.1f} | "
        f"{new / best['generate_s']:.1f} | |",
        f"| first call (s): JAX compile / torch warm-up, forward | {jx['forward_compile_s']:.2f} | "
        f"{best['forward_warmup_s']:.2f} | |",
        f"| first call (s): JAX compile / torch warm-up, generate | "
        f"{jx['generate_compile_s']:.2f} | {best['generate_warmup_s']:.2f} | |",
        f"| RSS after load (MB) | {jx['rss_after_load_mb']:.0f} | {best['rss_after_load_mb']:.0f} "
        "| |",
        f"| peak RSS (MB) | {jx['peak_rss_mb']:.0f} | {best['peak_rss_mb']:.0f} | |",
        "",
        f"Same weights check: max |last-position logit diff| {np.abs(jl - tl).max():.2e}; greedy "
        f"tokens identical for {sum(d == NEW_TOKENS for d in first_diff)}/{BATCH} sequences "
        f"(first divergence per sequence: {first_diff}).",
        "Runs (s): JAX forward "
        + ", ".join(f"{t:.3f}" for t in jx["forward_runs"])
        + "; torch forward "
        + ", ".join(f"{t:.3f}" for t in best["forward_runs"])
        + "; JAX generate "
        + ", ".join(f"{t:.3f}" for t in jx["generate_runs"])
        + "; torch generate "
        + ", ".join(f"{t:.3f}" for t in best["generate_runs"])
        + ".",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="timed runs per side per round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of both sides")
    p.add_argument("--attn", default="eager,sdpa", help="torch attention implementations to try")
    p.add_argument("--results", help="append the report under the issue-2 heading to this file")
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.side:
        model_dir, out_dir = Path(args.model_dir), Path(args.out_dir or ".")
        if args.side == "build":
            build_model(model_dir)
            return
        if args.side == "jax":
            res = run_jax(model_dir, out_dir, args.runs)
        else:
            res = run_torch(model_dir, out_dir, args.runs, args.side.removeprefix("torch-"))
        print(json.dumps(res))
        return

    with tempfile.TemporaryDirectory(prefix="bench_model_") as tmp:
        tmp = Path(tmp)
        model_dir, out_dir = tmp / "hf", tmp / "out"
        out_dir.mkdir()
        build = [sys.executable, __file__, "--side", "build", "--model-dir", str(model_dir)]
        subprocess.run(build, check=True)
        jx_rounds, torch_rounds = [], {a: [] for a in args.attn.split(",")}
        load = [os.getloadavg()[0]]
        for _ in range(args.rounds):  # alternate sides so background load hits both alike
            jx_rounds.append(_spawn("jax", model_dir, out_dir, args.runs))
            print(f"jax: {json.dumps(jx_rounds[-1])}", file=sys.stderr)
            for attn, rounds in torch_rounds.items():
                rounds.append(_spawn(f"torch-{attn}", model_dir, out_dir, args.runs))
                print(f"torch-{attn}: {json.dumps(rounds[-1])}", file=sys.stderr)
            load.append(os.getloadavg()[0])
        jx = _merge(jx_rounds)
        torch_runs = [_merge(r) for r in torch_rounds.values()]
        text = report(jx, torch_runs, out_dir, load)
    print(text)
    if args.results:
        with open(args.results, "a") as f:  # others append too: append only, one write
            f.write(f"\n{HEADING}\n\n{text}\n")


if __name__ == "__main__":
    main()
