"""OOD probing: linear probes trained on vanilla harmful vs harmless prompts (last token), tested
on vanilla harmful prompts and on jailbreaks that succeed; probes on the refusal features (F*),
on the dense residual stream at the best *validation* layer, and on random features.

    python experiments/probing.py                                      # the organism
    python experiments/probing.py --model-dir M --sae-dir S --data-dir D \\
        --jailbreak-file adversarial.json     # refusal_direction-style JSON of jailbreak prompts

On the organism the jailbreaks are its held-out prompts in designed-to-succeed wrappers that it
actually complies with (greedy generation + judge); on a real model, those of --jailbreak-file
that the substring judge finds unrefused.

Writes ``results.json`` (schema in experiments/README.md) and ``probes.png``.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

from refusal_jax.benchmark import cached_prepare
from refusal_jax.pipeline import PipelineConfig, judge_responses
from refusal_jax.probing import last_token_resid, probe_report
from refusal_jax.prompts import decode_responses, encode_prompts, generate_tokens
from refusal_jax.runs import (
    Cache,
    add_run_arguments,
    add_subject_arguments,
    load_subject,
    run_folder,
    write_json_atomic,
)
from refusal_jax.selection import random_features


def _data(subject, args):
    rng = random.Random(args.seed)
    pick = lambda xs, n: rng.sample(xs, min(n, len(xs)))
    if subject.organism:
        from refusal_jax.organism.corpus import build_corpus

        c = build_corpus(seed=0)
        return (
            pick(c.prompts("train", harmful=True, wrapped=False), args.n_train),
            pick(c.prompts("train", harmful=False, wrapped=False), args.n_train),
            pick(c.prompts("test", harmful=True, wrapped=False), args.n_test),
            pick(c.prompts("test", harmful=True, wrapped=True, succeeds=True), 2 * args.n_test),
        )
    from refusal_jax import data

    if not args.jailbreak_file:
        raise SystemExit("--jailbreak-file is needed on a real model")
    return (
        data.split(args.data_dir, "harmful_train", args.n_train),
        data.split(args.data_dir, "harmless_train", args.n_train),
        data.split(args.data_dir, "harmful_test", args.n_test),
        data.read_instructions(args.jailbreak_file)[: 2 * args.n_test],
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_subject_arguments(p)
    add_run_arguments(p)
    p.add_argument("--jailbreak-file", help="JSON list of {'instruction'} jailbreak prompts")
    p.add_argument("--n-train", type=int, default=128)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--n-steps", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=16)
    args = p.parse_args(argv)
    subject = load_subject(args)
    params, cfg, tok, saes = subject.params, subject.cfg, subject.tokenizer, subject.saes
    out = run_folder(args, "probing")
    cache = Cache(out / "cache")
    harm_tr, safe_tr, harm_te, jail_candidates = _data(subject, args)
    pc = PipelineConfig(
        n_steps=args.n_steps, n_candidates=subject.n_candidates,
        skip_positions=subject.skip_positions, seed=args.seed,
    )  # fmt: skip
    prep = cached_prepare(params, cfg, tok, saes, harm_tr[:64], safe_tr[:64], pc, cache)
    refusal = prep.sets["ours"]
    rand = random_features(refusal, int(saes.W_dec.shape[-2]), seed=args.seed + 1)
    enc = lambda xs: encode_prompts(tok, xs, max_length=cfg.max_position_embeddings)
    # Jailbreaks that succeed on this model.
    toks = generate_tokens(params, cfg, *enc(jail_candidates), max_new_tokens=args.max_new_tokens)
    _, complied = judge_responses(decode_responses(tok, *toks), subject.compliance_prefixes)
    jail = [q for q, ok in zip(jail_candidates, complied) if ok][: args.n_test]
    if not jail:
        raise SystemExit("no jailbreak prompt succeeds on this model: nothing to test on")
    resid = lambda xs: last_token_resid(params, cfg, *enc(xs))
    train_x = np.concatenate([resid(harm_tr), resid(safe_tr)])
    train_y = np.r_[np.ones(len(harm_tr)), np.zeros(len(safe_tr))].astype(int)
    groups = {
        "vanilla_harmful": (resid(harm_te), np.ones(len(harm_te), int)),
        "successful_jailbreaks": (resid(jail), np.ones(len(jail), int)),
    }
    res = probe_report(saes, refusal, rand, train_x, train_y, groups, seed=args.seed)
    res.update(
        subject=subject.describe(),
        n={"train": len(train_y), "vanilla_harmful": len(harm_te), "jailbreaks": len(jail),
           "jailbreak_candidates": len(jail_candidates)},
        refusal_features=refusal.pairs(),
        best_layer=prep.best_layer,
    )  # fmt: skip
    write_json_atomic(out / "results.json", res)
    _plot(res, out)
    for name, r in res["probes"].items():
        g = r["groups"]
        print(
            f"{name:8s} overall {r['overall']:.2f}  jailbreaks "
            f"{g['successful_jailbreaks']:.2f}  vanilla {g['vanilla_harmful']:.2f}"
        )
    print(f"dense probe layer {res['dense_layer']}; run folder: {out}")
    return res


def _plot(res, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["probes"])
    groups = list(res["probes"][names[0]]["groups"])
    fig, ax = plt.subplots(figsize=(6, 3.2))
    w = 0.8 / len(groups)
    for k, g in enumerate(groups):
        ax.bar(np.arange(len(names)) + k * w, [res["probes"][n]["groups"][g] for n in names], w,
               label=g)  # fmt: skip
    ax.set_xticks(np.arange(len(names)) + 0.4 - w / 2, names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (harmful = 1)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "probes.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
