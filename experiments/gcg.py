"""GCG-style universal adversarial suffix search (beyond the paper): a suffix, optimised with
one-hot token gradients on training harmful prompts, that makes the model comply; evaluated by
greedy generation and the judge on held-out harmful prompts.

    python experiments/gcg.py                                          # the organism
    python experiments/gcg.py --model-dir M --sae-dir S --data-dir D --n-tokens 20 --n-steps 500

Writes ``results.json`` ({"suffix", "suffix_ids", "losses", "heldout": {"n", "refusal_rate_before",
"refusal_rate_after", "jailbreak_rate_after", "flip_rate"}, "samples", "config", "subject"})
and ``losses.png``. Its suffix can feed the suffix analysis of section 4.3.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys

from refusal_jax.gcg import GCGConfig, gcg_search, with_suffix
from refusal_jax.pipeline import judge_responses, refusal_token
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
    p.add_argument("--n-train", type=int, default=16)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--n-tokens", type=int, default=8)
    p.add_argument("--n-steps", type=int, default=40)
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--n-candidates", type=int, default=128)
    p.add_argument("--target", default="Sure", help="first response token to aim for")
    p.add_argument("--max-new-tokens", type=int, default=16)
    args = p.parse_args(argv)
    subject = load_subject(args)
    params, cfg, tok = subject.params, subject.cfg, subject.tokenizer
    out = run_folder(args, "gcg")
    rng = random.Random(args.seed)
    if subject.organism:
        from refusal_jax.organism.corpus import build_corpus

        c = build_corpus(seed=0)
        train = rng.sample(c.prompts("train", harmful=True, wrapped=False), args.n_train)
        test = rng.sample(c.prompts("test", harmful=True, wrapped=False), args.n_test)
    else:
        from refusal_jax import data

        train = data.split(args.data_dir, "harmful_train", args.n_train)
        test = data.split(args.data_dir, "harmful_test", args.n_test)
    gc = GCGConfig(args.n_tokens, args.n_steps, args.top_k, args.n_candidates, args.seed)
    rt = refusal_token(tok)
    target = tok(args.target, add_special_tokens=False)["input_ids"][0]
    key = content_key("gcg", train, dataclasses.asdict(gc), rt, int(target))
    found = Cache(out / "cache").json(
        "gcg",
        key,
        lambda: gcg_search(
            params, cfg, tok, train, refusal_token=rt, target_token=int(target), gc=gc,
            progress=not args.quiet,
        ),
    )  # fmt: skip
    gen = lambda ids, mask: decode_responses(
        tok, *generate_tokens(params, cfg, ids, mask, max_new_tokens=args.max_new_tokens)
    )
    before = gen(*encode_prompts(tok, test, max_length=cfg.max_position_embeddings))
    after = gen(*with_suffix(tok, test, found["suffix_ids"]))
    ref_b, _ = judge_responses(before, subject.compliance_prefixes)
    ref_a, comp_a = judge_responses(after, subject.compliance_prefixes)
    res = {
        **found,
        "heldout": {
            "n": len(test),
            "refusal_rate_before": float(ref_b.mean()),
            "refusal_rate_after": float(ref_a.mean()),
            "jailbreak_rate_after": float(comp_a.mean()),
            "flip_rate": float((ref_b & ~ref_a).sum() / max(ref_b.sum(), 1)),
        },
        "samples": [{"prompt": q, "response": r} for q, r in zip(test[:5], after[:5])],
        "config": dataclasses.asdict(gc),
        "subject": subject.describe(),
    }
    write_json_atomic(out / "results.json", res)
    _plot(res["losses"], out / "losses.png")
    h = res["heldout"]
    print(f"suffix {res['suffix']!r}: loss {res['losses'][0]:.2f} -> {res['losses'][-1]:.2f}; "
          f"held-out refusal {h['refusal_rate_before']:.2f} -> {h['refusal_rate_after']:.2f}, "
          f"flip rate {h['flip_rate']:.2f}")  # fmt: skip
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
