"""Harm categories (section 4.2): per-category direction, LA-IG and F*; common ("refusal") vs
category-specific features; clamping specific features while holding the common ones at their
clean activations and the reverse; normalized scores; cross-category transfer.

    python experiments/categories.py                                   # the organism
    python experiments/categories.py --model-dir M --sae-dir S --data-dir D \\
        --categories-csv CategoricalHarmfulQA.csv --best-layer 15

Scores are first-token non-refusal rates on held-out prompts of each category (see
refusal_jax/categories.py). On the organism the categories are its 8 harm categories (train
split for the features, test split for the scores); on a real model the CSV's categories, the
first half of each for the features and the second half for the scores.

Writes ``results.json`` (schema in experiments/README.md), ``scores.png`` and
``transfer.png``; ``--resume RUN`` reuses the cached feature sets.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

from refusal_jax.categories import CategoryFeatures, category_features, category_interventions
from refusal_jax.features import feature_set
from refusal_jax.pipeline import PipelineConfig, choose_best_layer, refusal_token
from refusal_jax.prompts import encode_prompts
from refusal_jax.runs import (
    Cache,
    add_run_arguments,
    add_subject_arguments,
    content_key,
    load_subject,
    run_folder,
    write_json_atomic,
)


def _data(subject, args):
    rng = random.Random(args.seed)
    if subject.organism:
        from refusal_jax.organism.corpus import HARM_CATEGORIES, build_corpus

        corpus = build_corpus(seed=0)
        pick = lambda xs: rng.sample(xs, min(args.n_prompts, len(xs)))
        train = {
            c: pick(corpus.prompts("train", harmful=True, wrapped=False, category=c))
            for c in HARM_CATEGORIES
        }
        test = {
            c: pick(corpus.prompts("test", harmful=True, wrapped=False, category=c))
            for c in HARM_CATEGORIES
        }
        harmless = pick(corpus.prompts("train", harmful=False, wrapped=False))
        return train, test, harmless
    from refusal_jax import data

    if not args.categories_csv:
        raise SystemExit("--categories-csv is needed on a real model (CategoricalHarmfulQA)")
    by_cat = data.categorical_harmful_qa(args.categories_csv)
    train = {c: qs[: len(qs) // 2][: args.n_prompts] for c, qs in by_cat.items()}
    test = {c: qs[len(qs) // 2 :][: args.n_prompts] for c, qs in by_cat.items()}
    return train, test, data.split(args.data_dir, "harmless_train", args.n_prompts)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_subject_arguments(p)
    add_run_arguments(p)
    p.add_argument("--categories-csv", help="CategoricalHarmfulQA-style CSV (real models)")
    p.add_argument("--n-prompts", type=int, default=50, help="per category (the paper: 50)")
    p.add_argument("--n-steps", type=int, default=10)
    p.add_argument("--n-features", type=int, default=20)
    p.add_argument("--best-layer", type=int, default=None)
    p.add_argument("--clamp-value", type=float, default=None)
    p.add_argument(
        "--min-share",
        type=float,
        default=None,
        help="common = features in at least this share of the categories' F* (default 1: all, "
        "the paper; 0.75 on the organism, whose strict intersection over 8 categories is empty)",
    )
    args = p.parse_args(argv)
    subject = load_subject(args)
    params, cfg, tok, saes = subject.params, subject.cfg, subject.tokenizer, subject.saes
    out = run_folder(args, "categories")
    train, test, harmless = _data(subject, args)
    pc = PipelineConfig(
        n_steps=args.n_steps, n_candidates=subject.n_candidates, n_features=args.n_features,
        skip_positions=subject.skip_positions, seed=args.seed,
    )  # fmt: skip
    clamp = subject.clamp_value if args.clamp_value is None else args.clamp_value
    if args.min_share is None:
        args.min_share = 0.75 if subject.organism else 1.0
    cache = Cache(out / "cache")
    key = content_key("categories", train, harmless, vars(pc), args.best_layer)

    def compute():
        best = args.best_layer
        if best is None:  # the layer chosen on all categories' prompts together
            from refusal_jax.direction import refusal_directions

            enc = lambda xs: encode_prompts(tok, xs, max_length=cfg.max_position_embeddings)
            h = enc([q for qs in train.values() for q in qs])
            dirs = refusal_directions(params, cfg, h, enc(harmless))[0]
            best, _ = choose_best_layer(params, cfg, dirs, *h, refusal_token(tok))
        cf = category_features(
            params, cfg, tok, saes, train, harmless, pc, best, progress=not args.quiet
        )
        return {"best_layer": best, "sets": {c: s.pairs() for c, s in cf.sets.items()},
                "attributions": {c: a.tolist() for c, a in cf.attributions.items()}}  # fmt: skip

    c = cache.json("category-features", key, compute)
    L = cfg.n_layers
    sets = {k: feature_set(v, L) for k, v in c["sets"].items()}
    from refusal_jax.categories import shared_features
    from refusal_jax.features import difference

    common = shared_features(sets, args.min_share)
    cf = CategoryFeatures(
        c["best_layer"], sets, {k: np.asarray(v) for k, v in c["attributions"].items()}, common,
        {k: difference(s, common) for k, s in sets.items()},
    )  # fmt: skip
    res = category_interventions(params, cfg, tok, saes, cf, test, clamp, progress=not args.quiet)
    res.update(
        best_layer=cf.best_layer,
        subject=subject.describe(),
        clamp_value=clamp,
        min_share=args.min_share,
        n_common_strict=len(shared_features(sets, 1.0).pairs()),
    )
    write_json_atomic(out / "results.json", res)
    _plot(res, out)
    s = res["scores"]
    mean = lambda k: float(np.mean([s[c].get(k, np.nan) for c in res["categories"]]))
    print(
        f"common features: {res['n_common']}; mean non-refusal: all {mean('all'):.2f}, "
        f"common {mean('common'):.2f}, specific (same count) {mean('specific_k'):.2f}"
    )
    print(f"run folder: {out}")
    return res


def _plot(res, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = res["categories"]
    keys = [k for k in ("all", "common", "specific_k", "common_hold_specific",
                        "specific_hold_common") if k in res["scores"][cats[0]]]  # fmt: skip
    fig, ax = plt.subplots(figsize=(9, 3.5))
    w = 0.8 / len(keys)
    for k, key in enumerate(keys):
        ax.bar(np.arange(len(cats)) + k * w, [res["scores"][c][key] for c in cats], w, label=key)
    ax.set_xticks(np.arange(len(cats)) + 0.4 - w / 2, cats, rotation=30, fontsize=7)
    ax.set_ylabel("first-token non-refusal")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scores.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    im = ax.imshow(np.asarray(res["transfer"]["non_refusal"]), vmin=0, vmax=1)
    ax.set_xticks(range(len(cats)), cats, rotation=60, fontsize=7)
    ax.set_yticks(range(len(cats)), cats, fontsize=7)
    ax.set_xlabel("prompts of category")
    ax.set_ylabel("features of category")
    fig.colorbar(im, label="non-refusal")
    fig.tight_layout()
    fig.savefig(out / "transfer.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
