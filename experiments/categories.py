"""Harm categories (section 4.2): per-category direction, LA-IG and F*; common ("refusal") vs
category-specific features; clamping the specific features while holding the common ones at
their clean activations and the reverse; normalized jailbreak scores; cross-category transfer.

    python experiments/categories.py                                   # the organism
    python experiments/categories.py --model-dir M --sae-dir S --data-dir D \\
        --categories-file catqa_english.json --best-layer 15

--protocol paper (default; the reference code's): features fitted on the same prompts they are
scored on (50 per category); --protocol heldout: fitted on one part, scored on another. On the
organism the categories are its 8 harm categories (paper: its held-out test prompts for both;
heldout: train prompts for the features, test prompts for the scores); on a real model the
categories of a CategoricalHarmfulQA file (by default the paper's 7 of its 11), the first
--n-prompts of each (heldout: the first and second half). --min-all-rate R analyses only the
categories whose own F* clamp scores at least R (the reference code keeps the categories where
its intervention works).

Writes ``results.json`` (schema in experiments/README.md), ``scores.png``, ``normalized.png`` and
``transfer.png``; ``--resume RUN`` reuses the cached feature sets and responses.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from refusal_jax.cli.common import (
    add_classifier_arguments,
    add_laig_arguments,
    add_run_arguments,
    add_subject_arguments,
    classifier_from_args,
    open_run_from_args,
    subject_from_args,
)
from refusal_jax.core.errors import ArgumentParser, UsageError, run_cli
from refusal_jax.core.io import save_figure_atomic, write_json_atomic
from refusal_jax.method.prompts import shared_padding
from refusal_jax.organism.corpus import HARM_CATEGORIES
from refusal_jax.study import data
from refusal_jax.study.categories import (
    PAPER_CATEGORIES,
    active_categories,
    cached_category_features,
    category_interventions,
    restrict,
    shared_features,
)
from refusal_jax.study.html import write_run_report
from refusal_jax.study.pipeline import PipelineConfig


def _data(subject, args):
    """(feature prompts by category, scored prompts by category, harmless candidates)."""
    src = subject.prompts(args.seed)
    n = args.n_prompts
    if subject.organism:
        corpus, pick = src.corpus, src.pick
        cats = args.categories.split(",") if args.categories else list(HARM_CATEGORIES)
        unknown = sorted(set(cats) - set(HARM_CATEGORIES))
        if unknown:
            raise UsageError(f"--categories {unknown}: the organism has {list(HARM_CATEGORIES)}")
        prompts = lambda split, c: pick(
            corpus.prompts(split, harmful=True, wrapped=False, category=c), n
        )
        test = {c: prompts("test", c) for c in cats}
        fit = test if args.protocol == "paper" else {c: prompts("train", c) for c in cats}
        harmless = src.split("harmless_train", n + 32)
        return fit, test, harmless

    if not args.categories_file:
        raise UsageError("--categories-file is needed on a real model (CategoricalHarmfulQA)")
    by_cat = data.categorical_harmful_qa(args.categories_file)
    if args.categories:
        cats = args.categories.split(",")
    else:
        cats = [c for c in PAPER_CATEGORIES if c in by_cat] or list(by_cat)
    unknown = sorted(set(cats) - set(by_cat))
    if unknown:
        raise UsageError(f"--categories {unknown} not in {args.categories_file}: {list(by_cat)}")
    if args.protocol == "paper":
        fit = test = {c: by_cat[c][:n] for c in cats}
    else:
        fit = {c: by_cat[c][: len(by_cat[c]) // 2][:n] for c in cats}
        test = {c: by_cat[c][len(by_cat[c]) // 2 :][:n] for c in cats}
    return fit, test, src.split("harmless_train", 2 * n + 32)


def main(argv=None) -> dict:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_subject_arguments(p)
    add_run_arguments(p)
    p.add_argument("--protocol", choices=("paper", "heldout"), default="paper")
    p.add_argument("--categories-file", help="CategoricalHarmfulQA CSV / JSON (real models)")
    p.add_argument("--categories", help="comma-separated subset of the categories")
    p.add_argument("--n-prompts", type=int, default=50, help="per category (the paper: 50)")
    add_laig_arguments(p)
    p.add_argument("--n-features", type=int, default=20, help="|F*| per category")
    p.add_argument(
        "--n-candidates",
        type=int,
        default=None,
        help="F0 per layer (default: the subject's; the reference's categories code uses 10)",
    )
    p.add_argument("--best-layer", type=int, default=None)
    p.add_argument("--clamp-value", type=float, default=None, help="for 'all' (F*_c)")
    p.add_argument(
        "--small-set-clamp",
        type=float,
        default=-3.0,
        help="for the k common / specific features (the reference code: -3)",
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=None, help="default 24 (organism), 256 (real)"
    )
    p.add_argument(
        "--min-share",
        type=float,
        default=1.0,
        help="common = features in at least this share of the categories' F* (1: in all, the "
        "paper's intersection)",
    )
    p.add_argument(
        "--min-all-rate",
        type=float,
        default=0.0,
        help="analyse only the categories whose own F* clamp ('all') scores at least this (the "
        "reference code keeps the categories where its intervention works, 'only these have "
        "perf drop'; 0, the default: every category)",
    )
    p.add_argument("--no-transfer", action="store_true", help="skip the transfer matrix")
    add_classifier_arguments(p)
    args = p.parse_args(argv)
    subject = subject_from_args(args)
    params, cfg, tok, saes = subject.params, subject.cfg, subject.tokenizer, subject.saes
    # --min-all-rate selects among cached results: a resume may change it
    out, cache = open_run_from_args(args, "categories", subject, exclude=("min_all_rate",))
    fit, test, harmless = _data(subject, args)
    pc = PipelineConfig(
        n_steps=args.n_steps, alpha_rule=args.alpha_rule, n_features=args.n_features,
        n_candidates=args.n_candidates or subject.n_candidates,
        skip_positions=subject.skip_positions, seed=args.seed,
        max_new_tokens=args.max_new_tokens or (24 if subject.organism else 256),
        compliance_prefixes=subject.compliance_prefixes,
    )  # fmt: skip
    pc = dataclasses.replace(
        pc, pad_multiple=shared_padding(tok, *fit.values(), *test.values(), harmless)
    )
    clamp = subject.clamp_value if args.clamp_value is None else args.clamp_value
    cf = cached_category_features(
        params, cfg, tok, saes, fit, harmless, pc, cache, best_layer=args.best_layer,
        min_share=args.min_share, progress=not args.quiet,
    )  # fmt: skip
    classifier = classifier_from_args(args)
    active, all_rates = active_categories(
        params, cfg, tok, saes, cf, test, clamp, pc, args.min_all_rate, classifier=classifier,
        cache=cache, progress=not args.quiet,
    )  # fmt: skip
    if len(active) < 2:
        raise UsageError(
            f"only {active} of the categories reach --min-all-rate {args.min_all_rate} when their "
            f"F* is clamped ({all_rates}); common features need at least two"
        )
    analysed = restrict(cf, active)
    res = category_interventions(
        params, cfg, tok, saes, analysed, {c: test[c] for c in active}, clamp, pc,
        classifier=classifier, cache=cache, transfer=not args.no_transfer,
        progress=not args.quiet, small_set_clamp=args.small_set_clamp,
    )  # fmt: skip
    res.update(
        protocol=args.protocol,
        n_prompts={c: len(v) for c, v in test.items()},
        min_all_rate=args.min_all_rate,
        all_rates=all_rates,
        excluded_categories=[c for c in cf.sets if c not in active],
        n_common_strict=len(shared_features(analysed.sets, 1.0).pairs()),
        n_common_strict_every_category=len(shared_features(cf.sets, 1.0).pairs()),
        subject=subject.describe(),
    )
    write_json_atomic(out / "results.json", res)
    _plot(res, out)
    write_run_report(out, subject)
    s = res["summary"][res["score_key"]]
    if res["excluded_categories"]:
        print(
            f"excluded (F* clamp below {args.min_all_rate}): "
            + ", ".join(f"{c} {all_rates[c]:.2f}" for c in res["excluded_categories"])
        )
    print(
        f"common features: {res['n_common']}; mean {res['score_key']}: "
        + ", ".join(f"{k} {v:.2f}" for k, v in s.items() if v is not None)
    )
    print(f"run folder: {out}")
    return res


def _plot(res, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats, key = res["categories"], res["score_key"]
    names = [n for n in ("base", "all", "common", "specific") if n in res["scores"][cats[0]]]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    w = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [res["scores"][c][name][key] for c in cats]
        ax.bar(np.arange(len(cats)) + i * w, vals, w, label=name)
    ax.set_xticks(np.arange(len(cats)) + 0.4 - w / 2, cats, rotation=30, fontsize=7)
    ax.set_ylabel(key.replace("_", " "))
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, out / "scores.png", dpi=120)
    plt.close(fig)
    norm = {c: v for c, v in res["normalized"].items() if v}
    if norm:
        fig, ax = plt.subplots(figsize=(9, 3.5))
        parts = ("common", "specific", "transfer")
        for i, part in enumerate(parts):
            vals = [norm[c][part] or 0.0 for c in norm]
            ax.bar(np.arange(len(norm)) + i * 0.27, vals, 0.27, label=part)
        ax.set_xticks(np.arange(len(norm)) + 0.27, list(norm), rotation=30, fontsize=7)
        ax.set_ylabel("normalized jailbreak (/ all)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        save_figure_atomic(fig, out / "normalized.png", dpi=120)
        plt.close(fig)
    if res["transfer"]["score"] is not None:
        fig, ax = plt.subplots(figsize=(5, 4.5))
        im = ax.imshow(np.asarray(res["transfer"]["score"]), vmin=0, vmax=1)
        ax.set_xticks(range(len(cats)), cats, rotation=60, fontsize=7)
        ax.set_yticks(range(len(cats)), cats, fontsize=7)
        ax.set_xlabel("prompts of category")
        ax.set_ylabel("specific features of category")
        fig.colorbar(im, label=key.replace("_", " "))
        fig.tight_layout()
        save_figure_atomic(fig, out / "transfer.png", dpi=120)
        plt.close(fig)


if __name__ == "__main__":
    sys.exit(run_cli(main))
