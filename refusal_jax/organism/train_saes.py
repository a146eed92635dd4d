"""Train the organism's SAEs: one per layer at resid_post, with the project's SAE trainer.

    python -m refusal_jax.organism.train_saes --model-dir refusal_jax/organism/artifacts/model \
        --out refusal_jax/organism/artifacts/saes

Activations come from the organism on its own training corpus (chat prompts with their target
responses, and plain text); all layers train together in one vmapped step (BatchTopK, whose
inference form is JumpReLU with a learned threshold, so sparse clamping is exact). Saved in the
GemmaScope layout ``layer_{l}/width_{w}/average_l0_{n}/params.npz`` with a ``metrics.json`` of
FVU / L0 / dead fraction on held-out (test split) activations.

Two stages (:data:`STAGES`, about 10 minutes on 2 CPU cores): 1200 steps from a random start
(k = 32, LR 1e-3), then 1200 steps of fine-tuning from those SAEs
(:func:`refusal_jax.sae.train.warm_start`) on all 5531 training examples (the first stage: 4000)
with k = 30 and an LR of 3e-4 decaying to 0 (held-out FVU 0.080-0.090 at L0 30.9-31.3).
Fine-tuning keeps the features' identities. On the previous organism, SAEs trained as long from
a random start reached a similar FVU (2400 steps, FVU 0.080-0.089) but split its refusal
differently: clamping their selected features removed the refusal without producing compliance
(demo: ours 0.22), while on the fine-tuned SAEs the method worked (ours 1.00).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ports.sae import load_saes, save_gemmascope
from refusal_jax.core.batching import batches
from refusal_jax.core.errors import ArgumentParser, run_cli
from refusal_jax.core.model import forward
from refusal_jax.core.positions import ContentPositions
from refusal_jax.method.prompts import chat_texts, encode_prompts
from refusal_jax.organism import ARTIFACTS, load_organism, organism_corpus
from refusal_jax.sae import fold_b_dec_into_b_enc, fold_input_scale, stack_saes
from refusal_jax.sae import train as sae_train


def corpus_tokens(tokenizer, split: str, n: int, seed: int = 0, corpus=None):
    """Left-padded token arrays of ``n`` chat examples (prompt + target response) and plain
    texts of a corpus split (default corpus: the committed organism's)."""

    corpus = corpus or organism_corpus()
    rng = random.Random(seed)
    exs = list(corpus.split(split))
    exs = rng.sample(exs, min(n, len(exs)))
    texts = [
        p + ex.response + "<end_of_turn>"
        for p, ex in zip(chat_texts(tokenizer, [ex.instruction for ex in exs]), exs)
    ]
    plain = corpus.plain_train if split == "train" else corpus.plain_test
    texts += list(plain[: max(1, n // 4)])
    return encode_prompts(tokenizer, texts, chat=False)


def held_out_activations(params, cfg, ids, mask, n_tokens: int = 4096, seed: int = 0):
    """resid_post at every layer for non-pad tokens: [L, N, D]."""

    acts = []
    for b_ids, b_mask, n in batches(ids, mask, 32):
        out = forward(params, cfg, b_ids, b_mask, return_residuals=True).resid_post[:, :n]
        valid = np.asarray(b_mask[:n]).astype(bool)
        acts.append(np.asarray(out)[:, valid])
    acts = np.concatenate(acts, axis=1)
    rng = np.random.default_rng(seed)
    pick = rng.choice(acts.shape[1], min(n_tokens, acts.shape[1]), replace=False)
    return acts[:, np.sort(pick)]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One SAE training stage: BatchTopK ``k``, ``steps`` of ``batch_tokens`` activations drawn
    from ``n_sequences`` training chat examples (plus a quarter as many plain texts), peak ``lr``
    and a linear decay over the final ``lr_decay_fraction`` of the steps."""

    k: int = 32
    steps: int = 1200
    lr: float = 1e-3
    lr_decay_fraction: float = 0.0
    n_sequences: int = 4000


# The committed SAEs: a 1200-step run from a random start, then a fine-tuning stage from it with
# more data, a lower LR decaying to 0 and k = 30 (features keep their identities; held-out FVU
# 0.097-0.106 -> about 0.08-0.09, mean L0 just under 32).
STAGES = (Stage(), Stage(k=30, steps=1200, lr=3e-4, lr_decay_fraction=0.5, n_sequences=8000))
# The committed organism SAEs were trained on every real token (its sinks are mild): kept as
# the recipe, so a retrain reproduces them.
ORGANISM_POSITIONS = ContentPositions()


def train_organism_saes(
    model_dir,
    out_dir,
    *,
    d_sae: int = 1024,
    stages: tuple[Stage, ...] = STAGES,
    batch_tokens: int = 1024,
    seed: int = 0,
    ckpt_dir=None,
    init_dir=None,
    progress: bool = True,
) -> dict:
    """Train the SAEs in ``stages`` (each warm-started from the previous one; the first from
    random weights, or from the SAEs in ``init_dir``) and save the result in ``out_dir``
    (replacing SAEs of the same width there) with ``metrics.json``. ``ckpt_dir``: orbax
    checkpoints per stage, so a killed run resumes."""

    if not stages:
        raise ValueError("no training stages")
    cfg, params, tok = load_organism(model_dir)
    corpus = organism_corpus(model_dir)
    init = None if init_dir is None else load_saes(init_dir, cfg.n_layers, str(d_sae))
    t0 = time.perf_counter()
    configs = []
    for i, st in enumerate(stages):
        ids, mask = corpus_tokens(tok, "train", st.n_sequences, seed, corpus)
        source = sae_train.ModelSource(
            params, cfg, (ids, mask), range(cfg.n_layers), batch_tokens, seqs_per_step=32,
            seed=seed, positions=ORGANISM_POSITIONS, outlier_factor=None,
        )  # fmt: skip
        tcfg = sae_train.TrainConfig(
            architecture="batchtopk",
            d_sae=d_sae,
            k=st.k,
            n_steps=st.steps,
            lr=st.lr,
            lr_warmup_steps=50,
            lr_decay_fraction=st.lr_decay_fraction,
            seed=seed,
        )
        configs.append({"n_sequences": st.n_sequences, **dataclasses.asdict(tcfg)})
        ckpt = None if ckpt_dir is None else Path(ckpt_dir) / f"stage_{i}"
        result = sae_train.train_sae(
            source, tcfg, ckpt_dir=ckpt, checkpoint_every=250, progress=progress, init=init
        )
        init = stack_trained(result)
    seconds = time.perf_counter() - t0
    test_ids, test_mask = corpus_tokens(tok, "test", 600, seed + 1, corpus)
    acts = held_out_activations(params, cfg, test_ids, test_mask)
    out_dir = Path(out_dir)
    metrics = {
        "train_seconds": round(seconds, 1),
        "stages": configs,
        "init_from": None if init_dir is None else str(init_dir),
        "held_out_tokens": int(acts.shape[1]),
        "layers": {},
    }
    for layer, sae in result.sae_set().items():
        m = {
            k_: float(v)
            for k_, v in sae_train.reconstruction_metrics(sae, jnp.asarray(acts[layer])).items()
        }
        metrics["layers"][layer] = m
        old = out_dir / f"layer_{layer}" / f"width_{d_sae}"
        if old.exists():
            shutil.rmtree(old)
        save_gemmascope(sae, old / f"average_l0_{round(m['l0'])}")
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2))
    os.replace(tmp, out_dir / "metrics.json")
    return metrics


def stack_trained(result):
    """A training result's SAEs stacked over layers, in the form they are saved in (b_dec folded
    into b_enc, as ``save_gemmascope`` writes them): the next stage starts from exactly what a
    load of the saved SAEs would give."""

    return stack_saes([fold_b_dec_into_b_enc(fold_input_scale(s)) for s in result.saes])


def main(argv=None) -> None:

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-dir", default=str(ARTIFACTS / "model"))
    p.add_argument("--out", default=str(ARTIFACTS / "saes"))
    p.add_argument("--ckpt-dir", default=None, help="orbax checkpoints (resume after a kill)")
    p.add_argument("--d-sae", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--init-from",
        default=None,
        help="SAE folder to fine-tune (then --stage-only 1 runs just the fine-tuning stage)",
    )
    p.add_argument(
        "--stage-only", type=int, default=None, help="run only this stage of STAGES (0 or 1)"
    )
    args = p.parse_args(argv)
    stages = STAGES if args.stage_only is None else (STAGES[args.stage_only],)
    m = train_organism_saes(
        args.model_dir,
        args.out,
        d_sae=args.d_sae,
        stages=stages,
        seed=args.seed,
        ckpt_dir=args.ckpt_dir,
        init_dir=args.init_from,
    )
    for layer, v in m["layers"].items():
        print(f"layer {layer}: FVU {v['fvu']:.3f}  L0 {v['l0']:.1f}  dead {v['dead_fraction']:.2f}")
    print(f"trained in {m['train_seconds']:.0f}s -> {args.out}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
