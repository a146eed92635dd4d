"""Resumable sweeps of LA-IG attribution and generation over large prompt sets, on all devices.

A sweep cuts the (tokenized) prompt set into *shards* of ``shard_size`` prompts and runs each
shard as one jitted call - data parallel over the mesh's ``data`` axis, tensor parallel over its
``model`` axis (parameters and SAEs placed by :mod:`refusal_jax.core.sharding`). Every finished
shard is written at once, atomically, to ``<out>/shards/<kind>-<index>.safetensors``, next to
``<out>/manifest.json`` (what the sweep computes, keyed by a content hash of its inputs: prompts,
settings, ALL bytes of the model's parameters and SAEs (``identity.tree_digest``) with their
structure and configs, the direction, the patch, the algorithm version). Every shard
carries its checksum and the key in its header, checked on read: a damaged or truncated shard is
named in a warning and recomputed. Run it again on the same folder and finished shards are not
recomputed; a folder made for other inputs is refused (``force=True`` recomputes everything). When
all shards exist they are merged into ``<out>/<kind>.safetensors`` in prompt order.

    refusal-jax sweep laig --out runs/sweep1 --n-prompts 512 --shard-size 32
    refusal-jax sweep generate --out runs/gen1 --max-new-tokens 64
    refusal-jax sweep laig --model-dir M --sae-dir S --data-dir D --out runs/s --model-parallel 4

(on the organism by default; ``--model-dir/--sae-dir/--data-dir`` for a real model,
``--model-parallel N`` for tensor parallelism over N devices, the other devices data parallel;
``--multihost`` on every host of a pod or cluster.)

Memory settings (``alpha_batch``, ``remat``) do not change results beyond float32 summation
order and are not part of the key: after an out-of-memory error, rerun the same folder with
``--remat`` or ``--alpha-batch`` and the sweep continues. :func:`oom_guard` turns XLA's
RESOURCE_EXHAUSTED into an :class:`OutOfMemory` error that says what to change;
``auto_shrink=True`` retries a failing shard in halves instead.

Multi-host: every process runs the same sweep on the same inputs; process 0 decides which
shards are missing and writes all files (put ``--out`` on a disk process 0 can write; other
processes return ``results=None``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from refusal_jax.core.errors import check_direction, check_finite
from refusal_jax.core.identity import (
    ALGORITHM_VERSION,
    load_checked_arrays,
    save_checked_arrays,
    tree_digest,
)
from refusal_jax.core.io import load_arrays, read_json, write_json_atomic
from refusal_jax.core.model import check_inputs, forward, generate, n_embeddings
from refusal_jax.core.patches import check_patch_rows, patch_rows
from refusal_jax.core.positions import ContentPositions
from refusal_jax.core.sharding import DATA, is_primary, shard_batch, to_host
from refusal_jax.method.direction import choose_best_layer, refusal_directions
from refusal_jax.method.judges import refusal_token
from refusal_jax.method.laig import (
    ERROR_MODES,
    UNIFORM_RULES,
    alpha_schedule,
    attribute_batch,
    quadrature_ends,
)
from refusal_jax.method.prompts import encode_prompts
from refusal_jax.study.runs import content_key
from refusal_jax.study.subject import PromptSource

KINDS = ("laig", "generate")
# SweepConfig fields that only trade memory for time: not part of a sweep's key.
MEMORY_FIELDS = ("alpha_batch", "remat")


class OutOfMemory(MemoryError):
    """A device ran out of memory; the message says which setting to change."""


def _is_oom(err: BaseException) -> bool:
    return "RESOURCE_EXHAUSTED" in str(err) or "Out of memory" in str(err)


@contextlib.contextmanager
def oom_guard(what: str, advice: str):
    """Re-raise an XLA out-of-memory error as :class:`OutOfMemory` naming ``what`` ran out and
    ``advice`` (which settings to lower)."""
    try:
        yield
    except Exception as err:  # XLA raises JaxRuntimeError / XlaRuntimeError
        if isinstance(err, OutOfMemory) or not _is_oom(err):
            raise
        raise OutOfMemory(f"out of device memory in {what}: {advice}") from err


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """What a sweep computes and how.

    kind: "laig" (position-mean LA-IG feature attributions) or "generate" (greedy tokens).
    shard_size: prompts per shard (one jitted call; a multiple of the data-parallel devices).
    n_steps, alpha_rule, error_mode: LA-IG settings (:func:`refusal_jax.method.laig.la_ig`);
    skip_positions: positions left out of the position mean: an int n (the first n real
      tokens; 1: BOS) or a :class:`refusal_jax.core.positions.ContentPositions`.
    per_prompt: store attributions per prompt [N, L, d_sae]; False stores only their sum over
      prompts [L, d_sae] (what global feature selection needs; small for wide SAEs).
    max_new_tokens: generation length.
    trim_padding: 0 keeps every shard at the padded length of the whole set (one compilation);
      k > 0 drops a shard's leading all-padding columns, keeping its length a multiple of k
      (less work on sets of mixed lengths; one compilation per length).
    alpha_batch, remat: memory settings (:data:`MEMORY_FIELDS`), see :func:`la_ig`.
    """

    kind: str
    shard_size: int = 32
    n_steps: int = 10
    alpha_rule: str = "left"
    error_mode: str = "paper"
    skip_positions: int | ContentPositions = 1
    per_prompt: bool = True
    max_new_tokens: int = 64
    trim_padding: int = 0
    alpha_batch: int | None = None
    remat: bool | str = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown sweep kind {self.kind!r} (one of {KINDS})")
        for name in ("shard_size", "n_steps", "max_new_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"SweepConfig.{name} must be a positive int, got {v!r}")
        if not isinstance(self.trim_padding, int) or self.trim_padding < 0:
            raise ValueError(f"trim_padding must be an int >= 0, got {self.trim_padding!r}")
        if self.alpha_batch is not None and (
            not isinstance(self.alpha_batch, int) or self.alpha_batch < 1
        ):
            raise ValueError(f"alpha_batch must be a positive int or None, got {self.alpha_batch}")
        if self.error_mode not in ERROR_MODES:
            raise ValueError(f"error_mode must be one of {ERROR_MODES}, got {self.error_mode!r}")
        alpha_schedule(self.n_steps, self.alpha_rule)  # unknown rule, too few steps: fail now

    def key_fields(self) -> dict:
        """The fields that determine the results (hashed into the sweep's key)."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if k not in MEMORY_FIELDS}


# ----------------------------------------------------------------------------- fingerprints
def fingerprint(tree) -> str:
    """A digest of a pytree that changes when the model / SAEs / patch change: its structure
    (incl. static configs), every leaf's shape and dtype and ALL of its bytes
    (:func:`refusal_jax.core.identity.tree_digest`)."""
    return tree_digest(tree)


# ----------------------------------------------------------------------------- multi-host
def _broadcast(x: np.ndarray) -> np.ndarray:
    """Process 0's value of ``x`` in every process (identity on one host)."""
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(x))


def _processes_agree(key: str) -> bool:
    if jax.process_count() == 1:
        return True
    from jax.experimental import multihost_utils

    got = np.asarray(multihost_utils.process_allgather(np.frombuffer(key.encode(), np.uint8)))
    return bool((got == got[:1]).all())


# ----------------------------------------------------------------------------- shards
def _pad_rows(a: np.ndarray, n: int) -> np.ndarray:
    if len(a) == n:
        return a
    return np.concatenate([a, np.repeat(a[-1:], n - len(a), 0)])


def _trim(ids: np.ndarray, mask: np.ndarray, multiple: int):
    """Drop leading columns that are padding in every row (length kept a multiple)."""
    if not multiple:
        return ids, mask
    T = ids.shape[1]
    used = np.flatnonzero(mask.any(axis=0))
    need = T - (int(used[0]) if len(used) else T - 1)
    keep = min(T, -(-need // multiple) * multiple)
    return ids[:, T - keep :], mask[:, T - keep :]


_PER_PROMPT = ("attributions", "jailbreak_token", "tokens", "lengths")
_SUMMED = ("attribution_sum", "n_prompts")  # sums over a shard's real prompts


def _laig_shard(params, cfg, saes, ids, mask, n_real, direction, refusal_token, sc):
    rule = sc.skip_positions
    if not isinstance(rule, ContentPositions):
        rule = ContentPositions(prefix_length=int(rule))
    schedule = alpha_schedule(sc.n_steps, sc.alpha_rule)
    quadrature = tuple(jnp.asarray(q) for q in schedule)
    attr, jb, metric = attribute_batch(
        params, cfg, saes, ids, mask, jnp.asarray(direction), jnp.asarray(refusal_token, jnp.int32),
        quadrature, rule, sc.error_mode, sc.alpha_batch, sc.remat, sc.alpha_rule in UNIFORM_RULES,
        quadrature_ends(schedule[0]),
    )  # fmt: skip
    out = {
        "metric": metric,  # [n_steps], summed over the shard's rows (incl. padding rows)
        "jailbreak_token": jb,
    }
    if sc.per_prompt:
        out["attributions"] = jnp.swapaxes(attr, 0, 1)  # [B, L, d_sae]
    else:
        out["attribution_sum"] = attr[:, :n_real].sum(axis=1)  # [L, d_sae], float32
        out["n_prompts"] = np.asarray([n_real], np.int64)  # [1]: safetensors has no scalars
    return to_host(out)


def _generate_shard(params, cfg, ids, mask, patch, sc):

    out = generate(params, cfg, ids, mask, max_new_tokens=sc.max_new_tokens, patch=patch)
    return to_host({"tokens": out.tokens, "lengths": out.lengths})


def _merge_part(key, arrays):
    if key in _PER_PROMPT:
        return np.concatenate(arrays, axis=0)
    if key in _SUMMED:
        return np.sum(np.stack(arrays), axis=0)
    return np.stack(arrays)  # per-shard values (the metric per alpha)


def _check_sweep_inputs(
    params, cfg, ids, mask, sc, saes, direction, refusal_token, patch, mesh
) -> None:
    """Named errors for inputs a sweep of ``sc.kind`` cannot run on (checked once, before any
    shard runs)."""
    if ids.ndim != 2 or ids.shape != mask.shape or len(ids) == 0:
        raise ValueError(f"ids {ids.shape} and mask {mask.shape}: expected equal [N, T], N > 0")
    check_inputs(cfg, ids, mask, "run_sweep", n_embeddings(params, cfg))
    if sc.kind == "laig" and (saes is None or direction is None or refusal_token is None):
        raise ValueError("a laig sweep needs saes, direction and refusal_token")
    if sc.kind == "laig":
        check_direction(direction, cfg.d_model, "run_sweep direction")
    if sc.kind == "laig" and patch is not None:
        raise ValueError("a laig sweep takes no patch (the ablation is LA-IG's own)")
    if mesh is not None and sc.shard_size % mesh.shape[DATA]:
        raise ValueError(
            f"shard_size {sc.shard_size} is not a multiple of the {mesh.shape[DATA]} "
            "data-parallel devices"
        )
    check_patch_rows(patch, len(ids))


def _sweep_key(sc, ids, mask, direction, refusal_token, cfg, params, saes, patch) -> str:
    """The content key of everything that changes a sweep's results (memory settings aside);
    every process of a multi-host sweep must compute the same one."""
    key = content_key(
        sc.key_fields(),
        ids,
        mask,
        direction,
        refusal_token,
        cfg.to_dict() if hasattr(cfg, "to_dict") else repr(cfg),
        fingerprint(params),
        fingerprint(saes) if sc.kind == "laig" else [],
        fingerprint(patch),
        ALGORITHM_VERSION,
    )
    if not _processes_agree(key):
        raise ValueError("the processes of this multi-host sweep were given different inputs")
    return key


def _open_folder(
    out: Path, manifest: dict, shard_paths: list, primary: bool, key: str, force: bool
) -> np.ndarray:
    """Create or reopen a sweep folder: writes the manifest on first use (or when ``force``
    takes over a folder of other inputs), refuses a folder of another key; returns
    [1 + n_shards] int8 (key mismatch, then which shards exist and pass their checksum), the
    primary process's view broadcast to all. A damaged or foreign shard counts as missing."""
    manifest_path = out / "manifest.json"
    status = np.zeros(len(shard_paths) + 1, np.int8)
    old_key = None
    if primary:
        (out / "shards").mkdir(parents=True, exist_ok=True)
        if manifest_path.exists():
            try:
                old_key = read_json(manifest_path).get("key")
            except ValueError:
                old_key = "(unreadable manifest)"
            status[0] = old_key != key and not force
        if not status[0]:
            if old_key != key:  # a new folder, or --force over another sweep: all recomputed
                write_json_atomic(manifest_path, manifest)
            else:
                status[1:] = [
                    p.exists() and load_checked_arrays(p, key) is not None for p in shard_paths
                ]
    status = _broadcast(status)
    if status[0]:
        raise ValueError(
            f"{out} holds a sweep of other inputs or settings (key {old_key} != {key}; "
            "memory settings aside, everything that changes results is keyed): use a new folder "
            "or --force to recompute everything"
        )
    return status


def _oom_advice(sc, b_ids: np.ndarray) -> str:
    """What to change when a shard runs out of memory, phrased as the CLI's flags."""
    advice = [f"lower --shard-size (now {len(b_ids)}, prompts of {b_ids.shape[1]} tokens)"]
    if sc.kind == "laig" and (sc.alpha_batch or 1) > 1:
        advice.append(f"lower --alpha-batch (now {sc.alpha_batch} alpha steps at once)")
    if sc.kind == "laig" and not sc.remat:
        advice.append("pass --remat (recompute layers in the backward pass)")
    advice.append(
        "use --dtype bfloat16, add devices (--model-parallel N splits the model over N), "
        "or pass --auto-shrink to halve failing shards"
    )
    return ", ".join(advice)


def _join_halves(parts: list[dict]) -> dict:
    """One shard's results from those of its halves: per-prompt arrays concatenate; batch sums
    (metric, attribution sums) add up."""
    return {
        k: np.concatenate([p[k] for p in parts])
        if k in _PER_PROMPT
        else sum(np.asarray(p[k]) for p in parts)
        for k in parts[0]
    }


def _merge_shards(shard_paths: list, merged_path: Path, key: str) -> dict:
    """Merge every shard's arrays into one checksummed file (atomic) and return them."""
    parts = [load_checked_arrays(p, key) for p in shard_paths]
    if any(p is None for p in parts):
        bad = [str(q) for q, p in zip(shard_paths, parts) if p is None]
        raise OSError(f"sweep shards changed while merging: {', '.join(bad)}; rerun")
    merged = {k: _merge_part(k, [p[k] for p in parts]) for k in parts[0]}
    save_checked_arrays(merged_path, merged, key)
    return merged


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
    force: bool = False,
) -> dict:
    """Run (or resume) a sweep; returns ``{"done": bool, "computed": [shard indices computed
    now], "n_shards": int, "results": merged arrays or None, "throughput": dict or None}``.

    ``throughput`` (None when nothing was computed now): prompts, shards, seconds, the first
    shard's seconds (it compiles), steady-state ``prompts_per_s`` and, for LA-IG,
    ``forward_equivalents_per_prompt`` (a prompt's LA-IG time over its share of one compiled
    forward pass on a shard; the paper's left N = 10 rule costs about 30).

    ids/mask [N, T] numpy (left padded). ``kind="laig"`` needs ``saes``, ``direction`` and
    ``refusal_token`` and stores position-mean attributions per prompt [N, L, d_sae] (or their
    sum, ``per_prompt=False``), the jailbreak token per prompt and the metric per shard and
    alpha; ``kind="generate"`` stores greedy tokens [N, max_new_tokens] and lengths [N]
    (``patch`` optional; a per-sample patch must be built for the N prompts).
    ``mesh``: shards run data parallel over its ``data`` axis (``shard_size`` must be a
    multiple of it); params/SAEs should already be placed (:mod:`refusal_jax.core.sharding`).
    ``max_new_shards`` stops after that many newly computed shards (a deliberate interruption).
    ``shard_fn(ids, mask) -> dict`` replaces the per-shard computation (tests).
    ``force``: a folder holding a sweep of other inputs is taken over and every shard recomputed
    (default: refused). A damaged, truncated or foreign shard is named in a warning and
    recomputed.
    """
    ids, mask = np.asarray(ids, np.int32), np.asarray(mask, np.int32)
    _check_sweep_inputs(params, cfg, ids, mask, sc, saes, direction, refusal_token, patch, mesh)
    if direction is not None:
        direction = np.asarray(direction, np.float32)
    primary = is_primary()
    out = Path(out_dir)
    key = _sweep_key(sc, ids, mask, direction, refusal_token, cfg, params, saes, patch)
    n_shards = -(-len(ids) // sc.shard_size)
    manifest_path = out / "manifest.json"
    manifest = {
        "key": key,
        "config": dataclasses.asdict(sc),
        "n_prompts": len(ids),
        "n_shards": n_shards,
        "shards": f"shards/{sc.kind}-#####.safetensors",
        "merged": f"{sc.kind}.safetensors",
    }

    def shard_path(i):
        return out / "shards" / f"{sc.kind}-{i:05d}.safetensors"

    status = _open_folder(
        out, manifest, [shard_path(i) for i in range(n_shards)], primary, key, force
    )

    def compute(b_ids, b_mask, b_patch, n_real):
        if shard_fn is not None:
            return shard_fn(b_ids, b_mask)
        if mesh is not None:
            b_ids, b_mask = shard_batch(mesh, b_ids, b_mask)
        else:
            b_ids, b_mask = jnp.asarray(b_ids), jnp.asarray(b_mask)
        if sc.kind == "laig":
            return _laig_shard(
                params, cfg, saes, b_ids, b_mask, n_real, direction, refusal_token, sc
            )
        return _generate_shard(params, cfg, b_ids, b_mask, b_patch, sc)

    def compute_guarded(b_ids, b_mask, b_patch, n_real):
        try:
            with oom_guard(f"a {sc.kind} shard of {len(b_ids)} prompts", _oom_advice(sc, b_ids)):
                return compute(b_ids, b_mask, b_patch, n_real)
        except OutOfMemory:
            unit = 1 if mesh is None else mesh.shape[DATA]
            half = (len(b_ids) // 2) // unit * unit
            if not auto_shrink or half < unit:
                raise
            spans = ((0, half, min(n_real, half)), (half, len(b_ids) - half, max(n_real - half, 0)))
            parts = [
                compute_guarded(
                    b_ids[s : s + size], b_mask[s : s + size], patch_rows(b_patch, s, size), n
                )
                for s, size, n in spans
            ]
            return _join_halves(parts)

    computed = []
    todo = [i for i in range(n_shards) if not status[1 + i]]
    bar = tqdm(
        total=n_shards,
        initial=n_shards - len(todo),
        desc=f"sweep {sc.kind}",
        disable=not (progress and primary),
    )
    timing = []  # (prompts, seconds) of each shard computed now
    for i in todo:
        if max_new_shards is not None and len(computed) >= max_new_shards:
            break
        lo = i * sc.shard_size
        n = min(sc.shard_size, len(ids) - lo)
        b_ids = _pad_rows(ids[lo : lo + n], sc.shard_size)
        b_mask = _pad_rows(mask[lo : lo + n], sc.shard_size)
        b_ids, b_mask = _trim(b_ids, b_mask, sc.trim_padding)
        t0 = time.perf_counter()
        res = compute_guarded(b_ids, b_mask, patch_rows(patch, lo, sc.shard_size), n)
        res = {k: (np.asarray(v)[:n] if k in _PER_PROMPT else v) for k, v in res.items()}
        for k, v in res.items():
            if np.asarray(v).dtype.kind == "f":
                check_finite(v, f"sweep shard {i} ({sc.kind}): {k}")
        if primary:
            save_checked_arrays(shard_path(i), res, key)
        computed.append(i)
        timing.append((n, time.perf_counter() - t0))
        bar.set_postfix_str(f"{n / timing[-1][1]:.2f} prompts/s")
        bar.update(1)
    bar.close()
    done = len(todo) == len(computed)
    merged = None
    if done and primary:
        merged = _merge_shards(
            [shard_path(i) for i in range(n_shards)], out / manifest["merged"], key
        )
        write_json_atomic(manifest_path, manifest | {"complete": True})
    throughput = None
    if timing:
        throughput = _throughput(timing, sc.shard_size)
        if sc.kind == "laig" and shard_fn is None:
            rows = (_pad_rows(a[: sc.shard_size], sc.shard_size) for a in (ids, mask))
            b_ids, b_mask = _trim(*rows, sc.trim_padding)
            if mesh is not None:
                b_ids, b_mask = shard_batch(mesh, b_ids, b_mask)
            per_prompt = _forward_seconds(params, cfg, b_ids, b_mask) / sc.shard_size
            throughput["forward_equivalents_per_prompt"] = 1 / (
                throughput["prompts_per_s"] * per_prompt
            )
    return {
        "done": done,
        "computed": computed,
        "results": merged,
        "n_shards": n_shards,
        "throughput": throughput,
    }


def _throughput(timing: list, shard_size: int) -> dict:
    """prompts/s of the shards computed now: over the shards after the first (steady state, the
    first compiles) when there are several, else over the one."""
    steady = timing[1:] or timing
    return {
        "prompts": sum(n for n, _ in timing),
        "shards": len(timing),
        "shard_size": shard_size,
        "seconds": sum(t for _, t in timing),
        "first_shard_seconds": timing[0][1],
        "prompts_per_s": sum(n for n, _ in steady) / sum(t for _, t in steady),
    }


def _forward_seconds(params, cfg, ids, mask) -> float:
    """Wall time of one compiled forward pass (last-position logits) on ids / mask: the unit of
    "forward-equivalents" (the best of three calls after a first that compiles)."""
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        forward(params, cfg, ids, mask, last_logits_only=True).logits.block_until_ready()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def read_direction(path) -> np.ndarray:
    """A refusal direction file: ``.npy`` or safetensors with a ``direction`` tensor; [D]."""
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).astype(np.float32)
    return load_arrays(path)["direction"].astype(np.float32)


def sweep_direction(
    out, params, cfg, tokenizer, source: PromptSource, n: int, best_layer: int | None = None
) -> np.ndarray:
    """The refusal direction of a sweep, [D]: cached in ``out`` (checked against a key of the
    model's full content, the prompts and the layer; a stale or damaged cache is recomputed),
    else the difference in means over the first ``n`` harmful/harmless train prompts of
    ``source`` at ``best_layer`` (None: chosen by ablation). Multi-host: process 0 reads and
    writes the cache, every process gets the same direction."""
    out = Path(out)
    cache = out / f"direction-n{n}-layer{'auto' if best_layer is None else best_layer}.safetensors"
    harm_prompts = source.split("harmful_train")[:n]
    safe_prompts = source.split("harmless_train")[:n]
    cfg_key = cfg.to_dict() if hasattr(cfg, "to_dict") else repr(cfg)
    key = content_key(
        fingerprint(params), cfg_key, harm_prompts, safe_prompts, best_layer, ALGORITHM_VERSION
    )
    got = load_checked_arrays(cache, key) if is_primary() and cache.exists() else None
    found = np.asarray([got is not None], np.int8)
    if _broadcast(found)[0]:
        d = got["direction"] if is_primary() else np.zeros(cfg.d_model, np.float32)
        return _broadcast(np.asarray(d, np.float32))
    encode = lambda xs: encode_prompts(tokenizer, xs, max_length=cfg.max_position_embeddings)
    harm, safe = encode(harm_prompts), encode(safe_prompts)
    dirs = np.asarray(to_host(refusal_directions(params, cfg, harm, safe)[0]))
    if best_layer is None:
        best_layer, _ = choose_best_layer(params, cfg, dirs, *harm, refusal_token(tokenizer))
    d = _broadcast(np.asarray(dirs[best_layer], np.float32))
    check_direction(d, cfg.d_model, f"sweep refusal direction at layer {best_layer}")
    if is_primary():
        out.mkdir(parents=True, exist_ok=True)
        save_checked_arrays(cache, {"direction": d, "layer": np.int64(best_layer)}, key)
    return d


__all__ = [
    "KINDS",
    "MEMORY_FIELDS",
    "OutOfMemory",
    "SweepConfig",
    "fingerprint",
    "oom_guard",
    "read_direction",
    "sweep_direction",
    "run_sweep",
]
