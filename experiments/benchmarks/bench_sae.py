"""SAE throughput on CPU at a GemmaScope-like shape (d_in 2304, width 16384), float32.

- training: tokens/s of one jitted optimizer step (JumpReLU and TopK) on random activations;
- inference: tokens/s of encode (full d_sae matmul), reconstruct, and encode_features for a
  20-feature subset (the sparse path used by clamping).

Usage: python experiments/benchmarks/bench_sae.py [--d-in 2304 --d-sae 16384 --batch 1024]
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from refusal_jax import sae as sae_lib
from refusal_jax.sae import train as sae_train


class _RandomSource:
    def __init__(self, d_in, batch, seed=0):
        self.n_layers, self.d_in, self.batch_size = 1, d_in, batch
        self._x = np.random.default_rng(seed).normal(size=(1, batch, d_in)).astype(np.float32)

    def batch(self, step):
        return self._x


def _time(fn, runs):
    jax.block_until_ready(fn())  # compile + warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times)), float(np.min(times))


def bench_train(arch, d_in, d_sae, batch, runs):
    kw = {"k": 64} if arch == "topk" else {}
    tcfg = sae_train.TrainConfig(
        architecture=arch, d_sae=d_sae, n_steps=10**6, norm_batches=1, **kw
    )
    src = _RandomSource(d_in, batch)
    states = sae_train.init_states(src, tcfg)
    x = jnp.asarray(src.batch(0))
    holder = {"s": states, "i": 0}

    def step():
        holder["s"], m = sae_train.train_step(holder["s"], x, jnp.int32(holder["i"]), tcfg)
        holder["i"] += 1
        return m.loss

    med, best = _time(step, runs)
    return batch / med, med, best


def bench_encode(d_in, d_sae, batch, runs):
    rng = np.random.default_rng(1)
    cfg = sae_lib.SAEConfig("jumprelu", d_in, d_sae)
    sae = sae_lib.SAE(
        W_enc=jnp.asarray(rng.normal(0, 0.02, (d_in, d_sae)), jnp.float32),
        b_enc=jnp.zeros(d_sae),
        W_dec=jnp.asarray(rng.normal(0, 0.02, (d_sae, d_in)), jnp.float32),
        b_dec=jnp.zeros(d_in),
        threshold=jnp.full((d_sae,), 0.05),
        cfg=cfg,
    )
    x = jnp.asarray(rng.normal(size=(batch, d_in)), jnp.float32)
    idx = jnp.asarray(rng.choice(d_sae, 20, replace=False))
    enc = jax.jit(sae_lib.encode)
    rec = jax.jit(sae_lib.reconstruct)
    sub = jax.jit(sae_lib.encode_features)
    out = {}
    for name, fn in (
        ("encode", lambda: enc(sae, x)),
        ("reconstruct", lambda: rec(sae, x)),
        ("encode_features[20]", lambda: sub(sae, x, idx)),
    ):
        med, best = _time(fn, runs)
        out[name] = (batch / med, med, best)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--d-in", type=int, default=2304)
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--batch", type=int, default=1024, help="tokens per training step")
    p.add_argument("--encode-batch", type=int, default=4096)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    print(
        f"python {platform.python_version()}, jax {jax.__version__} ({jax.devices()[0]}), float32; "
        f"d_in {a.d_in}, d_sae {a.d_sae}; median (min) of {a.runs} runs after compile"
    )
    for arch in ("jumprelu", "topk"):
        tps, med, best = bench_train(arch, a.d_in, a.d_sae, a.batch, a.runs)
        extra = " (k 64, AuxK)" if arch == "topk" else " (L0 + STE)"
        print(
            f"train {arch}{extra}, {a.batch} tokens/step: {med:.3f} s/step ({best:.3f}) "
            f"-> {tps:,.0f} tokens/s"
        )
    for name, (tps, med, best) in bench_encode(a.d_in, a.d_sae, a.encode_batch, a.runs).items():
        print(
            f"{name}, {a.encode_batch} tokens: {med * 1e3:.1f} ms ({best * 1e3:.1f}) "
            f"-> {tps:,.0f} tokens/s"
        )


if __name__ == "__main__":
    main()
