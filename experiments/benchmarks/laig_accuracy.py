"""LA-IG accuracy of the alpha integral: each quadrature rule against a high-N reference.

LA-IG's attributions are A = (f_patch - f_clean) * int_0^1 dm/df(alpha) d alpha (per feature);
``alpha_schedule`` approximates the integral with N nodes. Here, for the rules ``left`` (the
paper), ``midpoint``, ``trapezoid``, ``gauss`` (Gauss-Legendre), ``lobatto`` and ``radau`` (both
ends, the alpha = 1 end; see ``alpha_schedule``) and N in 1..16, the error of
the position-mean attributions [L, B, S] against Gauss-Legendre with N = 256:

* relative L2 error ||A_N - A_ref|| / ||A_ref||;
* F* overlap: |top-20 (layer, feature) pairs of the batch-mean attributions, shared with the
  reference's top 20| / 20.

Three subjects (``--subjects``): the organism (``refusal_jax.organism``, its committed SAEs, 8
harmful test prompts, the difference-in-means direction of the middle layer), the Gemma-2-shaped
weights and JumpReLU SAEs of ``bench_laig.py`` (random init, width 16384, batch 4 x 32 tokens),
and real trained weights: SmolLM2-135M-Instruct from its GGUF (``--smollm2-gguf``, skipped
without it) with random SAEs (:func:`smollm2_subject`).

Every distinct node is evaluated once (a one-node ``la_ig_fn`` call gives g(alpha), the residual
gradient at alpha) and each rule's integral is its weighted sum, so the curves cost one gradient
per distinct node rather than one LA-IG run per (rule, N)::

    cd experiments/benchmarks && python laig_accuracy.py --results RESULTS.md

writes ``laig_accuracy.png`` (error vs the model runs each rule costs) beside this script and
appends the tables.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
from bench_laig import REF, accuracy  # noqa: E402
from benchutil import machine_info  # noqa: E402

HEADING = "## LA-IG accuracy of the alpha integral (issue 17)"
RULES = ("left", "midpoint", "trapezoid", "gauss", "lobatto", "radau")
NS = (1, 2, 3, 4, 6, 8, 10, 16)


def error_curves(params, cfg, saes, ids, mask, direction, refusal_token, positions=None, ns=NS):
    """[{rule, n, rel_l2, overlap}] for every rule and N against the REF integral."""
    import jax.numpy as jnp

    from refusal_jax.method.laig import (
        alpha_schedule,
        feature_attributions,
        la_ig,
        la_ig_fn,
        position_weights,
    )

    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    direction = jnp.asarray(direction, jnp.float32)
    w = position_weights(mask, ids=ids, positions=positions)  # default: skip BOS
    ref_res = la_ig(
        params,
        cfg,
        ids,
        mask,
        direction,
        refusal_token=refusal_token,
        n_steps=REF[1],
        alpha_rule=REF[0],
        alpha_batch=16,
    )
    ref = np.asarray(feature_attributions(ref_res, saes, w))
    jb = ref_res.runs.jailbreak_token
    plan: dict[float, list] = {}
    for rule in RULES:
        for n in ns:
            if rule in ("trapezoid", "lobatto") and n < 2:
                continue
            for a, wt in zip(*alpha_schedule(n, rule), strict=True):
                plan.setdefault(float(a), []).append(((rule, n), float(wt)))
    sums: dict = {}
    one = jnp.ones((1,), jnp.float32)
    inputs = (params, cfg, ids, mask, direction, refusal_token, jb)
    for alpha, uses in sorted(plan.items()):
        g = la_ig_fn(*inputs, jnp.asarray([alpha], jnp.float32), one, uniform=False).grad
        for key, wt in uses:
            sums[key] = sums[key] + wt * g if key in sums else wt * g
    rows = []
    for (rule, n), grad in sorted(sums.items()):
        attr = feature_attributions(ref_res.replace(grad=grad), saes, w)
        rows.append({"rule": rule, "n": n, "runs": runs(rule, n), **accuracy(attr, ref)})
    return rows, len(plan)


def runs(rule: str, n: int) -> int:
    """Model runs with a backward pass that the rule costs in ``la_ig``: N, less the alpha = 1
    node, which needs none (an alpha = 0 node still costs its backward pass)."""
    from refusal_jax.method.laig import alpha_schedule, quadrature_ends

    return n - int(quadrature_ends(alpha_schedule(n, rule)[0])[1])


def organism_subject(n_prompts: int = 8):
    """(params, cfg, saes, ids, mask, direction, refusal_token, description) of the organism."""
    from refusal_jax.method.direction import refusal_directions
    from refusal_jax.method.judges import refusal_token
    from refusal_jax.method.prompts import encode_prompts
    from refusal_jax.organism import organism_corpus
    from refusal_jax.study.subject import load_subject

    sub = load_subject()
    corpus = organism_corpus()
    harmful = corpus.prompts("train", harmful=True, wrapped=False)[:64]
    harmless = corpus.prompts("train", harmful=False, wrapped=False)[:64]
    r = refusal_directions(
        sub.params,
        sub.cfg,
        encode_prompts(sub.tokenizer, harmful),
        encode_prompts(sub.tokenizer, harmless),
    )[0, sub.cfg.n_layers // 2]
    ids, mask = encode_prompts(sub.tokenizer, corpus.prompts("test", harmful=True)[:n_prompts])
    desc = (
        f"organism: {sub.cfg.n_layers} layers, d_model {sub.cfg.d_model}, its SAEs (width "
        f"{sub.saes.W_enc.shape[-1]}), {n_prompts} harmful test prompts x {ids.shape[1]} tokens, "
        f"direction: difference in means at layer {sub.cfg.n_layers // 2}"
    )
    return sub.params, sub.cfg, sub.saes, ids, mask, r, refusal_token(sub.tokenizer), desc


def gemma_subject(d_sae: int, batch: int, seq: int, folder: Path):
    """The Gemma-2-shaped weights and SAEs of bench_laig.py (saved to ``folder``)."""
    import bench_laig as bl
    import jax.numpy as jnp

    from ports.hf import load_hf
    from refusal_jax import sae as sae_lib

    meta = bl.prepare(folder, argparse.Namespace(batch=batch, seq=seq))
    cfg, params = load_hf(folder)
    arrays = bl.sae_arrays(meta["thresholds"], d_sae)
    scfg = sae_lib.SAEConfig(architecture="jumprelu", d_in=cfg.d_model, d_sae=d_sae)
    saes = sae_lib.SAE(*(jnp.asarray(a) for a in arrays), cfg=scfg)
    ids, mask = bl.batch_inputs(batch, seq)
    desc = (
        f"Gemma-2-shaped (bench_laig.py): {meta['n_params'] / 1e6:.1f}M parameters, JumpReLU "
        f"SAEs of width {d_sae} at all {cfg.n_layers} layers, batch {batch} x {seq} tokens"
    )
    return params, cfg, saes, ids, mask, bl.direction(), bl.REFUSAL_TOKEN, desc


def smollm2_subject(gguf: Path, data: Path, folder: Path, d_sae: int = 4096, n_prompts: int = 8):
    """A real trained chat model: SmolLM2-135M-Instruct (30 layers, d_model 576) converted from
    its GGUF, the difference-in-means direction of 64 harmful / 64 harmless training
    instructions at the middle layer (last position), ``n_prompts`` harmful test instructions in
    its chat template, and random JumpReLU SAEs as in bench_laig.py (unit decoder rows,
    W_enc = W_dec^T, thresholds from each layer's mean residual norm over content positions)."""
    import json

    import bench_laig as bl
    import jax.numpy as jnp

    from ports.gguf import main as gguf_main
    from refusal_jax import sae as sae_lib
    from refusal_jax.core.model import forward
    from refusal_jax.method.direction import refusal_directions
    from refusal_jax.method.judges import refusal_token
    from refusal_jax.method.laig import position_weights
    from refusal_jax.method.prompts import encode_prompts
    from refusal_jax.study.pipeline import PipelineConfig, pipeline_positions
    from refusal_jax.study.subject import load_subject

    gguf_main(["--gguf", str(gguf), "--out", str(folder / "smollm2")])
    sub = load_subject(folder / "smollm2", with_saes=False)
    params, cfg, tok = sub.params, sub.cfg, sub.tokenizer

    def split(name, n):
        rows = json.loads((data / "splits" / f"{name}.json").read_text())
        return [r["instruction"] for r in rows[:n]]

    layer = cfg.n_layers // 2
    r = refusal_directions(
        params,
        cfg,
        encode_prompts(tok, split("harmful_train", 64)),
        encode_prompts(tok, split("harmless_train", 64)),
    )[0, layer]
    ids, mask = encode_prompts(tok, split("harmful_test", n_prompts))
    out = forward(params, cfg, jnp.asarray(ids), jnp.asarray(mask), return_residuals=True)
    positions = pipeline_positions(PipelineConfig(skip_positions=sub.skip_positions), tok)
    content = np.asarray(position_weights(mask, ids=ids, positions=positions)) > 0
    norms = np.linalg.norm(np.asarray(out.resid_post), axis=-1)[:, content].mean(axis=1)
    thr = bl.ACTIVE_Z * norms / np.sqrt(cfg.d_model)
    arrays = bl.sae_arrays(thr, d_sae, d_in=cfg.d_model)
    scfg = sae_lib.SAEConfig(architecture="jumprelu", d_in=cfg.d_model, d_sae=d_sae)
    saes = sae_lib.SAE(*(jnp.asarray(a) for a in arrays), cfg=scfg)
    desc = (
        f"SmolLM2-135M-Instruct (GGUF, real trained weights): {cfg.n_layers} layers, d_model "
        f"{cfg.d_model}, random JumpReLU SAEs of width {d_sae} at every layer, {n_prompts} harmful "
        f"test prompts x {ids.shape[1]} tokens (chat template), direction: difference in means "
        f"at layer {layer}, content positions only"
    )
    return params, cfg, saes, ids, mask, r, refusal_token(tok), positions, desc


def table(rows) -> str:
    ns = sorted({r["n"] for r in rows})
    by = {(r["rule"], r["n"]): r for r in rows}
    out = ["| rule | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
    for rule in RULES:
        cells = []
        for n in ns:  # N nodes (radau and lobatto: N - 1 model runs, see ``runs``)
            r = by.get((rule, n))
            cells.append("-" if r is None else f"{r['rel_l2']:.1e} / {r['overlap']:.2f}")
        out.append(f"| {rule} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(5.5 * len(results), 7), squeeze=False)
    for j, (name, rows) in enumerate(results.items()):
        for rule in RULES:
            rr = sorted((r for r in rows if r["rule"] == rule), key=lambda r: r["n"])
            ns = [max(r["runs"], 0.5) for r in rr]  # radau N = 1 (alpha = 1 only): 0 runs
            axes[0, j].loglog(ns, [max(r["rel_l2"], 1e-9) for r in rr], "o-", label=rule)
            axes[1, j].semilogx(ns, [r["overlap"] for r in rr], "o-", label=rule)
        axes[0, j].set_title(name)
        axes[0, j].set_ylabel(f"rel. L2 error vs {REF[0]} N={REF[1]}")
        axes[1, j].set_ylabel("top-20 F* overlap")
        axes[1, j].set_xlabel("model runs with a backward pass (N; radau, lobatto: N - 1)")
        axes[1, j].set_ylim(0, 1.05)
        for ax in axes[:, j]:
            ax.axvline(10, color="grey", lw=0.5, ls=":")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    import os
    import tempfile

    shared = Path(os.environ.get("REFUSAL_JAX_SHARED", REPO.parent / "shared" / "datasets"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument(
        "--subjects",
        default="organism,gemma,smollm2",
        help="comma-separated subset of organism, gemma (Gemma-2-shaped), smollm2",
    )
    p.add_argument(
        "--smollm2-gguf",
        default=os.environ.get("REFUSAL_JAX_SMOLLM2_GGUF", ""),
        help="SmolLM2-135M-Instruct GGUF (default $REFUSAL_JAX_SMOLLM2_GGUF; see the README's "
        "real-weights checks); the subject is skipped without it",
    )
    p.add_argument(
        "--data-dir",
        default=str(shared / "refusal_direction"),
        help="refusal_direction data (splits/*.json) for SmolLM2's direction and prompts",
    )
    p.add_argument("--png", default=str(HERE / "laig_accuracy.png"))
    p.add_argument("--results", help="append the tables to this Markdown file")
    args = p.parse_args(argv)
    wanted = args.subjects.split(",")
    unknown = set(wanted) - {"organism", "gemma", "smollm2"}
    if unknown:
        p.error(f"unknown subjects {sorted(unknown)}")

    results, lines = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for name in wanted:
            if name == "organism":
                title, subject = "organism", organism_subject()
            elif name == "gemma":
                title = "Gemma-2-shaped"
                subject = gemma_subject(args.d_sae, args.batch, args.seq, Path(tmp))
            else:
                gguf, data = Path(args.smollm2_gguf), Path(args.data_dir)
                if not gguf.is_file() or not (data / "splits").is_dir():
                    print(f"skipped smollm2: no GGUF at {gguf!s} or no splits in {data}")
                    continue
                title = "SmolLM2-135M-Instruct"
                subject = smollm2_subject(gguf, data, Path(tmp))
            *inputs, desc = subject
            rows, n_nodes = error_curves(*inputs)
            results[title] = rows
            lines += [
                f"{desc}; {n_nodes} distinct nodes; cells: rel. L2 error / F* overlap",
                "",
                table(rows),
                "",
            ]
            print("\n".join(lines[-4:]), flush=True)
    plot(results, Path(args.png))
    if args.results:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        text = "\n".join(lines)
        block = f"\n{HEADING}\n\nRun {stamp}:\n\n```\n{machine_info()}\n```\n\n{text}\n"
        with open(args.results, "a") as fh:
            fh.write(block)


if __name__ == "__main__":
    main()
