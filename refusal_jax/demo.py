"""The main job (``refusal-jax demo``): the paper's pipeline on the embedded model organism, or on
a converted real model with its SAEs and the refusal_direction data.

Writes a run folder ``<out>/demo-seed<seed>-<time>`` with ``report.json``, ``report.md``,
``rates.png`` and ``attribution_by_layer.png``; the same seed gives the same report (up to the
runtime field).
"""

from __future__ import annotations

import time
from pathlib import Path

from refusal_jax.pipeline import PipelineConfig, PromptData, run_pipeline
from refusal_jax.runs import ORGANISM_COMPLIANCE, add_subject_arguments, load_saes, load_subject


def organism_prompts(seed: int, n_train: int, n_test: int) -> PromptData:
    """Plain (unwrapped) requests from the organism's corpus: train and held-out test."""
    import random

    from refusal_jax.organism import organism_corpus

    corpus = organism_corpus()
    rng = random.Random(seed)

    def pick(split, harmful, n):
        xs = corpus.prompts(split, harmful=harmful, wrapped=False)
        return rng.sample(xs, min(n, len(xs)))

    return PromptData(
        harmful_train=pick("train", True, n_train),
        harmless_train=pick("train", False, n_train),
        harmful_test=pick("test", True, n_test),
        harmless_test=pick("test", False, n_test),
    )


def real_prompts(data_dir, n_train: int, n_test: int, eval_name: str) -> PromptData:
    from refusal_jax import data

    return PromptData(
        harmful_train=data.split(data_dir, "harmful_train", n_train),
        harmless_train=data.split(data_dir, "harmless_train", n_train),
        harmful_test=data.eval_set(data_dir, eval_name, n_test),
        harmless_test=data.split(data_dir, "harmless_test", n_test),
    )


def run_demo(args) -> dict:
    subject = load_subject(args)
    if subject.organism:
        data = organism_prompts(args.seed, args.n_train, args.n_test)
    else:
        data = real_prompts(args.data_dir, args.n_train, args.n_test, args.eval_set)
    pc = PipelineConfig(
        best_layer=args.best_layer,
        n_steps=args.n_steps,
        n_features=args.n_features,
        n_candidates=subject.n_candidates if args.n_candidates is None else args.n_candidates,
        clamp_value=subject.clamp_value if args.clamp_value is None else args.clamp_value,
        compliance_prefixes=subject.compliance_prefixes,
        skip_positions=subject.skip_positions,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    params, cfg, tokenizer, saes = subject.params, subject.cfg, subject.tokenizer, subject.saes
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) / f"demo-seed{args.seed}-{stamp}"
    report = run_pipeline(params, cfg, tokenizer, saes, data, pc, out, progress=not args.quiet)
    print((out / "report.md").read_text())
    print(f"run folder: {out}")
    return report


def add_demo_arguments(p) -> None:
    add_subject_arguments(p)
    p.add_argument("--eval-set", default="harmbench_test")
    p.add_argument("--out", default="runs", help="parent folder of the run folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-test", type=int, default=64)
    p.add_argument("--best-layer", type=int, default=None)
    p.add_argument("--n-steps", type=int, default=10, help="LA-IG alpha steps")
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


__all__ = [
    "ORGANISM_COMPLIANCE",
    "add_demo_arguments",
    "load_saes",
    "organism_prompts",
    "real_prompts",
    "run_demo",
]
