"""The paper's benchmark (section 4.1): jailbreak and refusal scores of base, AS, cs, act, la,
random and ours on each harmful dataset; capability (CE on harmless rollouts and on plain text)
under each intervention; refusal induction on harmless prompts with the set-clamp sweep.

    python experiments/benchmark.py                          # the organism
    python experiments/benchmark.py --model-dir M --sae-dir S --data-dir D \\
        --classifier-dir converted/HarmBench-Llama-2-13b-cls --text-file wikitext.txt

--protocol paper (default; the reference code's): direction, LA-IG and feature sets per
evaluation dataset, from its own prompts, ours and la clamped with one set per prompt;
--protocol heldout: one direction and global sets from the training prompts for every dataset.

On the organism the harmful "datasets" are its held-out plain requests and its held-out
designed-to-fail jailbreak wrappers (which it refuses); plain text is its held-out prose. On a
real model: harmbench_test, jailbreakbench and advbench (first --n-prompts of each), harmless
evaluation prompts from splits/harmless_test, plain text one paragraph per line of --text-file
(default: the harmless evaluation prompts' raw text, without the chat template).

Writes ``results.json`` (schema in experiments/README.md), ``jailbreak.png`` and
``induction.png``; ``--resume RUN`` reuses cached feature sets, responses and scores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from refusal_jax.cli.common import (
    add_classifier_arguments,
    add_laig_arguments,
    add_run_arguments,
    add_subject_arguments,
    classifier_from_args,
    number_list,
    open_run_from_args,
    subject_from_args,
)
from refusal_jax.core.errors import ArgumentParser, UsageError, run_cli
from refusal_jax.core.io import save_figure_atomic, write_json_atomic
from refusal_jax.study.benchmark import PROTOCOLS, BenchmarkConfig, run_benchmark
from refusal_jax.study.data import EVAL_SETS
from refusal_jax.study.html import write_run_report
from refusal_jax.study.pipeline import METHODS, PipelineConfig
from refusal_jax.study.subject import PromptSource


def _organism_data(src: PromptSource, args):
    failing = src.corpus.prompts("test", harmful=True, wrapped=True, succeeds=False)
    return dict(
        harmful_train=src.split("harmful_train", args.n_train),
        harmless_train=src.split("harmless_train", args.n_train),
        datasets={
            "heldout_plain": src.split("harmful_test", args.n_prompts),
            "heldout_failing_wrappers": src.pick(failing, args.n_prompts),
        },
        harmless_eval=src.split("harmless_test", args.n_prompts),
        plain_text=list(src.corpus.plain_test[: args.n_prompts]),
    )


def _real_data(src: PromptSource, args):
    harmless_eval = src.split("harmless_test", args.n_prompts)
    if args.text_file:
        lines = [ln.strip() for ln in Path(args.text_file).read_text().splitlines()]
        plain = [ln for ln in lines if ln][: args.n_prompts]
        if not plain:
            raise UsageError(f"--text-file {args.text_file} has no non-empty lines")
    else:
        plain = harmless_eval
    return dict(
        harmful_train=src.split("harmful_train", args.n_train),
        harmless_train=src.split("harmless_train", args.n_train),
        datasets={name: src.eval_set(name, args.n_prompts) for name in EVAL_SETS},
        harmless_eval=harmless_eval,
        plain_text=plain,
    )


def main(argv=None) -> dict:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_subject_arguments(p)
    add_run_arguments(p)
    p.add_argument("--protocol", choices=PROTOCOLS, default="paper")
    p.add_argument(
        "--n-train", type=int, default=None, help="training prompts of each kind (64; real: 260)"
    )
    p.add_argument("--n-prompts", type=int, default=100, help="per dataset (the paper: 100)")
    add_laig_arguments(p)
    p.add_argument("--best-layer", type=int, default=None, help="default: chosen on training")
    p.add_argument(
        "--max-new-tokens", type=int, default=None, help="default 24 (organism), 256 (real)"
    )
    p.add_argument("--clamp-value", type=float, default=None)
    p.add_argument(
        "--induction-values",
        type=number_list(float),
        default=None,
        help="set-clamp values (default 10,15,20,25,30; organism 0.5,1,2,4,8)",
    )
    add_classifier_arguments(p)
    p.add_argument("--text-file", help="plain text for the CE measurement, one text per line")
    args = p.parse_args(argv)
    subject = subject_from_args(args)
    args.n_train = args.n_train or (64 if subject.organism else 260)
    out, cache = open_run_from_args(args, "benchmark", subject)
    src = subject.prompts(args.seed)
    d = _organism_data(src, args) if subject.organism else _real_data(src, args)
    default_ind = (0.5, 1.0, 2.0, 4.0, 8.0) if subject.organism else (10.0, 15.0, 20.0, 25.0, 30.0)
    max_new = args.max_new_tokens or (24 if subject.organism else 256)
    pc = PipelineConfig(
        best_layer=args.best_layer,
        n_steps=args.n_steps,
        alpha_rule=args.alpha_rule,
        n_candidates=subject.n_candidates,
        clamp_value=subject.clamp_value if args.clamp_value is None else args.clamp_value,
        compliance_prefixes=subject.compliance_prefixes,
        skip_positions=subject.skip_positions,
        max_new_tokens=max_new,
        seed=args.seed,
    )
    bc = BenchmarkConfig(
        pipeline=pc,
        protocol=args.protocol,
        induction_values=tuple(args.induction_values or default_ind),
        n_induction=min(100, args.n_prompts),
    )
    classifier = classifier_from_args(args)
    res = run_benchmark(
        subject.params, subject.cfg, subject.tokenizer, subject.saes, **d, bc=bc,
        cache=cache, classifier=classifier, progress=not args.quiet,
    )  # fmt: skip
    res["subject"] = subject.describe()
    write_json_atomic(out / "results.json", res)
    _plot(res, out)
    write_run_report(out, subject)
    for dname, rows in res["jailbreak"].items():
        print(dname + ": " + ", ".join(f"{m} {rows[m]['jailbreak_rate']:.2f}" for m in METHODS))
    print(f"run folder: {out}")
    return res


def _plot(res, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(METHODS)
    ds = list(res["jailbreak"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    w = 0.8 / len(ds)
    for k, dname in enumerate(ds):
        vals = [res["jailbreak"][dname][m]["jailbreak_rate"] for m in names]
        ax.bar(np.arange(len(names)) + k * w, vals, w, label=dname)
    ax.set_xticks(np.arange(len(names)) + 0.4 - w / 2, names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("jailbreak rate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, out / "jailbreak.png", dpi=120)
    plt.close(fig)
    ind = res["refusal_induction"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(ind["values"], ind["ours"], "o-", label="ours (set)")
    ax.plot(ind["values"], ind["cs"], "s--", label="cs (set)")
    ax.axhline(ind["add_direction"], color="k", ls=":", label="add r at best layer")
    ax.set_xlabel("clamp value c")
    ax.set_ylabel("refusal rate on harmless prompts")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, out / "induction.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(run_cli(main))
