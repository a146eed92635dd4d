"""Behaviour of the organism: greedy generations judged by the substring refusal judge."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from refusal_jax.core.config import ModelConfig
from refusal_jax.core.errors import ArgumentParser, run_cli
from refusal_jax.core.io import write_text_atomic
from refusal_jax.core.patches import add_at_layers
from refusal_jax.method.direction import refusal_directions
from refusal_jax.method.interventions import ablate_direction
from refusal_jax.method.judges import first_token_refuses, is_refusal
from refusal_jax.method.prompts import decode_responses, encode_prompts, generate_tokens
from refusal_jax.organism import MODEL_DIR, load_organism, organism_corpus
from refusal_jax.organism.corpus import HARM_CATEGORIES, Corpus, build_corpus
from refusal_jax.organism.vocab import FAILING_FAMILIES, SUCCEEDING_FAMILIES


def generate_responses(
    cfg: ModelConfig,
    params,
    tok,
    instructions: Sequence[str],
    *,
    max_new_tokens: int = 24,
    batch_size: int = 64,
    patch=None,
    with_first_token: bool = False,
):
    """Greedy completions (special tokens dropped), in batches of a fixed size; with
    ``with_first_token`` also the first generated token id of each: ``(texts, first_ids)``."""
    ids, mask = encode_prompts(tok, instructions, multiple=16)
    tokens, lengths = generate_tokens(
        params, cfg, ids, mask, batch_size=batch_size, max_new_tokens=max_new_tokens, patch=patch
    )
    texts = decode_responses(tok, tokens, lengths)
    return (texts, [int(t) for t in tokens[:, 0]]) if with_first_token else texts


def evaluate_behaviour(
    cfg: ModelConfig,
    params,
    tok,
    corpus: Corpus,
    *,
    split: str = "test",
    limit: int | None = None,
    max_new_tokens: int = 24,
    seed: int = 0,
) -> dict:
    """Refusal and compliance rates on one split (``limit`` prompts per group, drawn at random).

    Keys: ``harmful_refusal``, ``harmless_refusal``, ``jailbreak_success_compliance`` (wrappers
    designed to succeed, harmful requests), ``jailbreak_fail_refusal``,
    ``wrapped_harmless_refusal``,
    ``harmful_refusal_by_category``, per-family jailbreak rates, ``refusals_first_token_I`` and
    ``compliant_first_token_I`` (share of refused / not refused generations whose first token is
    ``I``), ``jailbreak_first_token_Sure``, and ``n`` per group.
    """
    rng = np.random.default_rng(seed)

    def pick(**filters):
        exs = corpus.examples(split, **filters)
        if limit is not None and len(exs) > limit:
            exs = [exs[i] for i in sorted(rng.choice(len(exs), limit, replace=False))]
        return exs

    groups = {
        "harmful": pick(harmful=True, wrapped=False),
        "harmless": pick(harmful=False, wrapped=False),
        "jailbreak_success": pick(harmful=True, wrapped=True, succeeds=True),
        "jailbreak_fail": pick(harmful=True, wrapped=True, succeeds=False),
        "wrapped_harmless": pick(harmful=False, wrapped=True),
    }
    order = [(g, ex) for g, exs in groups.items() for ex in exs]
    texts, first = generate_responses(
        cfg,
        params,
        tok,
        [ex.instruction for _, ex in order],
        max_new_tokens=max_new_tokens,
        with_first_token=True,
    )
    by_group: dict[str, list[tuple]] = {g: [] for g in groups}
    for (g, ex), text, t0 in zip(order, texts, first):
        by_group[g].append((ex, text, is_refusal(text), t0))

    def rate(rows, refused=True):
        return float(np.mean([row[2] == refused for row in rows])) if rows else float("nan")

    def share(rows, word):
        tid = tok.convert_tokens_to_ids(word)
        return float(np.mean([row[3] == tid for row in rows])) if rows else float("nan")

    harmful = by_group["harmful"]
    jb = by_group["jailbreak_success"]
    every = [row for rows in by_group.values() for row in rows]
    held_wrappers = set(corpus.heldout.get(split, {}).get("wrapper_templates", ()))
    return {
        "split": split,
        "harmful_refusal": rate(harmful),
        "harmless_refusal": rate(by_group["harmless"]),
        "jailbreak_success_compliance": rate(by_group["jailbreak_success"], refused=False),
        "jailbreak_fail_refusal": rate(by_group["jailbreak_fail"]),
        "wrapped_harmless_refusal": rate(by_group["wrapped_harmless"]),
        "harmful_refusal_by_category": {
            c: rate([row for row in harmful if row[0].category == c]) for c in HARM_CATEGORIES
        },
        # wrappers seen in training (around held-out requests) vs wrapper templates held out too
        "jailbreak_success_compliance_seen_wrappers": rate(
            [row for row in jb if row[0].wrapper_template not in held_wrappers], refused=False
        ),
        "jailbreak_success_compliance_heldout_wrappers": rate(
            [row for row in jb if row[0].wrapper_template in held_wrappers], refused=False
        ),
        "jailbreak_fail_refusal_seen_wrappers": rate(
            [r for r in by_group["jailbreak_fail"] if r[0].wrapper_template not in held_wrappers]
        ),
        "jailbreak_compliance_by_family": {
            f: rate([row for row in jb if row[0].wrapper == f], refused=False)
            for f in SUCCEEDING_FAMILIES
        },
        "jailbreak_fail_refusal_by_family": {
            f: rate([row for row in by_group["jailbreak_fail"] if row[0].wrapper == f])
            for f in FAILING_FAMILIES
        },
        "refusals_first_token_I": share([r for r in every if r[2]], "I"),
        "compliant_first_token_I": share([r for r in every if not r[2]], "I"),
        "jailbreak_first_token_Sure": share([row for row in jb if not row[2]], "Sure"),
        "n": {g: len(rows) for g, rows in by_group.items()},
        "examples": {
            g: [{"instruction": row[0].instruction, "response": row[1]} for row in rows[:3]]
            for g, rows in by_group.items()
        },
    }


def directional_check(
    cfg: ModelConfig, params, tok, corpus: Corpus, *, n: int = 128, split: str = "test"
) -> dict:
    """Is refusal mediated by one residual direction? Per layer l: the difference-in-means
    direction r_l from ``n`` training prompts each (last prompt position), then on ``split``
    prompts the first-token refusal rate ("I") of harmful prompts with r_l ablated at every layer
    and position, and of harmless prompts with r_l added at layer l."""

    def enc(prompts):
        return encode_prompts(tok, prompts[:n], multiple=16)

    r = refusal_directions(
        params,
        cfg,
        enc(corpus.prompts("train", harmful=True, wrapped=False)),
        enc(corpus.prompts("train", harmful=False, wrapped=False)),
    )[0]
    harmful = enc(corpus.prompts(split, harmful=True, wrapped=False))
    harmless = enc(corpus.prompts(split, harmful=False, wrapped=False))
    i_tok = [tok.convert_tokens_to_ids("I")]
    out = {
        "harmful_refusal": float(first_token_refuses(params, cfg, *harmful, i_tok).mean()),
        "harmless_refusal": float(first_token_refuses(params, cfg, *harmless, i_tok).mean()),
        "layers": [],
    }
    for layer in range(cfg.n_layers):
        ablate = ablate_direction(r[layer], cfg.n_layers)
        add = add_at_layers(r[layer], [layer], cfg.n_layers)
        out["layers"].append(
            {
                "layer": layer,
                "norm": float(np.linalg.norm(np.asarray(r[layer]))),
                "harmful_refusal_ablated": float(
                    first_token_refuses(params, cfg, *harmful, i_tok, patch=ablate).mean()
                ),
                "harmless_refusal_added": float(
                    first_token_refuses(params, cfg, *harmless, i_tok, patch=add).mean()
                ),
            }
        )
    return out


def main(argv=None) -> None:
    """Evaluate a saved organism folder and record the rates in its ``organism.json``."""

    p = ArgumentParser(description=main.__doc__)
    p.add_argument("--model", default=str(MODEL_DIR))
    p.add_argument(
        "--seed", type=int, default=None, help="corpus seed (default: the model's, organism.json)"
    )
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="prompts per group")
    p.add_argument("--record", action="store_true", help="write the rates into organism.json")
    args = p.parse_args(argv)
    cfg, params, tok = load_organism(args.model)
    corpus = organism_corpus(args.model) if args.seed is None else build_corpus(args.seed)
    rates = evaluate_behaviour(cfg, params, tok, corpus, split=args.split, limit=args.limit)
    direction = directional_check(cfg, params, tok, corpus, split=args.split)
    print(json.dumps({**rates, "direction": direction}, indent=2))
    if args.record:
        path = Path(args.model) / "organism.json"
        record = json.loads(path.read_text()) if path.exists() else {}
        record["behaviour"] = {**rates, "limit_per_group": args.limit}
        record["direction"] = direction
        write_text_atomic(path, json.dumps(record, indent=2))


if __name__ == "__main__":
    sys.exit(run_cli(main))
