"""Choose the clamp factor c and the F0 size (candidates per layer) on a validation split.

The paper fixes c per model (-3 Gemma-2-2B, -1 Llama-3.1-8B) and F0 at 10 decoder rows per
layer. A new model (or the organism) needs its own values, chosen on prompts that the held-out
evaluation never sees: this script builds the direction and LA-IG attributions from training
prompts, selects F* for every F0 size, clamps with every c and reports, on *validation* prompts,
the jailbreak rate, the harmful refusal rate and the harmless refusal rate. The selected pair
maximises jailbreak minus harmless refusal.

    python experiments/calibrate.py                      # the organism (val split of its corpus)
    python experiments/calibrate.py --model-dir M --sae-dir S --data-dir D   # harmful_val etc.

Writes ``results.json`` ({"grid": [{"n_candidates", "clamp_value", "jailbreak_rate",
"harmful_refusal_rate", "harmless_refusal_rate"}], "best": {...}, "best_layer", "subject"}) and
``calibration.png`` into the run folder. The organism's defaults
(refusal_jax.study.runs.ORGANISM_METHOD) come from this script.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from tqdm.auto import tqdm

from refusal_jax.cli.common import (
    add_run_arguments,
    add_subject_arguments,
    number_list,
    open_run_from_args,
    subject_from_args,
)
from refusal_jax.core.errors import ArgumentParser, run_cli
from refusal_jax.core.io import save_figure_atomic, write_json_atomic
from refusal_jax.method.direction import choose_best_layer, refusal_directions
from refusal_jax.method.interventions import clamp_features
from refusal_jax.method.judges import judge_responses, refusal_token
from refusal_jax.method.prompts import decode_responses, encode_prompts, generate_tokens
from refusal_jax.method.selection import candidate_features, select_features
from refusal_jax.study.html import write_run_report
from refusal_jax.study.pipeline import PipelineConfig, accumulate_attributions
from refusal_jax.study.runs import content_key


def _prompts(subject, args):
    src = subject.prompts(args.seed)
    return (
        src.split("harmful_train", args.n_train),
        src.split("harmless_train", args.n_train),
        src.split("harmful_val", args.n_val),
        src.split("harmless_val", args.n_val),
    )


def main(argv=None) -> dict:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_subject_arguments(p)
    add_run_arguments(p)
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-val", type=int, default=96)
    p.add_argument("--n-features", type=int, default=20)
    p.add_argument("--clamp-values", type=number_list(float), default=(0.0, -0.5, -1.0, -2.0, -3.0))
    p.add_argument(
        "--candidates", type=number_list(int), default=(10, 20, 40, 80), help="F0 sizes per layer"
    )
    p.add_argument("--max-new-tokens", type=int, default=16)
    args = p.parse_args(argv)
    subject = subject_from_args(args)
    params, cfg, tok, saes = subject.params, subject.cfg, subject.tokenizer, subject.saes
    out, cache = open_run_from_args(args, "calibrate", subject)
    h_train, s_train, h_val, s_val = _prompts(subject, args)
    enc = lambda xs: encode_prompts(tok, xs, max_length=cfg.max_position_embeddings)
    rt = refusal_token(tok)
    h, s, hv, sv = enc(h_train), enc(s_train), enc(h_val), enc(s_val)
    directions = refusal_directions(params, cfg, h, s)[0]
    best, _ = choose_best_layer(params, cfg, directions, *h, rt)
    pc = PipelineConfig(skip_positions=subject.skip_positions)
    # cached in the run folder (keys salted by the run's identity): --resume reuses them
    attr = cache.arrays(
        "attribution",
        content_key(best, pc.n_steps),
        lambda: {"attr": accumulate_attributions(
            params, cfg, saes, *h, directions[best], rt, pc, progress=not args.quiet
        )},
    )["attr"]  # fmt: skip
    clamps, sizes = list(args.clamp_values), list(args.candidates)
    gen = lambda ids_mask, patch: decode_responses(
        tok,
        *generate_tokens(params, cfg, *ids_mask, max_new_tokens=args.max_new_tokens, patch=patch),
    )
    grid = []
    bar = tqdm(total=len(clamps) * len(sizes), desc="calibrate", disable=args.quiet)
    for k in sizes:
        fs = select_features(
            attr, args.n_features, candidates=candidate_features(saes, directions[best], k=k)
        )
        for c in clamps:

            def cell(k=k, c=c, fs=fs) -> dict:
                patch = clamp_features(saes, fs, c)
                refused, complied = judge_responses(gen(hv, patch), subject.compliance_prefixes)
                harmless_refused, _ = judge_responses(gen(sv, patch))
                return {
                    "n_candidates": k,
                    "clamp_value": c,
                    "jailbreak_rate": float(complied.mean()),
                    "harmful_refusal_rate": float(refused.mean()),
                    "harmless_refusal_rate": float(harmless_refused.mean()),
                }

            grid.append(cache.json("cell", content_key(best, k, c), cell))
            bar.update(1)
    bar.close()
    best_cell = max(grid, key=lambda g: g["jailbreak_rate"] - g["harmless_refusal_rate"])
    results = {
        "subject": subject.describe(),
        "best_layer": best,
        "n_val": [len(h_val), len(s_val)],
        "grid": grid,
        "best": best_cell,
    }
    write_json_atomic(out / "results.json", results)
    _plot(grid, sizes, clamps, out / "calibration.png")
    write_run_report(out, subject)
    print(
        f"best: F0 {best_cell['n_candidates']} per layer, c = {best_cell['clamp_value']}: "
        f"jailbreak {best_cell['jailbreak_rate']:.2f}, harmless refusal "
        f"{best_cell['harmless_refusal_rate']:.2f} (validation)"
    )
    print(f"run folder: {out}")
    return results


def _plot(grid, sizes, clamps, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.array([[g["jailbreak_rate"] for g in grid if g["n_candidates"] == k] for k in sizes])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(clamps)), [f"{c:g}" for c in clamps])
    ax.set_yticks(range(len(sizes)), [str(k) for k in sizes])
    ax.set_xlabel("clamp factor c")
    ax.set_ylabel("F0 per layer")
    for i in range(len(sizes)):
        for j in range(len(clamps)):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    fig.colorbar(im, label="jailbreak rate (validation)")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(run_cli(main))
