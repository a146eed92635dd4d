"""GCG-style universal adversarial suffix search (beyond the paper): a suffix, optimised with
one-hot token gradients on training harmful requests, that makes the model comply; evaluated as
text (request + suffix) by greedy generation and the judge on held-out harmful requests.

    python experiments/gcg.py                                          # the organism
    python experiments/gcg.py --model-dir M --sae-dir S --data-dir D --n-tokens 20 --n-steps 500

Writes ``results.json`` (schema in experiments/README.md) and ``losses.png``. Its suffix feeds
the suffix analysis of section 4.3 (``jailbreak_analysis.py --gcg-results``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np

from refusal_jax.cli.common import (
    add_run_arguments,
    add_subject_arguments,
    open_run_from_args,
    subject_from_args,
)
from refusal_jax.core.errors import ArgumentParser, UsageError, run_cli
from refusal_jax.core.io import save_figure_atomic, write_json_atomic
from refusal_jax.method.gcg import GCGConfig, gcg_search, suffixed
from refusal_jax.method.judges import judge_responses, refusal_token
from refusal_jax.method.prompts import decode_responses, encode_prompts, generate_tokens
from refusal_jax.study.html import write_run_report
from refusal_jax.study.runs import content_key


def _rates(before, after) -> dict:
    """Judged responses without / with the suffix: (refused, jailbroken) pairs of [N] bool."""
    (ref_b, _), (ref_a, jb_a) = before, after
    n_ref = max(int(ref_b.sum()), 1)
    return {
        "n": len(ref_b),
        "refusal_rate_before": float(ref_b.mean()),
        "refusal_rate_after": float(ref_a.mean()),
        "jailbreak_rate_after": float(jb_a.mean()),
        # of the requests refused without the suffix: share no longer refused / jailbroken
        "flip_rate": float((ref_b & ~ref_a).sum() / n_ref),
        "jailbreak_flip_rate": float((ref_b & jb_a).sum() / n_ref),
    }


def main(argv=None) -> dict:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_subject_arguments(p)
    add_run_arguments(p)
    p.add_argument("--n-train", type=int, default=16)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--n-tokens", type=int, default=8)
    p.add_argument("--n-steps", type=int, default=40)
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--n-candidates", type=int, default=128, help="GCG candidates per step")
    p.set_defaults(sae_width_flags=("n_features",))  # --n-candidates is GCG's, not F0
    p.add_argument("--candidate-batch", type=int, default=32, help="candidates per forward")
    p.add_argument("--target", default="Sure", help="first response token to aim for")
    p.add_argument("--max-new-tokens", type=int, default=16)
    args = p.parse_args(argv)
    subject = subject_from_args(args)
    params, cfg, tok = subject.params, subject.cfg, subject.tokenizer
    out, cache = open_run_from_args(args, "gcg", subject)
    src = subject.prompts(args.seed)
    train = src.split("harmful_train", args.n_train)
    test = src.split("harmful_test", args.n_test)
    gc = GCGConfig(
        n_tokens=args.n_tokens, n_steps=args.n_steps, top_k=args.top_k,
        n_candidates=args.n_candidates, candidate_batch=args.candidate_batch, seed=args.seed,
    )  # fmt: skip
    rt = refusal_token(tok)
    target = tok(args.target, add_special_tokens=False)["input_ids"]
    if not target:
        raise UsageError(f"--target {args.target!r} encodes to no token")
    key = content_key("gcg", train, dataclasses.asdict(gc), rt, int(target[0]))
    found = cache.json(
        "gcg",
        key,
        lambda: gcg_search(
            params, cfg, tok, train, refusal_token=rt, target_token=int(target[0]), gc=gc,
            progress=not args.quiet,
        ),
    )  # fmt: skip

    def judged(prompts, tag):
        def compute():
            ids, mask = encode_prompts(tok, prompts, max_length=cfg.max_position_embeddings)
            toks = generate_tokens(params, cfg, ids, mask, max_new_tokens=args.max_new_tokens)
            texts = decode_responses(tok, *toks)
            r, j = judge_responses(texts, subject.compliance_prefixes)
            return {"refused": r.tolist(), "jailbroken": j.tolist(), "responses": texts}

        k = content_key(prompts, args.max_new_tokens, subject.compliance_prefixes)
        v = cache.json(f"responses-{tag}", k, compute)
        return np.asarray(v["refused"]), np.asarray(v["jailbroken"]), v["responses"]

    def evaluate(prompts, tag):
        b, a = judged(prompts, f"{tag}-plain"), judged(suffixed(prompts, found["suffix"]), tag)
        return _rates(b[:2], a[:2]), a[2]

    held, after = evaluate(test, "heldout")
    train_rates, _ = evaluate(train, "train")
    res = {
        **found,
        "heldout": held,
        "train": train_rates,
        "samples": [
            {"prompt": q + found["suffix"], "response": r} for q, r in zip(test[:5], after[:5])
        ],
        "config": {**dataclasses.asdict(gc), "target": args.target, "n_train": len(train)},
        "subject": subject.describe(),
    }
    write_json_atomic(out / "results.json", res)
    _plot(res["losses"], out / "losses.png")
    write_run_report(out, subject)
    h = res["heldout"]
    print(
        f"suffix {res['suffix']!r}: loss {res['losses'][0]:.2f} -> {res['losses'][-1]:.2f}; "
        f"held-out refusal {h['refusal_rate_before']:.2f} -> {h['refusal_rate_after']:.2f}, "
        f"flip rate {h['flip_rate']:.2f} (to compliance {h['jailbreak_flip_rate']:.2f})"
    )
    print(f"run folder: {out}")
    return res


def _plot(losses, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(losses)
    ax.set_xlabel("GCG step")
    ax.set_ylabel("logit(I) - logit(target), mean")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(run_cli(main))
