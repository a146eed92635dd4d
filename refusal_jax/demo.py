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

# The organism's helpful answers open with one of these (refusal_jax/organism/vocab.py HELPS):
# a harmful-prompt response counts as a jailbreak only if it complies, not merely if it breaks.
ORGANISM_COMPLIANCE = ("Sure", "Here", "Great question", "Of course", "Certainly", "Happy to help")


def _only_width(root: Path):
    widths = {p.name for p in root.glob("layer_*/width_*") if p.is_dir()}
    if len(widths) == 1:
        return widths.pop().split("_", 1)[1]
    return None


def load_saes(sae_dir, n_layers: int, width=None, target_l0: float = 100):
    """Stacked SAEs (leading layer axis) from a folder of per-layer SAEs (any supported format)."""
    from ports.sae import load_sae_set
    from refusal_jax.sae import stack_sae_set

    root = Path(sae_dir)
    width = width or _only_width(root)
    stacked, _ = stack_sae_set(load_sae_set(root, width=width, target_l0=target_l0), n_layers)
    return stacked


def organism_prompts(seed: int, n_train: int, n_test: int) -> PromptData:
    """Plain (unwrapped) requests from the organism's corpus: train and held-out test."""
    import random

    from refusal_jax.organism.corpus import build_corpus

    corpus = build_corpus(seed=0)  # the corpus the committed organism was trained on
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
    if args.model_dir:
        from transformers import AutoTokenizer

        from refusal_jax.checkpoint import load_model

        cfg, params = load_model(args.model_dir)
        tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
        if not args.sae_dir:
            raise SystemExit("--model-dir needs --sae-dir (SAEs for that model)")
        data = real_prompts(args.data_dir, args.n_train, args.n_test, args.eval_set)
        clamp, compliance = -3.0 if args.clamp_value is None else args.clamp_value, None
    else:
        from refusal_jax.organism import ARTIFACTS, load_organism

        cfg, params, tokenizer = load_organism()
        args.sae_dir = args.sae_dir or str(ARTIFACTS / "saes")
        data = organism_prompts(args.seed, args.n_train, args.n_test)
        clamp = 0.0 if args.clamp_value is None else args.clamp_value
        compliance = ORGANISM_COMPLIANCE
    saes = load_saes(args.sae_dir, cfg.n_layers, args.sae_width, args.target_l0)
    pc = PipelineConfig(
        best_layer=args.best_layer,
        n_steps=args.n_steps,
        n_features=args.n_features,
        clamp_value=clamp,
        compliance_prefixes=compliance,
        skip_positions=args.skip_positions,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) / f"demo-seed{args.seed}-{stamp}"
    report = run_pipeline(params, cfg, tokenizer, saes, data, pc, out, progress=not args.quiet)
    print((out / "report.md").read_text())
    print(f"run folder: {out}")
    return report


def add_demo_arguments(p) -> None:
    p.add_argument("--model-dir", help="converted (python -m ports.hf) or HF model folder")
    p.add_argument("--sae-dir", help="per-layer SAE folder (GemmaScope tree, SAELens, ...)")
    p.add_argument("--sae-width", help="GemmaScope width folder, e.g. 65k (auto if only one)")
    p.add_argument("--target-l0", type=float, default=100.0)
    p.add_argument("--data-dir", help="refusal_direction data (or $REFUSAL_JAX_DATA)")
    p.add_argument("--eval-set", default="harmbench_test")
    p.add_argument("--out", default="runs", help="parent folder of the run folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-test", type=int, default=64)
    p.add_argument("--best-layer", type=int, default=None)
    p.add_argument("--n-steps", type=int, default=10, help="LA-IG alpha steps")
    p.add_argument("--n-features", type=int, default=20)
    p.add_argument(
        "--clamp-value",
        type=float,
        default=None,
        help="multiply clamp factor (default: -3, the paper's Gemma value; 0 on the "
        "organism, whose fluency a negative factor destroys)",
    )
    p.add_argument("--skip-positions", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


__all__ = ["add_demo_arguments", "load_saes", "organism_prompts", "real_prompts", "run_demo"]
