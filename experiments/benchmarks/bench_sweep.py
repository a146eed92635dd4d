"""LA-IG over a prompt set on the organism: throughput and per-call overhead.

The demo's LA-IG stage (the filtered harmful training prompts of ``refusal-jax demo --seed 0``,
their refusal direction at the best layer, the paper's left N = 10 rule) run three ways side by
side, each after a warm-up call so that compilation is not counted:

- ``per-call (before)``: the loop the pipeline used to run: per batch, :func:`la_ig` (input and
  direction checks on the host), :func:`position_weights` and :func:`feature_attributions` as
  separate dispatches, each batch's result pulled to the host before the next is launched;
- ``attribute_prompts``: one compiled program per batch (:func:`attribute_batch`), inputs
  checked once, batch k + 1 dispatched before batch k is pulled;
- ``run_sweep``: the sharded, resumable sweep (a fresh folder per run), one shard per batch,
  each shard checked and saved.

Per-call overhead = 1 - calls x (seconds of one compiled call, blocked, best of 3) / wall
seconds: the share of the run spent outside the compiled programs (Python, dispatch, host
transfers, checks, saving). Forward-equivalents per prompt = a prompt's LA-IG seconds over its
share of one compiled forward pass on the same batch::

    python experiments/benchmarks/bench_sweep.py [--batch-sizes 8 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from benchutil import machine_info  # noqa: E402

from refusal_jax.core.batching import batches  # noqa: E402
from refusal_jax.core.model import forward  # noqa: E402
from refusal_jax.method.laig import (  # noqa: E402
    alpha_schedule,
    attribute_batch,
    attribute_prompts,
    feature_attributions,
    la_ig,
    position_weights,
)
from refusal_jax.study import pipeline as P  # noqa: E402
from refusal_jax.study.demo import demo_prompts  # noqa: E402
from refusal_jax.study.subject import load_subject  # noqa: E402
from refusal_jax.study.sweep import SweepConfig, run_sweep  # noqa: E402


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(s, ids, mask, r, rt, pos, bs, n_steps, repeats):
    """The three paths at batch size ``bs``: table rows, and a line of detail printed."""
    n = len(ids)
    quad = tuple(jnp.asarray(q) for q in alpha_schedule(n_steps, "left"))
    rows = []
    n_calls = -(-n // bs)
    b_ids, b_mask = jnp.asarray(ids[:bs]), jnp.asarray(mask[:bs])
    if len(b_ids) < bs:
        b_ids, b_mask, _ = next(batches(ids, mask, bs))

    def one_call():
        attribute_batch(
            s.params, s.cfg, s.saes, b_ids, b_mask, jnp.asarray(r), jnp.int32(rt), quad,
            pos, "paper", None, False, True,
        )[0].block_until_ready()  # fmt: skip

    def before():
        out = []
        for bi, bm, k in batches(ids, mask, bs):
            res = la_ig(s.params, s.cfg, bi, bm, r, refusal_token=rt, n_steps=n_steps)
            w = position_weights(bm, ids=bi, positions=pos)
            out.append(np.asarray(feature_attributions(res, s.saes, w))[:, :k])
        return np.concatenate(out, axis=1)

    def after():
        return attribute_prompts(
            s.params, s.cfg, s.saes, ids, mask, r, refusal_token=rt, positions=pos,
            n_steps=n_steps, batch_size=bs,
        )  # fmt: skip

    sweeps = []

    def sweep():
        with tempfile.TemporaryDirectory() as tmp:
            sc = SweepConfig(kind="laig", shard_size=bs, n_steps=n_steps, skip_positions=pos)
            res = run_sweep(
                s.params, s.cfg, ids, mask, Path(tmp) / "sweep", sc, saes=s.saes,
                direction=r, refusal_token=rt, progress=False,
            )  # fmt: skip
            sweeps.append(res["throughput"])

    one_call()
    before()
    after()
    sweep()  # warm-up: every program compiled
    t_call = best_of(one_call, repeats)
    t_fwd = best_of(
        lambda: forward(
            s.params, s.cfg, b_ids, b_mask, last_logits_only=True
        ).logits.block_until_ready(),
        repeats,
    )
    a_before, a_after = before(), after().attributions
    diff = np.abs(a_before - a_after).max() / np.abs(a_before).max()
    for name, fn in (("per-call (before)", before), ("attribute_prompts", after),
                     ("run_sweep", sweep)):  # fmt: skip
        wall = best_of(fn, repeats)
        rows.append((bs, name, n_calls, wall, 1 - n_calls * t_call / wall,
                     n / wall, wall / n / (t_fwd / bs)))  # fmt: skip
    print(
        f"batch {bs}: one compiled call {t_call * 1e3:.1f} ms, one forward {t_fwd * 1e3:.2f} ms;"
        f" attributions before vs after: max |diff| / max |a| = {diff:.1e}; run_sweep's own"
        f" report: {sweeps[-1]['prompts_per_s']:.1f} prompts/s,"
        f" {sweeps[-1]['forward_equivalents_per_prompt']:.1f} forward-equivalents/prompt"
    )
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-steps", type=int, default=10)
    args = ap.parse_args(argv)

    s = load_subject()  # the organism
    data = demo_prompts(s.prompts(0), 64, 64, "harmbench_test")
    pc = P.PipelineConfig(
        skip_positions=s.skip_positions, n_candidates=s.n_candidates, clamp_value=s.clamp_value
    )
    d = P.directions_and_layer(
        s.params, s.cfg, s.tokenizer, data.harmful_train, data.harmless_train, pc, lambda m: None
    )
    ids, mask = d.harmful
    r, rt = d.directions[d.best_layer], d.refusal_token
    pos = P.pipeline_positions(pc, s.tokenizer)
    n = len(ids)
    print(machine_info())
    print(
        f"organism: {n} prompts x {ids.shape[1]} tokens, layer {d.best_layer}, N = {args.n_steps}"
    )
    rows = []
    for bs in args.batch_sizes:
        rows += measure(s, ids, mask, r, rt, pos, bs, args.n_steps, args.repeats)
    print()
    print("| batch | path | calls | wall s | per-call overhead | prompts/s | fwd-equiv/prompt |")
    print("|---|---|---|---|---|---|---|")
    for bs, name, calls, wall, ov, rate, fe in rows:
        print(f"| {bs} | {name} | {calls} | {wall:.3f} | {ov:.1%} | {rate:.1f} | {fe:.1f} |")


if __name__ == "__main__":
    main()
