"""Jailbreak analysis (section 4.3): adversarial prompts that jailbreak vs their plain versions
that are refused - relative drop of harm features (mean over the prompt) and refusal features
(last 5 tokens); adversarial suffixes - refusal-feature activation with the harm features
clamped from their first strong position onward, and the most suppressive suffix tokens.

    python experiments/jailbreak_analysis.py                 # the organism (GCG suffix inline)
    python experiments/jailbreak_analysis.py --gcg-results runs/gcg-seed0-.../results.json
    python experiments/jailbreak_analysis.py --model-dir M --sae-dir S --data-dir D \\
        --wildjailbreak eval.tsv --suffix-csv ../shared/datasets/refusal_sae/advsuffixes.csv

Refusal features: F* (ours); harm features: the act baseline's features minus F* (see
refusal_jax/jailbreaks.py). Writes ``results.json`` and ``drops.png``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

from refusal_jax.benchmark import cached_prepare
from refusal_jax.features import difference
from refusal_jax.gcg import GCGConfig, gcg_search, with_suffix
from refusal_jax.jailbreaks import pair_drops, suffix_effects
from refusal_jax.pipeline import PipelineConfig, judge_responses, refusal_token
from refusal_jax.prompts import decode_responses, encode_prompts, generate_tokens
from refusal_jax.runs import (
    Cache,
    add_run_arguments,
    add_subject_arguments,
    content_key,
    load_subject,
    run_folder,
    write_json_atomic,
)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_subject_arguments(p)
    add_run_arguments(p)
    p.add_argument("--wildjailbreak", help="WildJailbreak-style TSV (real models)")
    p.add_argument("--suffix-csv", help="refusal_sae advsuffixes.csv layout (real models)")
    p.add_argument("--gcg-results", help="results.json of experiments/gcg.py (organism suffix)")
    p.add_argument("--n-pairs", type=int, default=100)
    p.add_argument("--n-suffix-prompts", type=int, default=64)
    p.add_argument("--n-steps", type=int, default=10)
    p.add_argument("--gcg-steps", type=int, default=30, help="inline GCG (organism, no results)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    args = p.parse_args(argv)
    subject = load_subject(args)
    params, cfg, tok, saes = subject.params, subject.cfg, subject.tokenizer, subject.saes
    out = run_folder(args, "jailbreak_analysis")
    cache = Cache(out / "cache")
    rng = random.Random(args.seed)
    enc = lambda xs: encode_prompts(tok, xs, max_length=cfg.max_position_embeddings)
    judge = lambda ids_mask: judge_responses(
        decode_responses(tok, *generate_tokens(params, cfg, *ids_mask,
                                               max_new_tokens=args.max_new_tokens)),
        subject.compliance_prefixes,
    )  # fmt: skip
    if subject.organism:
        from refusal_jax.organism.corpus import build_corpus

        c = build_corpus(seed=0)
        train_h = rng.sample(c.prompts("train", harmful=True, wrapped=False), 64)
        train_s = rng.sample(c.prompts("train", harmful=False, wrapped=False), 64)
        exs = c.examples("test", harmful=True, wrapped=True, succeeds=True)
        pairs = [
            (e.instruction, e.vanilla) for e in rng.sample(exs, min(4 * args.n_pairs, len(exs)))
        ]
        goals = rng.sample(c.prompts("test", harmful=True, wrapped=False), args.n_suffix_prompts)
    else:
        from refusal_jax import data

        train_h = data.split(args.data_dir, "harmful_train", 64)
        train_s = data.split(args.data_dir, "harmless_train", 64)
        if not args.wildjailbreak or not args.suffix_csv:
            raise SystemExit("real models need --wildjailbreak and --suffix-csv")
        pairs = data.wildjailbreak_pairs(args.wildjailbreak, 4 * args.n_pairs)
        goals_suffixes = data.adv_suffixes(args.suffix_csv)[: args.n_suffix_prompts]
    pc = PipelineConfig(n_steps=args.n_steps, n_candidates=subject.n_candidates,
                        skip_positions=subject.skip_positions, seed=args.seed)  # fmt: skip
    prep = cached_prepare(params, cfg, tok, saes, train_h, train_s, pc, cache)
    refusal = prep.sets["ours"]
    harm = difference(prep.sets["act"], refusal)

    # 1. Pairs: adversarial complied, plain refused.
    adv, plain = [a for a, _ in pairs], [v for _, v in pairs]
    _, adv_ok = judge(enc(adv))
    plain_refused, _ = judge(enc(plain))
    keep = [i for i in range(len(pairs)) if adv_ok[i] and plain_refused[i]][: args.n_pairs]
    if not keep:
        raise SystemExit("no adversarial prompt jailbreaks while its plain version is refused")
    adv_k, plain_k = [adv[i] for i in keep], [plain[i] for i in keep]
    drops = pair_drops(params, cfg, saes, harm, refusal, enc(adv_k), enc(plain_k))

    # 2. Suffixes.
    if subject.organism:
        if args.gcg_results:
            suffix_ids = json.loads(Path(args.gcg_results).read_text())["suffix_ids"]
        else:
            sure = tok("Sure", add_special_tokens=False)["input_ids"][0]
            gc = GCGConfig(n_steps=args.gcg_steps, n_candidates=96, seed=args.seed)
            run_gcg = lambda: gcg_search(
                params, cfg, tok, train_h[:16], refusal_token=refusal_token(tok),
                target_token=int(sure), gc=gc,
            )  # fmt: skip
            found = cache.json("gcg", content_key("gcg", train_h[:16], vars(gc)), run_gcg)
            suffix_ids = found["suffix_ids"]
        ids, mask, slots = with_suffix(tok, goals, suffix_ids, return_slots=True)
        slot_tokens = [[tok.decode([t]) for t in suffix_ids]] * len(goals)
    else:
        toks = [tok(" " + s[0], add_special_tokens=False)["input_ids"] for _, s in goals_suffixes]
        n = min(len(t) for t in toks)
        toks = [t[:n] for t in toks]
        goals = [g for g, _ in goals_suffixes]
        ids, mask, slots = with_suffix(tok, goals, toks, return_slots=True)
        slot_tokens = [[tok.decode([t]) for t in row] for row in toks]
    refused_with_suffix, _ = judge((ids, mask))
    eff = suffix_effects(params, cfg, saes, harm, refusal, ids, mask, slots)
    removed = (
        np.asarray(eff["refusal_token_removed"]) - np.asarray(eff["refusal_with_suffix"])[:, None]
    )
    by_token: dict = {}
    for row_toks, row in zip(slot_tokens, removed):
        for t, v in zip(row_toks, row):
            by_token.setdefault(t, []).append(float(v))
    ranking = sorted(((t, float(np.mean(v))) for t, v in by_token.items()), key=lambda x: -x[1])
    res = {
        "n_pairs": len(keep),
        "n_pair_candidates": len(pairs),
        "pairs": drops,
        "harm_features": harm.pairs(),
        "refusal_features": refusal.pairs(),
        "suffix": {
            "n_prompts": len(goals),
            "refusal_rate_with_suffix": float(refused_with_suffix.mean()),
            "refusal_activation_with_suffix": float(np.mean(eff["refusal_with_suffix"])),
            "refusal_activation_harm_clamped": float(np.mean(eff["refusal_harm_clamped"])),
            "most_suppressive_tokens": ranking[:10],
            **{k: eff[k] for k in ("suppression_by_slot", "harm_start_position")},
        },
        "subject": subject.describe(),
    }
    write_json_atomic(out / "results.json", res)
    _plot(res, out)
    print(
        f"{len(keep)} pairs: harm features drop {drops['harm_relative_drop']:.2f}, refusal "
        f"features drop {drops['refusal_relative_drop']:.2f}; suffix: refusal activation "
        f"{res['suffix']['refusal_activation_with_suffix']:.3f} -> "
        f"{res['suffix']['refusal_activation_harm_clamped']:.3f} with harm features clamped"
    )
    print(f"run folder: {out}")
    return res


def _plot(res, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.bar(
        ["harm features", "refusal features"],
        [res["pairs"]["harm_relative_drop"], res["pairs"]["refusal_relative_drop"]],
    )
    ax.set_ylabel("relative drop, plain -> adversarial")
    fig.tight_layout()
    fig.savefig(out / "drops.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
