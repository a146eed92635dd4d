"""OOD probing: linear probes trained on vanilla harmful (refused, 1) vs harmless (0) prompts at
the last token, tested on held-out vanilla harmful prompts (1) and on jailbreaks that succeed
(0: the model does not refuse them, the reference code's labels); probes on the refusal
features, on the dense residual stream at the best *validation* layer, and on random features.

    python experiments/probing.py                                      # the organism
    python experiments/probing.py --model-dir M --sae-dir S --data-dir D \\
        --wildjailbreak wildjailbreak/eval.tsv --refusal-features runs/categories-.../results.json

Jailbreaks: on the organism its held-out requests in designed-to-succeed wrappers that it
actually complies with (greedy generation + judge); on a real model the ``adversarial_harmful``
prompts of a WildJailbreak TSV (or a refusal_direction-style JSON, ``--jailbreak-file``) that
the substring judge finds unrefused.

Writes ``results.json`` (schema in experiments/README.md) and ``probes.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
from refusal_jax.method.judges import judge_responses
from refusal_jax.method.probing import last_token_resid, probe_report
from refusal_jax.method.prompts import decode_responses, encode_prompts, generate_tokens
from refusal_jax.method.selection import random_features
from refusal_jax.study import data
from refusal_jax.study.benchmark import cached_prepare
from refusal_jax.study.html import write_run_report
from refusal_jax.study.jailbreaks import refusal_features
from refusal_jax.study.pipeline import PipelineConfig
from refusal_jax.study.runs import content_key


def _data(subject, args):
    src = subject.prompts(args.seed)
    train_h = src.split("harmful_train", args.n_train)
    train_s = src.split("harmless_train", args.n_train)
    test_h = src.split("harmful_test", args.n_test)
    if subject.organism:
        jail = src.corpus.prompts("test", harmful=True, wrapped=True, succeeds=True)
        return train_h, train_s, test_h, src.pick(jail, 2 * args.n_test)
    if args.wildjailbreak:
        jail = data.wildjailbreak_prompts(args.wildjailbreak, "adversarial_harmful")
    elif args.jailbreak_file:
        jail = data.read_instructions(args.jailbreak_file)
    else:
        raise UsageError("a real model needs --wildjailbreak (TSV) or --jailbreak-file (JSON)")
    return train_h, train_s, test_h, src.pick(jail, 4 * args.n_test)


def main(argv=None) -> dict:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_subject_arguments(p)
    add_run_arguments(p)
    p.add_argument("--wildjailbreak", help="WildJailbreak TSV: adversarial_harmful prompts")
    p.add_argument("--jailbreak-file", help="JSON list of {'instruction'} jailbreak prompts")
    add_refusal_features_argument(p)
    p.add_argument("--n-train", type=int, default=128, help="harmful and harmless, each")
    p.add_argument("--n-test", type=int, default=100, help="per test group (at most)")
    p.add_argument("--n-random", type=int, default=5, help="random feature sets, averaged")
    add_laig_arguments(p, "LA-IG alpha steps (for F*)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    args = p.parse_args(argv)
    subject = subject_from_args(args)
    params, cfg, tok, saes = subject.params, subject.cfg, subject.tokenizer, subject.saes
    out, cache = open_run_from_args(args, "probing", subject)
    harm_tr, safe_tr, harm_te, jail_candidates = _data(subject, args)
    pc = PipelineConfig(
        n_steps=args.n_steps, alpha_rule=args.alpha_rule, n_candidates=subject.n_candidates,
        skip_positions=subject.skip_positions, seed=args.seed,
    )  # fmt: skip
    prep = cached_prepare(
        params, cfg, tok, saes, harm_tr[:64], safe_tr[:64], pc, cache, not args.quiet
    )
    d_sae = int(saes.W_dec.shape[-2])
    refusal = refusal_features(args.refusal_features, prep.sets, cfg.n_layers, d_sae)
    rand = [random_features(refusal, d_sae, seed=args.seed + 1 + k) for k in range(args.n_random)]
    enc = lambda xs: encode_prompts(tok, xs, max_length=cfg.max_position_embeddings)

    def complied():  # jailbreak candidates the model complies with
        toks = generate_tokens(
            params, cfg, *enc(jail_candidates), max_new_tokens=args.max_new_tokens
        )
        _, ok = judge_responses(decode_responses(tok, *toks), subject.compliance_prefixes)
        return ok.tolist()

    key = content_key(jail_candidates, args.max_new_tokens, subject.compliance_prefixes)
    ok = cache.json("jailbreak-judge", key, complied)
    jail = [q for q, good in zip(jail_candidates, ok) if good][: args.n_test]
    if not jail:
        raise UsageError("no jailbreak prompt succeeds on this model: nothing to test on")

    def resid(xs, tag):
        compute = lambda: {"resid": last_token_resid(params, cfg, *enc(xs))}
        return cache.arrays(f"resid-{tag}", content_key(xs), compute)["resid"]

    train_x = np.concatenate([resid(harm_tr, "harmful-train"), resid(safe_tr, "harmless-train")])
    train_y = np.r_[np.ones(len(harm_tr)), np.zeros(len(safe_tr))].astype(int)
    groups = {  # labels: does the model refuse? (the reference code's)
        "vanilla_harmful": (resid(harm_te, "harmful-test"), np.ones(len(harm_te), int)),
        "successful_jailbreaks": (resid(jail, "jailbreaks"), np.zeros(len(jail), int)),
    }
    res = probe_report(saes, refusal, rand, train_x, train_y, groups, seed=args.seed)
    res.update(
        labels={"train": {"harmful": 1, "harmless": 0},
                "test": {"vanilla_harmful": 1, "successful_jailbreaks": 0}},
        n={"train": len(train_y), "vanilla_harmful": len(harm_te), "jailbreaks": len(jail),
           "jailbreak_candidates": len(jail_candidates)},
        refusal_features=refusal.pairs(),
        refusal_features_source=args.refusal_features,
        best_layer=prep.best_layer,
        subject=subject.describe(),
    )  # fmt: skip
    write_json_atomic(out / "results.json", res)
    _plot(res, out)
    write_run_report(out, subject)
    for name, r in res["probes"].items():
        g = r["groups"]
        print(
            f"{name:8s} overall {r['overall']:.2f}  jailbreaks "
            f"{g['successful_jailbreaks']:.2f}  vanilla {g['vanilla_harmful']:.2f}"
        )
    last = res["dense_by_layer"][-1]["groups"]["successful_jailbreaks"]
    print(f"dense probe layer {res['dense_layer']} (last layer on jailbreaks: {last:.2f})")
    print(f"run folder: {out}")
    return res


def _plot(res, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["probes"])
    groups = list(res["probes"][names[0]]["groups"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    w = 0.8 / len(groups)
    for k, g in enumerate(groups):
        ax.bar(np.arange(len(names)) + k * w, [res["probes"][n]["groups"][g] for n in names], w,
               label=g)  # fmt: skip
    ax.set_xticks(np.arange(len(names)) + 0.4 - w / 2, names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (does the model refuse?)")
    ax.legend(fontsize=7)
    layers = np.arange(len(res["dense_by_layer"]))
    for g in groups:
        ax2.plot(layers, [d["groups"][g] for d in res["dense_by_layer"]], marker="o", label=g)
    ax2.axvline(res["dense_layer"], color="k", lw=0.5, ls="--")
    ax2.set_xticks(layers)
    ax2.set_xlabel("dense probe layer (dashed: best on validation)")
    ax2.set_ylim(0, 1)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, out / "probes.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(run_cli(main))
