"""Resumable sweeps of LA-IG attribution and generation over large prompt sets, on all devices.

A sweep cuts the (tokenized) prompt set into *shards* of ``shard_size`` prompts, runs each shard
as one jitted call - data parallel over the mesh's ``data`` axis when a mesh is given, parameters
and SAEs placed by :mod:`refusal_jax.sharding` - and writes every finished shard to
``<out>/shards/<kind>-<index>.safetensors`` atomically, next to ``<out>/manifest.json`` (what the
sweep computes, keyed by a content hash of its inputs). Run it again on the same folder and
finished shards are read back, not recomputed; a folder made for other inputs is refused. When
all shards exist they are merged into ``<out>/<kind>.safetensors`` in prompt order.

    python -m refusal_jax.sweep laig --out runs/sweep1 --n-prompts 512 --shard-size 32
    python -m refusal_jax.sweep generate --out runs/gen1 --max-new-tokens 64

(on the organism by default; ``--model-dir/--sae-dir/--data-dir`` for a real model, ``--model-
parallel N`` for tensor parallelism over N devices, the rest data parallel).

Out of memory: :func:`oom_guard` turns XLA's RESOURCE_EXHAUSTED into a :class:`OutOfMemory`
error that says what to change; ``auto_shrink=True`` retries a failing shard in halves instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from refusal_jax.runs import content_key, load_arrays, save_arrays_atomic, write_json_atomic


class OutOfMemory(MemoryError):
    """A device ran out of memory; the message says which setting to change."""


def _is_oom(err: BaseException) -> bool:
    return "RESOURCE_EXHAUSTED" in str(err) or "Out of memory" in str(err)


@contextlib.contextmanager
def oom_guard(what: str, advice: str):
    """Re-raise an XLA out-of-memory error as :class:`OutOfMemory` naming ``what`` ran out and
    ``advice`` (which flags to lower)."""
    try:
        yield
    except Exception as err:  # XLA raises JaxRuntimeError / XlaRuntimeError
        if isinstance(err, OutOfMemory) or not _is_oom(err):
            raise
        raise OutOfMemory(f"out of device memory in {what}: {advice}") from err


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    kind: str  # "laig" or "generate"
    shard_size: int = 32
    # laig
    n_steps: int = 10
    error_mode: str = "paper"
    skip_positions: int = 1
    alpha_batch: int | None = None
    remat: bool = False
    # generate
    max_new_tokens: int = 64


def _pad_rows(a: np.ndarray, n: int) -> np.ndarray:
    if len(a) == n:
        return a
    return np.concatenate([a, np.repeat(a[-1:], n - len(a), 0)])


def _laig_shard(params, cfg, saes, ids, mask, direction, refusal_token, sc: SweepConfig):
    from refusal_jax.laig import feature_attributions, la_ig, position_weights

    res = la_ig(
        params,
        cfg,
        ids,
        mask,
        direction,
        refusal_token=refusal_token,
        n_steps=sc.n_steps,
        error_mode=sc.error_mode,
        alpha_batch=sc.alpha_batch,
        remat=sc.remat,
    )
    attr = feature_attributions(res, saes, position_weights(mask, skip=sc.skip_positions))
    return {
        "attributions": np.asarray(attr).transpose(1, 0, 2),  # [B, L, d_sae]
        "metric": np.asarray(res.metric),  # [n_steps], summed over the (padded) shard batch
        "jailbreak_token": np.asarray(res.runs.jailbreak_token),
    }


def _generate_shard(params, cfg, ids, mask, patch, sc: SweepConfig):
    from refusal_jax.model import generate

    out = generate(params, cfg, ids, mask, max_new_tokens=sc.max_new_tokens, patch=patch)
    return {"tokens": np.asarray(out.tokens), "lengths": np.asarray(out.lengths)}


def run_sweep(
    params,
    cfg,
    ids,
    mask,
    out_dir,
    sc: SweepConfig,
    *,
    saes=None,
    direction=None,
    refusal_token: int | None = None,
    patch=None,
    mesh=None,
    max_new_shards: int | None = None,
    auto_shrink: bool = False,
    progress: bool = True,
    shard_fn: Callable | None = None,
) -> dict:
    """Run (or resume) a sweep; returns ``{"done": bool, "computed": [shard indices computed
    now], "results": merged arrays or None}``.

    ids/mask [N, T] numpy (left padded). ``kind="laig"`` needs ``saes``, ``direction`` and
    ``refusal_token`` and stores per-prompt position-mean attributions [N, L, d_sae]; ``kind=
    "generate"`` stores greedy tokens [N, max_new_tokens] and lengths (``patch`` optional, global
    patches only). ``mesh``: shards run data parallel over its ``data`` axis (``shard_size`` must
    be a multiple of it); params/SAEs should already be placed (:mod:`refusal_jax.sharding`).
    ``max_new_shards`` stops after that many newly computed shards (a deliberate interruption).
    ``shard_fn`` replaces the per-shard computation (tests).
    """
    from refusal_jax.sharding import DATA, shard_batch

    ids, mask = np.asarray(ids, np.int32), np.asarray(mask, np.int32)
    if ids.ndim != 2 or ids.shape != mask.shape or len(ids) == 0:
        raise ValueError(f"ids {ids.shape} and mask {mask.shape}: expected equal [N, T], N > 0")
    if sc.kind not in ("laig", "generate"):
        raise ValueError(f"unknown sweep kind {sc.kind!r} (laig or generate)")
    if sc.kind == "laig" and (saes is None or direction is None or refusal_token is None):
        raise ValueError("a laig sweep needs saes, direction and refusal_token")
    if mesh is not None and sc.shard_size % mesh.shape[DATA]:
        raise ValueError(
            f"shard_size {sc.shard_size} is not a multiple of the {mesh.shape[DATA]} "
            "data-parallel devices"
        )
    out = Path(out_dir)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    key = content_key(
        dataclasses.asdict(sc),
        ids,
        mask,
        None if direction is None else np.asarray(direction, np.float32),
        refusal_token,
    )
    n_shards = -(-len(ids) // sc.shard_size)
    manifest_path = out / "manifest.json"
    manifest = {
        "key": key,
        "config": dataclasses.asdict(sc),
        "n_prompts": len(ids),
        "n_shards": n_shards,
    }
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("key") != key:
            raise ValueError(
                f"{out} holds a sweep of other inputs or settings (key {old.get('key')} != "
                f"{key}): use a new --out folder"
            )
    else:
        write_json_atomic(manifest_path, manifest)

    def shard_path(i):
        return out / "shards" / f"{sc.kind}-{i:05d}.safetensors"

    def compute(b_ids, b_mask):
        if shard_fn is not None:
            return shard_fn(b_ids, b_mask)
        if mesh is not None:
            b_ids, b_mask = shard_batch(mesh, b_ids, b_mask)
        else:
            b_ids, b_mask = jnp.asarray(b_ids), jnp.asarray(b_mask)
        if sc.kind == "laig":
            return _laig_shard(
                params, cfg, saes, b_ids, b_mask, jnp.asarray(direction), refusal_token, sc
            )
        return _generate_shard(params, cfg, b_ids, b_mask, patch, sc)

    def compute_guarded(b_ids, b_mask):
        advice = (
            f"lower --shard-size (now {len(b_ids)})"
            + (", pass --alpha-batch (alpha steps at once) or --remat" if sc.kind == "laig" else "")
            + ", use bfloat16 weights, or add devices (--model-parallel for a model that does "
            "not fit)"
        )
        try:
            with oom_guard(f"a {sc.kind} shard of {len(b_ids)} prompts", advice):
                return compute(b_ids, b_mask)
        except OutOfMemory:
            unit = 1 if mesh is None else mesh.shape[DATA]
            half = (len(b_ids) // 2) // unit * unit
            if not auto_shrink or half < unit:
                raise
            parts = [compute_guarded(b_ids[:half], b_mask[:half])]
            parts.append(compute_guarded(b_ids[half:], b_mask[half:]))
            # per-prompt arrays concatenate; batch sums (the LA-IG metric) add up
            return {
                k: np.concatenate([p[k] for p in parts])
                if k in _PER_PROMPT
                else sum(p[k] for p in parts)
                for k in parts[0]
            }

    computed = []
    todo = [i for i in range(n_shards) if not shard_path(i).exists()]
    bar = tqdm(
        total=n_shards, initial=n_shards - len(todo), desc=f"sweep {sc.kind}", disable=not progress
    )
    for i in todo:
        if max_new_shards is not None and len(computed) >= max_new_shards:
            break
        lo = i * sc.shard_size
        n = min(sc.shard_size, len(ids) - lo)
        b_ids = _pad_rows(ids[lo : lo + n], sc.shard_size)
        b_mask = _pad_rows(mask[lo : lo + n], sc.shard_size)
        t0 = time.perf_counter()
        res = compute_guarded(b_ids, b_mask)
        res = {k: (v[:n] if k in _PER_PROMPT else v) for k, v in res.items()}
        save_arrays_atomic(shard_path(i), res)
        computed.append(i)
        bar.set_postfix_str(f"{n / (time.perf_counter() - t0):.2f} prompts/s")
        bar.update(1)
    bar.close()
    done = all(shard_path(i).exists() for i in range(n_shards))
    merged = None
    if done:
        parts = [load_arrays(shard_path(i)) for i in range(n_shards)]
        merged = {k: _merge_part(k, [p[k] for p in parts]) for k in parts[0]}
        save_arrays_atomic(out / f"{sc.kind}.safetensors", merged)
    return {"done": done, "computed": computed, "results": merged, "n_shards": n_shards}


_PER_PROMPT = ("attributions", "jailbreak_token", "tokens", "lengths")


def _merge_part(key, arrays):
    if key in _PER_PROMPT:
        return np.concatenate(arrays, axis=0)
    return np.stack(arrays)  # per-shard values (e.g. the metric per alpha)


# ----------------------------------------------------------------------------- CLI
def main(argv=None) -> dict:
    from refusal_jax.runs import add_subject_arguments, load_subject

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("kind", choices=("laig", "generate"))
    add_subject_arguments(p)
    p.add_argument("--out", required=True, help="sweep folder (rerun with the same to resume)")
    p.add_argument("--n-prompts", type=int, default=None, help="first N harmful prompts")
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--n-steps", type=int, default=10)
    p.add_argument("--alpha-batch", type=int, default=None)
    p.add_argument("--remat", action="store_true")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--model-parallel", type=int, default=1, help="devices per model replica")
    p.add_argument("--auto-shrink", action="store_true", help="halve a shard on OOM")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    from refusal_jax.direction import refusal_directions
    from refusal_jax.pipeline import refusal_token
    from refusal_jax.prompts import encode_prompts
    from refusal_jax.sharding import make_mesh, shard_params, shard_saes

    subject = load_subject(args)
    cfg, params, tok, saes = subject.cfg, subject.params, subject.tokenizer, subject.saes
    harmful, harmless = _sweep_prompts(subject, args)
    mesh = make_mesh(model=args.model_parallel)
    params, saes = shard_params(params, cfg, mesh), shard_saes(saes, mesh)
    enc = lambda xs: encode_prompts(tok, xs, max_length=cfg.max_position_embeddings)
    ids, mask = enc(harmful)
    sc = SweepConfig(
        kind=args.kind,
        shard_size=args.shard_size,
        n_steps=args.n_steps,
        skip_positions=subject.skip_positions,
        alpha_batch=args.alpha_batch,
        remat=args.remat,
        max_new_tokens=args.max_new_tokens,
    )
    direction, rt = None, None
    if args.kind == "laig":
        from refusal_jax.pipeline import choose_best_layer

        rt = refusal_token(tok)
        h, s = (ids, mask), enc(harmless)
        dirs = refusal_directions(params, cfg, h, s)[0]
        best, _ = choose_best_layer(params, cfg, dirs, *h, rt)
        direction = np.asarray(dirs[best])
    res = run_sweep(
        params,
        cfg,
        ids,
        mask,
        args.out,
        sc,
        saes=saes,
        direction=direction,
        refusal_token=rt,
        mesh=mesh,
        auto_shrink=args.auto_shrink,
        progress=not args.quiet,
    )
    print(
        f"{res['n_shards']} shards ({len(res['computed'])} computed now) on "
        f"{mesh.shape['data']} x {mesh.shape['model']} devices -> {args.out}"
    )
    return res


def _sweep_prompts(subject, args):
    n = args.n_prompts
    if subject.organism:
        from refusal_jax.organism.corpus import build_corpus

        corpus = build_corpus(seed=0)
        harmful = corpus.prompts("train", harmful=True, wrapped=False)[:n]
        harmless = corpus.prompts("train", harmful=False, wrapped=False)[:64]
        return harmful, harmless
    from refusal_jax import data

    return data.split(args.data_dir, "harmful_train", n), data.split(
        args.data_dir, "harmless_train", 64
    )


__all__ = ["OutOfMemory", "SweepConfig", "main", "oom_guard", "run_sweep"]

if __name__ == "__main__":
    main(sys.argv[1:])
    jax.effects_barrier()
