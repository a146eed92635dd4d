"""``refusal-jax sweep``: a resumable LA-IG or generation sweep over a prompt set, on all devices
(:mod:`refusal_jax.study.sweep`).

    refusal-jax sweep laig --out runs/sweep1 --n-prompts 512 --shard-size 32       # organism
    refusal-jax sweep generate --out runs/gen1 --max-new-tokens 64
    refusal-jax sweep laig --model-dir M --sae-dir S --data-dir D --out runs/s --model-parallel 4

Rerun the same command on the same ``--out`` to resume; ``--multihost`` on every host of a pod.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from refusal_jax.cli.common import add_laig_arguments, add_subject_arguments, subject_from_args
from refusal_jax.core.errors import ArgumentParser, check_direction, run_cli
from refusal_jax.core.sharding import DATA, initialize_multihost, is_primary, make_mesh
from refusal_jax.method.judges import refusal_token
from refusal_jax.method.prompts import encode_prompts
from refusal_jax.study.pipeline import PipelineConfig, pipeline_positions
from refusal_jax.study.sweep import (
    KINDS,
    SweepConfig,
    read_direction,
    run_sweep,
    sweep_direction,
)


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=KINDS)
    add_subject_arguments(p)
    p.add_argument("--out", required=True, help="sweep folder (rerun with the same to resume)")
    p.add_argument(
        "--split",
        default="harmful_train",
        help="prompt set: refusal_direction split name (harmful_train, harmless_val, ...); on "
        "the organism harmful_/harmless_ + train/val/test",
    )
    p.add_argument("--n-prompts", type=int, default=None, help="the first N prompts of --split")
    p.add_argument("--shard-size", type=int, default=32, help="prompts per shard (jitted call)")
    add_laig_arguments(p)
    p.add_argument("--sum-only", action="store_true", help="store attribution sums only")
    p.add_argument("--direction", help="refusal direction file (.npy or .safetensors 'direction')")
    p.add_argument("--best-layer", type=int, default=None, help="layer of the direction")
    p.add_argument(
        "--direction-prompts",
        type=int,
        default=64,
        help="harmful/harmless train prompts for the direction (cached in --out)",
    )
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--trim-padding", type=int, default=0, help="see SweepConfig.trim_padding")
    p.add_argument(
        "--alpha-batch",
        type=int,
        default=None,
        help="LA-IG alpha steps at once (default 1; more is faster and needs more memory)",
    )
    p.add_argument(
        "--remat",
        nargs="?",
        const="full",
        default=False,
        choices=("full", "dots"),
        help="recompute layers in LA-IG's backward pass (memory)",
    )
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--model-parallel", type=int, default=1, help="devices per model replica")
    p.add_argument("--auto-shrink", action="store_true", help="halve a shard on out-of-memory")
    p.add_argument("--multihost", action="store_true", help="join a multi-host job first")
    p.add_argument("--coordinator", help="multi-host coordinator host:port (else automatic)")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--force",
        action="store_true",
        help="--out holds a sweep of other inputs: recompute everything (default: refused)",
    )


def cmd_sweep(args: argparse.Namespace) -> dict:
    """Run the sweep the flags describe; returns :func:`run_sweep`'s result."""
    if args.multihost:
        initialize_multihost(args.coordinator, args.num_processes, args.process_id)
    mesh = make_mesh(model=args.model_parallel)
    dtype = jnp.dtype(args.dtype)
    subject = subject_from_args(args, mesh=mesh, dtype=dtype, with_saes=args.kind == "laig")
    params, cfg, tok = subject.params, subject.cfg, subject.tokenizer
    source = subject.prompts()
    prompts = source.split(args.split)[: args.n_prompts]
    ids, mask = encode_prompts(tok, prompts, max_length=cfg.max_position_embeddings)
    sc = SweepConfig(
        kind=args.kind,
        shard_size=args.shard_size,
        n_steps=args.n_steps,
        alpha_rule=args.alpha_rule,
        skip_positions=subject.skip_positions
        if isinstance(subject.skip_positions, int)  # keeps the sweep key of int settings
        else pipeline_positions(
            PipelineConfig(skip_positions=subject.skip_positions), subject.tokenizer
        ),
        per_prompt=not args.sum_only,
        max_new_tokens=args.max_new_tokens,
        trim_padding=args.trim_padding,
        alpha_batch=args.alpha_batch,
        remat=args.remat,
    )
    direction, rt = None, None
    if args.kind == "laig":
        rt = refusal_token(tok)
        if args.direction:
            direction = read_direction(args.direction)
            check_direction(direction, cfg.d_model, f"--direction {args.direction}")
        else:
            direction = sweep_direction(
                args.out, params, cfg, tok, source, args.direction_prompts, args.best_layer
            )
    res = run_sweep(
        params, cfg, ids, mask, args.out, sc, saes=subject.saes, direction=direction,
        refusal_token=rt, mesh=mesh, auto_shrink=args.auto_shrink, progress=not args.quiet,
        force=args.force,
    )  # fmt: skip
    if is_primary():
        print(
            f"{res['n_shards']} shards ({len(res['computed'])} computed now) on "
            f"{mesh.shape[DATA]} x {mesh.shape['model']} devices "
            f"({jax.process_count()} process(es)) -> {Path(args.out)}"
        )
        if res["throughput"]:
            t = res["throughput"]
            line = (
                f"{t['prompts_per_s']:.2f} prompts/s (first shard {t['first_shard_seconds']:.1f} s"
            )
            line += ", compiles)" if t["shards"] > 1 else ")"
            if "forward_equivalents_per_prompt" in t:
                line += f", {t['forward_equivalents_per_prompt']:.1f} forward-equivalents/prompt"
            print(line)
    return res


def main(argv=None) -> dict:
    """``refusal-jax sweep`` on its own (tests, ``python -m refusal_jax.cli.sweep``)."""
    p = ArgumentParser(
        prog="refusal-jax sweep", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add_sweep_arguments(p)
    return cmd_sweep(p.parse_args(argv))


__all__ = ["add_sweep_arguments", "cmd_sweep", "main"]

if __name__ == "__main__":
    sys.exit(run_cli(main))
