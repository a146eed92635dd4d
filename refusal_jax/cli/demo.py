"""``refusal-jax demo``: the main job (:func:`refusal_jax.study.demo.run_demo`)."""

from __future__ import annotations

import argparse

from refusal_jax.cli.common import add_laig_arguments, add_subject_arguments, subject_from_args
from refusal_jax.study.demo import run_demo


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    add_subject_arguments(p)
    p.add_argument(
        "--eval-set",
        default=None,
        help="held-out harmful set of --data-dir (default harmbench_test; not on the organism)",
    )
    p.add_argument("--out", default="runs", help="parent folder of the run folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-test", type=int, default=64)
    p.add_argument("--best-layer", type=int, default=None)
    add_laig_arguments(p)
    p.add_argument("--n-features", type=int, default=20)
    p.add_argument(
        "--n-candidates",
        type=int,
        default=None,
        help="F0 size per layer (default: the paper's 10; 40 on the organism)",
    )
    p.add_argument(
        "--clamp-value",
        type=float,
        default=None,
        help="multiply clamp factor (default: -3, the paper's Gemma value; -0.5 on the organism, "
        "chosen on its validation split by experiments/calibrate.py)",
    )
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_demo(args: argparse.Namespace) -> int:
    report, folder = run_demo(
        subject_from_args(args),
        out=args.out,
        seed=args.seed,
        n_train=args.n_train,
        n_test=args.n_test,
        eval_set=args.eval_set or "harmbench_test",
        best_layer=args.best_layer,
        n_steps=args.n_steps,
        alpha_rule=args.alpha_rule,
        n_features=args.n_features,
        n_candidates=args.n_candidates,
        clamp_value=args.clamp_value,
        max_new_tokens=args.max_new_tokens,
        progress=not args.quiet,
    )
    print((folder / "report.md").read_text())
    print(f"run folder: {folder} (open {folder / 'report.html'} in a browser)")
    return 0


__all__ = ["add_demo_arguments", "cmd_demo"]
