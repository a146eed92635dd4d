"""Jailbreak analysis (section 4.3): how jailbreaks move harm and refusal features.

(1) Adversarial prompts that jailbreak the model vs their plain versions that it refuses (and,
as a control, adversarial prompts that fail): relative drop of the harm features (mean over the
prompt) and of the refusal features (last 5 tokens). (2) Requests that an adversarial suffix
jailbreaks: drop of the refusal features from the suffix, and from clamping the request's harm
features from their first strong position onward; the suffix words that suppress most.

    python experiments/jailbreak_analysis.py                 # the organism (GCG suffix inline)
    python experiments/jailbreak_analysis.py --gcg-results runs/gcg-seed0-.../results.json
    python experiments/jailbreak_analysis.py --model-dir M --sae-dir S --data-dir D \\
        --wildjailbreak wildjailbreak/train.tsv \\
        --suffix-csv ../shared/datasets/refusal_sae/advsuffixes.csv

Refusal features R: ``--refusal-features`` (``ours``: F* of the training prompts; or
experiments/categories.py's results.json for its common features, the paper's choice). Harm
features of a prompt: its own F* minus R (refusal_jax/jailbreaks.py). Writes ``results.json``
(schema in experiments/README.md), ``drops.png`` and ``suffix.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from refusal_jax.cli.common import (
    add_laig_arguments,
    add_refusal_features_argument,
    add_run_arguments,
    add_subject_arguments,
    open_run_from_args,
    subject_from_args,
)
from refusal_jax.core.errors import ArgumentParser, UsageError, run_cli
from refusal_jax.core.io import save_figure_atomic, write_json_atomic
from refusal_jax.method.features import FeatureSet
from refusal_jax.method.gcg import GCGConfig, gcg_search
from refusal_jax.method.judges import judge_responses
from refusal_jax.method.prompts import decode_responses, encode_prompts, generate_tokens
from refusal_jax.study import data
from refusal_jax.study import jailbreaks as jb
from refusal_jax.study.benchmark import cached_prepare
from refusal_jax.study.html import write_run_report
from refusal_jax.study.pipeline import PipelineConfig, pipeline_positions
from refusal_jax.study.runs import content_key
from refusal_jax.study.subject import PromptSource


def _organism_data(src: PromptSource, args):
    train_h = src.split("harmful_train", args.n_train)
    train_s = src.split("harmless_train", args.n_train)
    # held-out wrapped requests (designed to succeed or to fail) with their plain versions
    exs = src.pick(src.corpus.examples("test", harmful=True, wrapped=True), 6 * args.n_pairs)
    pairs = [(e.instruction, e.vanilla) for e in exs]
    goals = src.split("harmful_test", args.n_suffix_prompts)
    return train_h, train_s, pairs, goals


def _real_data(src: PromptSource, args):
    if not args.wildjailbreak or not args.suffix_csv:
        raise UsageError("a real model needs --wildjailbreak (TSV) and --suffix-csv")
    train_h = src.split("harmful_train", args.n_train)
    train_s = src.split("harmless_train", args.n_train)
    pairs = data.wildjailbreak_pairs(args.wildjailbreak, 6 * args.n_pairs)
    goal_suffixes = data.adv_suffixes(args.suffix_csv)[: args.n_suffix_prompts]
    return train_h, train_s, pairs, goal_suffixes


def main(argv=None) -> dict:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_subject_arguments(p)
    add_run_arguments(p)
    p.add_argument("--wildjailbreak", help="WildJailbreak train-style TSV (real models)")
    p.add_argument("--suffix-csv", help="refusal_sae advsuffixes.csv layout (real models)")
    p.add_argument("--gcg-results", help="results.json of experiments/gcg.py (organism suffix)")
    add_refusal_features_argument(p)
    p.add_argument("--n-train", type=int, default=64, help="harmful and harmless prompts for F*")
    p.add_argument("--n-pairs", type=int, default=100, help="pairs per group (at most)")
    p.add_argument("--n-suffix-prompts", type=int, default=64)
    add_laig_arguments(p)
    p.add_argument("--n-features", type=int, default=20, help="|F*| per prompt")
    p.add_argument("--gcg-steps", type=int, default=30, help="inline GCG (organism, no results)")
    p.add_argument("--gcg-train", type=int, default=16, help="inline GCG: training requests")
    p.add_argument("--gcg-candidates", type=int, default=96, help="inline GCG: per step")
    p.add_argument("--clamp-value", type=float, default=None, help="harm clamp (multiply)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    args = p.parse_args(argv)
    subject = subject_from_args(args)
    params, cfg, tok, saes = subject.params, subject.cfg, subject.tokenizer, subject.saes
    out, cache = open_run_from_args(args, "jailbreak_analysis", subject)
    progress = not args.quiet
    clamp = subject.clamp_value if args.clamp_value is None else args.clamp_value
    # lengths padded to multiples of 32: fewer distinct shapes, fewer compilations
    enc = lambda xs: encode_prompts(tok, xs, multiple=32, max_length=cfg.max_position_embeddings)

    def judge(prompts, tag):
        """(refused, jailbroken) per prompt, greedy responses judged; cached."""

        def compute():
            toks = generate_tokens(params, cfg, *enc(prompts), max_new_tokens=args.max_new_tokens)
            r, c = judge_responses(decode_responses(tok, *toks), subject.compliance_prefixes)
            return {"refused": r.tolist(), "jailbroken": c.tolist()}

        key = content_key(prompts, args.max_new_tokens, subject.compliance_prefixes)
        v = cache.json(f"judge-{tag}", key, compute)
        return np.asarray(v["refused"], bool), np.asarray(v["jailbroken"], bool)

    if subject.organism:
        train_h, train_s, pairs, goals = _organism_data(subject.prompts(args.seed), args)
    else:
        train_h, train_s, pairs, goal_suffixes = _real_data(subject.prompts(args.seed), args)
    pc = PipelineConfig(
        n_steps=args.n_steps, alpha_rule=args.alpha_rule, n_candidates=subject.n_candidates,
        n_features=args.n_features,
        skip_positions=subject.skip_positions, seed=args.seed,
    )  # fmt: skip
    prep = cached_prepare(params, cfg, tok, saes, train_h, train_s, pc, cache, progress)
    d_sae = int(saes.W_dec.shape[-2])
    refusal = jb.refusal_features(args.refusal_features, prep.sets, cfg.n_layers, d_sae)

    def prompt_features(prompts, tag):
        """F*_i of each prompt (LA-IG with the training direction), cached."""

        def compute():
            fs = jb.per_prompt_features(
                params, cfg, saes, *enc(prompts), prep.r_best, prep.refusal_token, pc, progress
            )
            return {"idx": np.asarray(fs.idx), "mask": np.asarray(fs.mask)}

        a = cache.arrays(f"fstar-{tag}", content_key(prompts, dataclasses.asdict(pc)), compute)
        return FeatureSet(idx=jnp.asarray(a["idx"]), mask=jnp.asarray(a["mask"], bool))

    # 1. Pairs: adversarial vs plain; jailbreaks (adversarial complied) and failed attempts
    #    (adversarial refused), in both cases the plain version refused.
    adv, plain = [a for a, _ in pairs], [v for _, v in pairs]
    adv_refused, adv_ok = judge(adv, "adversarial")
    plain_refused, _ = judge(plain, "plain")
    groups = {
        "jailbreak": [i for i in range(len(pairs)) if adv_ok[i] and plain_refused[i]],
        "failed": [i for i in range(len(pairs)) if adv_refused[i] and plain_refused[i]],
    }
    pair_res = {}
    for name, keep in groups.items():
        keep = keep[: args.n_pairs]
        if not keep:
            pair_res[name] = {"n_pairs": 0}
            continue
        a_k, p_k = [adv[i] for i in keep], [plain[i] for i in keep]
        harm, ref = jb.split_features(prompt_features(p_k, name), refusal)
        d = jb.pair_drops(params, cfg, saes, harm, ref, enc(a_k), enc(p_k))
        pair_res[name] = {"n_pairs": len(keep), **d}
    if not pair_res["jailbreak"]["n_pairs"]:
        raise UsageError("no adversarial prompt jailbreaks while its plain version is refused")

    # 2. Suffixes: the text appended to each request.
    if subject.organism:
        if args.gcg_results:
            suffix_text = json.loads(Path(args.gcg_results).read_text())["suffix"]
        else:
            from refusal_jax.method.judges import refusal_token

            sure = int(tok("Sure", add_special_tokens=False)["input_ids"][0])
            gc = GCGConfig(n_steps=args.gcg_steps, n_candidates=args.gcg_candidates, seed=args.seed)
            gcg_train = train_h[: args.gcg_train]
            run_gcg = lambda: gcg_search(
                params, cfg, tok, gcg_train, refusal_token=refusal_token(tok),
                target_token=sure, gc=gc, progress=progress,
            )  # fmt: skip
            key = content_key("gcg", gcg_train, dataclasses.asdict(gc), sure)
            suffix_text = cache.json("gcg", key, run_gcg)["suffix"]
        appended = [suffix_text] * len(goals)
    else:  # per goal, the first of its suffixes that jailbreaks (the reference's choice)
        goals, appended = [], []
        flat = [(g, " " + s) for g, ss in goal_suffixes for s in ss]
        _, ok = judge([g + s for g, s in flat], "suffix-candidates")
        for (g, s), good in zip(flat, ok):
            if good and g not in goals:
                goals.append(g)
                appended.append(s)
    if not goals:
        raise UsageError("no suffix jailbreaks any request")
    goal_refused, _ = judge(goals, "goals")
    _, suffix_ok = judge([g + s for g, s in zip(goals, appended)], "suffixed")
    keep = [i for i in range(len(goals)) if goal_refused[i] and suffix_ok[i]]
    if not keep:
        raise UsageError("no request is refused plainly and jailbroken by its suffix")
    goals_k, app_k = [goals[i] for i in keep], [appended[i] for i in keep]
    plain_enc = enc(goals_k)
    harm, ref = jb.split_features(
        prompt_features(goals_k, "goals"), refusal, min_layer_refusal=True
    )
    attr = cache.arrays(
        "harm-token-attr",
        content_key(goals_k, refusal.pairs(), dataclasses.asdict(pc)),
        lambda: {
            "a": jb.token_attributions(
                params, cfg, saes, harm, *plain_enc, prep.r_best, prep.refusal_token, pc
            )
        },
    )["a"]
    skip_first = pipeline_positions(pc, tok).prefix_length  # int, or the template prefix
    start = jb.first_strong_position(attr, plain_enc[1], skip_first=skip_first)
    suf = jb.suffix_analysis(
        params, cfg, saes, harm, ref, plain_enc, enc([g + s for g, s in zip(goals_k, app_k)]),
        start, clamp,
    )  # fmt: skip
    words = jb.suffix_word_effects(params, cfg, saes, tok, ref, goals_k, app_k, progress=progress)
    res = {
        "pairs": pair_res,
        "n_pair_candidates": len(pairs),
        "refusal_features": refusal.pairs(),
        "refusal_features_source": args.refusal_features,
        "suffix": {
            "n_requests": len(goals),
            "n_analysed": len(keep),
            "suffixes": sorted(set(app_k)),
            "clamp_value": clamp,
            **suf,
            "top_words": jb.top_words(words),
            "word_effects": [{"request": g, **w} for g, w in zip(goals_k, words)],
        },
        "best_layer": prep.best_layer,
        "subject": subject.describe(),
    }
    write_json_atomic(out / "results.json", res)
    _plot(res, out)
    write_run_report(out, subject)
    j, f, s = res["pairs"]["jailbreak"], res["pairs"]["failed"], res["suffix"]
    num = lambda v: "n/a" if v is None else f"{v:.2f}"
    fmt = lambda g: (
        f"harm {num(g['harm_relative_drop'])}, refusal {num(g['refusal_relative_drop'])}"
        if g["n_pairs"]
        else "none"
    )
    print(f"jailbreaks ({j['n_pairs']} pairs): {fmt(j)}; failed ({f['n_pairs']}): {fmt(f)}")
    print(
        f"suffix ({s['n_analysed']} requests): refusal features drop "
        f"{num(s['suffix_relative_drop'])} with the suffix, "
        f"{num(s['harm_clamp_relative_drop'])} with harm features clamped; "
        f"top words {s['top_words'][:5]}"
    )
    print(f"run folder: {out}")
    return res


def _plot(res, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in ("jailbreak", "failed") if res["pairs"][g]["n_pairs"]]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    x = np.arange(len(groups))
    for k, key in enumerate(("harm_relative_drop", "refusal_relative_drop")):
        vals = [res["pairs"][g][key] for g in groups]
        ax.bar(x + (k - 0.5) * 0.4, [np.nan if v is None else v for v in vals], 0.4,
               label=key.split("_")[0] + " features")  # fmt: skip
    ax.set_xticks(x, [f"{g} ({res['pairs'][g]['n_pairs']})" for g in groups])
    ax.set_ylabel("relative drop, plain -> adversarial")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, out / "drops.png", dpi=120)
    plt.close(fig)

    s = res["suffix"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.2))
    vals = [s["suffix_relative_drop"], s["harm_clamp_relative_drop"]]
    a1.bar(["suffix", "harm clamp"], [np.nan if v is None else v for v in vals])
    a1.set_ylabel("refusal-feature drop")
    top = s["top_words"][:10]
    a2.barh([w for w, _ in top][::-1], [n for _, n in top][::-1])
    a2.set_xlabel("most suppressive word (count)")
    fig.tight_layout()
    save_figure_atomic(fig, out / "suffix.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(run_cli(main))
