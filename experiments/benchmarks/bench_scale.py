"""Scaling of LA-IG over devices, and the memory remat saves on a long prompt.

1. LA-IG (N alpha steps, position-mean feature attributions) over a batch of prompts, data
   parallel on 1, 2, 4 and 8 *fake* CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_
   count=n``, each count in its own process), and on a 2 x 4 (data x model) mesh. This machine has
   2 physical cores, so fake devices share them: the numbers show that the sharded program runs
   and stays exact (attributions compared with the 1-device run), not a speed-up; on real
   devices each one gets its own share of the batch.
2. Peak temporary memory of the compiled LA-IG program on one long prompt with and without
   ``remat`` ("full" and "dots") and with fewer alpha steps at once (``alpha_batch``)
   (``jax.jit(...).lower(...).compile().memory_analysis().temp_size_in_bytes``: XLA's own buffer
   assignment, independent of load; nothing is run).

    python experiments/benchmarks/bench_scale.py --results experiments/benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))
HEADING = "## Scaling (issue 7)"

MODEL = dict(
    vocab_size=4096, d_model=256, n_layers=6, n_heads=8, n_kv_heads=4, head_dim=32, d_mlp=1024,
    sliding_window=4096,
)  # fmt: skip
D_SAE = 4096
# (remat, alpha_batch) settings measured on the long prompt
# (alpha_batch None: one alpha step at a time, the default; 10: all N = 10 steps at once)
MEMORY_SETTINGS = ((False, None), (True, None), ("dots", None), (False, 10), (True, 10), (True, 2))


def _setup(seq: int, batch: int):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from refusal_jax import sae as sae_lib
    from refusal_jax.core.config import gemma2_config
    from refusal_jax.core.model import init_params

    cfg = gemma2_config(**MODEL, max_position_embeddings=max(seq, 4096), eos_token_ids=(1,))
    params = init_params(cfg, jax.random.PRNGKey(0), scale=0.05)
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    w = jax.random.normal(k1, (cfg.n_layers, D_SAE, cfg.d_model))
    w = w / jnp.linalg.norm(w, axis=-1, keepdims=True)
    saes = sae_lib.SAE(
        W_enc=jnp.swapaxes(w, 1, 2),
        b_enc=jnp.zeros((cfg.n_layers, D_SAE)),
        W_dec=w,
        b_dec=jnp.zeros((cfg.n_layers, cfg.d_model)),
        threshold=jnp.full((cfg.n_layers, D_SAE), 0.5),
        cfg=sae_lib.SAEConfig(architecture="jumprelu", d_in=cfg.d_model, d_sae=D_SAE),
    )
    rng = np.random.default_rng(0)
    ids = rng.integers(3, MODEL["vocab_size"], size=(batch, seq)).astype(np.int32)
    mask = np.ones_like(ids)
    direction = np.asarray(jax.random.normal(k2, (cfg.d_model,)))
    return cfg, params, saes, ids, mask, direction


def worker(args) -> dict:
    """One process: LA-IG on the mesh ``args.data x args.model`` (or the remat measurement)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from refusal_jax.core.sharding import make_mesh, shard_batch, shard_params, shard_saes
    from refusal_jax.method.laig import feature_attributions, la_ig, la_ig_fn, position_weights

    if args.worker == "remat":
        cfg, params, _, ids, mask, direction = _setup(args.long_seq, 1)
        out = {}
        for remat, alpha_batch in MEMORY_SETTINGS:
            lowered = la_ig_fn.lower(
                params, cfg, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(direction), 5, -1,
                jnp.linspace(0, 0.9, args.n_steps), "paper", alpha_batch, remat,
            )  # fmt: skip
            mem = lowered.compile().memory_analysis()
            out[f"{remat}/{alpha_batch}"] = mem.temp_size_in_bytes / 2**20
        return out
    cfg, params, saes, ids, mask, direction = _setup(args.seq, args.batch)
    mesh = make_mesh(data=args.data, model=args.model)
    p, s = shard_params(params, cfg, mesh), shard_saes(saes, mesh)
    i, m = shard_batch(mesh, ids, mask)

    def run():
        res = la_ig(p, cfg, i, m, direction, refusal_token=5, n_steps=args.n_steps)
        return feature_attributions(res, s, position_weights(m)).block_until_ready()

    t0 = time.perf_counter()
    attr = run()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    np.save(args.out_npy, np.asarray(attr))
    best = min(times)
    return {
        "devices": len(jax.devices()),
        "mesh": f"{args.data}x{args.model}",
        "compile_s": compile_s,
        "best_s": best,
        "prompts_per_s": args.batch / best,
    }


def _spawn(n_devices: int, extra: list[str]) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, __file__, *extra], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--worker", choices=("laig", "remat"), help=argparse.SUPPRESS)
    p.add_argument("--data", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--model", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out-npy", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--long-seq", type=int, default=2048)
    p.add_argument("--n-steps", type=int, default=10)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--results", help="append the report to this Markdown file")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    import tempfile

    import numpy as np
    from benchutil import machine_info

    common = ["--batch", str(args.batch), "--seq", str(args.seq), "--n-steps", str(args.n_steps)]
    common += ["--runs", str(args.runs)]
    tmp = Path(tempfile.mkdtemp())
    rows, attrs = [], {}
    for n, data, model in ((1, 1, 1), (2, 2, 1), (4, 4, 1), (8, 8, 1), (8, 2, 4)):
        npy = tmp / f"{data}x{model}.npy"
        r = _spawn(
            n,
            ["--worker", "laig", "--data", str(data), "--model", str(model), "--out-npy", str(npy)]
            + common,
        )
        attrs[r["mesh"]] = np.load(npy)
        rows.append(r)
    ref = attrs["1x1"]
    lines = [
        machine_info(),
        f"model: Gemma-2-shaped {MODEL}, JumpReLU SAEs of width {D_SAE} at all "
        f"{MODEL['n_layers']} layers; LA-IG N = {args.n_steps}, batch {args.batch} x "
        f"{args.seq} tokens, float32",
        "",
        "| devices | mesh (data x model) | prompts/s | vs 1 device | compile (s) | max rel. diff "
        "of attributions vs 1 device |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = np.abs(attrs[r["mesh"]] - ref).max() / np.abs(ref).max()
        lines.append(
            f"| {r['devices']} | {r['mesh']} | {r['prompts_per_s']:.2f} | "
            f"{r['prompts_per_s'] / rows[0]['prompts_per_s']:.2f}x | {r['compile_s']:.1f} | "
            f"{diff:.1e} |"
        )
    mem = _spawn(1, ["--worker", "remat", "--long-seq", str(args.long_seq)] + common)
    base = mem["False/None"]
    lines += [
        "",
        f"LA-IG (N = {args.n_steps}) on one {args.long_seq}-token prompt: compiled temporary "
        "memory (memory_analysis().temp_size_in_bytes)",
        "",
        "| remat | alpha_batch | temp memory (MB) | vs the default (no remat, 1 step at a time) |",
        "|---|---|---|---|",
    ]
    for remat, alpha_batch in MEMORY_SETTINGS:
        mb = mem[f"{remat}/{alpha_batch}"]
        lines.append(f"| {remat} | {alpha_batch or '1 (default)'} | {mb:.0f} | {mb / base:.2f}x |")
    text = "\n".join(lines)
    print(text)
    if args.results:
        path = Path(args.results)
        old = path.read_text() if path.exists() else ""
        block = f"\n{HEADING}\n\n```\n{text}\n```\n"
        if HEADING in old:
            head, _, rest = old.partition(HEADING)
            nxt = rest.find("\n## ")
            old = head.rstrip("\n") + "\n" + (rest[nxt:] if nxt >= 0 else "")
        path.write_text(old.rstrip("\n") + "\n" + block)


if __name__ == "__main__":
    main()
