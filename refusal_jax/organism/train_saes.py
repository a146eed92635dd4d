"""Train the organism's SAEs: one per layer at resid_post, with the project's SAE trainer.

    python -m refusal_jax.organism.train_saes --model-dir refusal_jax/organism/artifacts/model \
        --out refusal_jax/organism/artifacts/saes

Activations come from the organism on its own training corpus (chat prompts with their target
responses, and plain text); all layers train together in one vmapped step (BatchTopK, whose
inference form is JumpReLU with a learned threshold, so sparse clamping is exact). Saved in the
GemmaScope layout ``layer_{l}/width_{w}/average_l0_{n}/params.npz`` with a ``metrics.json`` of
FVU / L0 / dead fraction on held-out (test split) activations.

The defaults reproduce the committed SAEs (held-out FVU 0.097-0.106 at L0 ~32). Trained longer
on more data (``--steps 2400 --lr-decay-fraction 0.3 --n-sequences 8000 --k 30``, 10 min) they
reconstruct better (held-out FVU 0.080-0.089 at L0 30.6-31.3), but on those SAEs clamping the
selected features removes the organism's refusal without making it comply (demo: ours jailbreak
0.22; best on the validation grid 0.65), so the committed set is the shorter run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from refusal_jax.prompts import chat_texts, encode_prompts


def corpus_tokens(tokenizer, split: str, n: int, seed: int = 0, corpus=None):
    """Left-padded token arrays of ``n`` chat examples (prompt + target response) and plain
    texts of a corpus split."""
    from refusal_jax.organism.corpus import build_corpus

    corpus = corpus or build_corpus(seed=0)
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
    from refusal_jax.direction import batches
    from refusal_jax.model import forward

    acts = []
    for b_ids, b_mask, n in batches(ids, mask, 32):
        out = forward(params, cfg, b_ids, b_mask, return_residuals=True).resid_post[:, :n]
        valid = np.asarray(b_mask[:n]).astype(bool)
        acts.append(np.asarray(out)[:, valid])
    acts = np.concatenate(acts, axis=1)
    rng = np.random.default_rng(seed)
    pick = rng.choice(acts.shape[1], min(n_tokens, acts.shape[1]), replace=False)
    return acts[:, np.sort(pick)]


def train_organism_saes(
    model_dir,
    out_dir,
    *,
    d_sae: int = 1024,
    k: int = 32,
    steps: int = 1200,
    lr_decay_fraction: float = 0.0,
    n_sequences: int = 4000,
    batch_tokens: int = 1024,
    seed: int = 0,
    ckpt_dir=None,
    progress: bool = True,
) -> dict:
    from ports.sae import save_gemmascope
    from refusal_jax import sae_train
    from refusal_jax.organism import load_organism

    cfg, params, tok = load_organism(model_dir)
    ids, mask = corpus_tokens(tok, "train", n_sequences, seed)
    source = sae_train.ModelSource(
        params, cfg, (ids, mask), range(cfg.n_layers), batch_tokens, seqs_per_step=32, seed=seed
    )
    tcfg = sae_train.TrainConfig(
        architecture="batchtopk",
        d_sae=d_sae,
        k=k,
        n_steps=steps,
        lr=1e-3,
        lr_warmup_steps=50,
        lr_decay_fraction=lr_decay_fraction,
        seed=seed,
    )
    t0 = time.perf_counter()
    result = sae_train.train_sae(
        source, tcfg, ckpt_dir=ckpt_dir, checkpoint_every=250, progress=progress
    )
    seconds = time.perf_counter() - t0
    test_ids, test_mask = corpus_tokens(tok, "test", 600, seed + 1)
    acts = held_out_activations(params, cfg, test_ids, test_mask)
    out_dir = Path(out_dir)
    metrics = {
        "train_seconds": round(seconds, 1),
        "train_config": dataclasses.asdict(tcfg),
        "held_out_tokens": int(acts.shape[1]),
        "layers": {},
    }
    for layer, sae in result.sae_set().items():
        m = {
            k_: float(v)
            for k_, v in sae_train.reconstruction_metrics(sae, jnp.asarray(acts[layer])).items()
        }
        metrics["layers"][layer] = m
        folder = out_dir / f"layer_{layer}" / f"width_{d_sae}" / f"average_l0_{round(m['l0'])}"
        save_gemmascope(sae, folder)
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2))
    os.replace(tmp, out_dir / "metrics.json")
    return metrics


def main(argv=None) -> None:
    from refusal_jax.organism import ARTIFACTS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-dir", default=str(ARTIFACTS / "model"))
    p.add_argument("--out", default=str(ARTIFACTS / "saes"))
    p.add_argument("--ckpt-dir", default=None, help="orbax checkpoints (resume after a kill)")
    p.add_argument("--d-sae", type=int, default=1024)
    p.add_argument("--k", type=int, default=32, help="BatchTopK k (mean L0 in training)")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument(
        "--lr-decay-fraction", type=float, default=0.0, help="final share of steps with LR decay"
    )
    p.add_argument(
        "--n-sequences", type=int, default=4000, help="training chat examples (at most the split)"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    m = train_organism_saes(
        args.model_dir,
        args.out,
        d_sae=args.d_sae,
        k=args.k,
        steps=args.steps,
        lr_decay_fraction=args.lr_decay_fraction,
        n_sequences=args.n_sequences,
        seed=args.seed,
        ckpt_dir=args.ckpt_dir,
    )
    for layer, v in m["layers"].items():
        print(f"layer {layer}: FVU {v['fvu']:.3f}  L0 {v['l0']:.1f}  dead {v['dead_fraction']:.2f}")
    print(f"trained in {m['train_seconds']:.0f}s -> {args.out}")


if __name__ == "__main__":
    main()
