"""Feature dashboards of a run folder: computed once during the run, saved, rendered by
:mod:`refusal_jax.study.html`.

Files in the run folder (no pickle):

- ``dashboards.safetensors``: per feature ``L{layer}F{index}/<name>`` arrays: ``score``,
  ``rank_layer``, ``rank_global`` (LA-IG attribution), ``cosine`` (decoder row vs the refusal
  direction), ``max/<set>`` [N] (max activation per prompt of each prompt set), ``ctx/<set>/
  {prompt,position,max,acts}`` (top activating prompts with per-token activations),
  ``lens/{promoted,suppressed}_{ids,logits}`` [k]; and ``attribution_layer_max`` [L].
- ``dashboards.json``: the feature list, the prompt sets with their token strings, the logit
  lens token strings and the example completions (base vs this one feature clamped).
- ``run_arrays.safetensors``: ``attribution`` [L, S] (LA-IG attributions averaged over the
  harmful training prompts, the selection score) and ``refusal_direction`` [D], so features can
  be added later (``refusal-jax report RUN --features L:I``) without rerunning LA-IG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from refusal_jax.core.io import load_arrays, read_json, save_arrays_atomic, write_json_atomic
from refusal_jax.core.positions import ContentPositions, position_rule
from refusal_jax.method.dashboards import (
    attribution_ranks,
    feature_activations,
    logit_lens,
    max_per_prompt,
    top_contexts,
)
from refusal_jax.method.features import feature_set, per_sample_feature_set
from refusal_jax.method.interventions import clamp_features
from refusal_jax.method.prompts import decode_responses, encode_prompts, generate_tokens
from refusal_jax.method.selection import decoder_cosines
from refusal_jax.study.subject import load_subject

ARRAYS = "dashboards.safetensors"
META = "dashboards.json"
RUN_ARRAYS = "run_arrays.safetensors"
PROMPT_SETS = ("harmful", "harmless", "jailbreak")


def feature_key(layer: int, index: int) -> str:
    return f"L{int(layer)}F{int(index)}"


def parse_features(spec: str) -> list[tuple[int, int]]:
    """``"L:I,L:I"`` -> [(L, I), ...]; ValueError naming the bad item."""
    out = []
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        try:
            a, b = item.split(":")
            out.append((int(a), int(b)))
        except ValueError:
            raise ValueError(f"--features: {item!r} is not LAYER:INDEX") from None
    return out


def token_strings(tokenizer, ids, mask) -> list[list[str]]:
    """Each prompt's real (unpadded) tokens, decoded one by one."""
    return [
        [tokenizer.decode([int(t)]) for t, m in zip(row, mrow) if m]
        for row, mrow in zip(np.asarray(ids), np.asarray(mask))
    ]


def compute_dashboards(
    params,
    cfg,
    tokenizer,
    saes,
    pairs,
    prompts: dict[str, list[str]],
    direction,
    attribution,
    *,
    clamp_value: float,
    n_contexts: int = 5,
    n_lens: int = 10,
    n_examples: int = 3,
    max_new_tokens: int = 24,
    batch_size: int = 32,
    pad_multiple: int = 8,
    positions: ContentPositions | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """Dashboard data of the features ``pairs`` [(layer, index), ...]: arrays (see the module
    docstring) and JSON metadata. ``prompts`` maps a set name (harmful, harmless, jailbreak) to
    instructions (empty sets are skipped); ``direction`` [D] is the refusal direction,
    ``attribution`` [L, S] the selection score. The example completions take the first
    ``n_examples`` harmful prompts and clamp one feature at a time (multiply by
    ``clamp_value``, as the run's method does), greedy, ``max_new_tokens``. ``positions``: the
    run's position rule (:mod:`refusal_jax.core.positions`); max activations and top contexts
    are taken over its content positions only (None: every real token)."""
    pairs = [(int(a), int(b)) for a, b in pairs]
    n_layers, d_sae = int(saes.W_dec.shape[0]), int(saes.W_dec.shape[-2])
    fs = feature_set(pairs, n_layers, d_sae)
    idx = np.asarray(fs.idx)
    col = {(a, b): int(np.nonzero(idx[a] == b)[0][0]) for a, b in pairs}
    # one padded length for every set (a multiple of pad_multiple): each jitted step compiles once
    sets = {name: list(xs) for name, xs in prompts.items() if xs}
    width = max(encode_prompts(tokenizer, xs, multiple=pad_multiple)[0].shape[1] for xs in
                sets.values()) if sets else pad_multiple  # fmt: skip
    enc = lambda xs: encode_prompts(
        tokenizer, xs, multiple=width, max_length=cfg.max_position_embeddings
    )
    arrays: dict[str, np.ndarray] = {}
    meta: dict = {"features": [list(p) for p in pairs], "sets": {}, "lens": {}, "examples": {}}
    for name, xs in sets.items():
        ids, mask = enc(xs)
        acts = feature_activations(params, cfg, saes, fs, ids, mask, batch_size=batch_size)
        meta["sets"][name] = {"prompts": list(xs), "tokens": token_strings(tokenizer, ids, mask)}
        content = mask if positions is None else np.asarray(positions.mask(ids, mask))
        for a, b in pairs:
            key, x = feature_key(a, b), acts[:, :, a, col[(a, b)]]
            arrays[f"{key}/max/{name}"] = max_per_prompt(x, content)
            for k, v in top_contexts(x, content, n_contexts).items():
                arrays[f"{key}/ctx/{name}/{k}"] = v
    ranks = attribution_ranks(attribution, pairs)
    cos = np.asarray(decoder_cosines(saes, direction))
    dirs = np.stack([np.asarray(saes.W_dec[a, b], np.float32) for a, b in pairs])
    lens = logit_lens(params, cfg, dirs, n_lens)
    for i, (a, b) in enumerate(pairs):
        key = feature_key(a, b)
        for k in ("score", "rank_layer", "rank_global"):
            arrays[f"{key}/{k}"] = ranks[k][i : i + 1]
        arrays[f"{key}/cosine"] = cos[a, b : b + 1].astype(np.float32)
        for k, v in lens.items():
            arrays[f"{key}/lens/{k}"] = v[i]
        meta["lens"][key] = {
            side: [tokenizer.decode([int(t)]) for t in lens[f"{side}_ids"][i]]
            for side in ("promoted", "suppressed")
        }
    arrays["attribution_layer_max"] = ranks["layer_max"]
    harmful = list(prompts.get("harmful") or [])[:n_examples]
    if harmful and n_examples > 0:
        meta["examples"] = example_completions(
            params, cfg, tokenizer, saes, pairs, harmful, clamp_value=clamp_value,
            max_new_tokens=max_new_tokens, batch_size=batch_size, enc=enc,
        )  # fmt: skip
    meta["clamp_value"] = float(clamp_value)
    return arrays, meta


def example_completions(
    params, cfg, tokenizer, saes, pairs, instructions, *, clamp_value, max_new_tokens,
    batch_size, enc,
) -> dict:  # fmt: skip
    """Greedy completions of ``instructions``, base and with each feature of ``pairs`` clamped
    alone (one generation over a per-sample feature set): {key: [{prompt, base, clamped}]}."""
    n_layers, d_sae = int(saes.W_dec.shape[0]), int(saes.W_dec.shape[-2])
    ids, mask = enc(instructions)
    n = len(instructions)
    # one generation: n base rows (an empty feature set clamps nothing) then n rows per feature
    rows = [[] for _ in range(n)] + [[p] for p in pairs for _ in range(n)]
    fs = per_sample_feature_set(rows, n_layers, d_sae)
    patch = clamp_features(saes, fs, clamp_value, mode="multiply")
    k = len(pairs) + 1
    out = decode_responses(
        tokenizer,
        *generate_tokens(
            params, cfg, np.tile(ids, (k, 1)), np.tile(mask, (k, 1)), batch_size=batch_size,
            max_new_tokens=max_new_tokens, patch=patch,
        ),
    )  # fmt: skip
    base, clamped = out[:n], out[n:]
    return {
        feature_key(*p): [
            {"prompt": instructions[j], "base": base[j], "clamped": clamped[i * n + j]}
            for j in range(n)
        ]
        for i, p in enumerate(pairs)
    }


def save_dashboards(folder, arrays: dict, meta: dict) -> None:
    """Write (or merge into) the run folder's dashboard files: features already saved keep
    their arrays unless recomputed; the prompt sets are the run's and must agree."""
    folder = Path(folder)
    old_arrays, old_meta = load_dashboards(folder)
    if old_meta is not None:
        for name, s in meta["sets"].items():
            if name in old_meta["sets"] and old_meta["sets"][name]["prompts"] != s["prompts"]:
                raise ValueError(f"{folder / META}: prompt set {name!r} differs from the run's")
        feats = [tuple(f) for f in old_meta["features"]]
        feats += [tuple(f) for f in meta["features"] if tuple(f) not in feats]
        meta = {
            "features": [list(f) for f in feats],
            "sets": {**old_meta["sets"], **meta["sets"]},
            "lens": {**old_meta["lens"], **meta["lens"]},
            "examples": {**old_meta["examples"], **meta["examples"]},
            "clamp_value": meta.get("clamp_value", old_meta.get("clamp_value")),
        }
        arrays = {**old_arrays, **arrays}
    save_arrays_atomic(folder / ARRAYS, arrays)
    write_json_atomic(folder / META, meta)


def load_dashboards(folder) -> tuple[dict, dict | None]:
    """(arrays, meta) of a run folder's dashboards; ({}, None) when it has none."""
    folder = Path(folder)
    if not (folder / META).exists():
        return {}, None
    if not (folder / ARRAYS).exists():
        raise FileNotFoundError(f"{folder / META} exists but {folder / ARRAYS} is missing")
    return load_arrays(folder / ARRAYS), read_json(folder / META)


def feature_dashboard(arrays: dict, meta: dict, layer: int, index: int) -> dict:
    """One feature's saved dashboard as plain values (for rendering)."""
    key = feature_key(layer, index)
    if f"{key}/score" not in arrays:
        raise KeyError(f"no dashboard for feature {layer}:{index} ({key})")
    get = lambda k: arrays[f"{key}/{k}"]
    sets = {}
    for name, s in meta["sets"].items():
        ctx = []
        for r, p in enumerate(get(f"ctx/{name}/prompt")):
            toks = s["tokens"][int(p)]
            acts = get(f"ctx/{name}/acts")[r][-len(toks) :] if toks else []
            ctx.append(
                {
                    "prompt": int(p),
                    "position": int(get(f"ctx/{name}/position")[r])
                    - (get(f"ctx/{name}/acts").shape[1] - len(toks)),
                    "max": float(get(f"ctx/{name}/max")[r]),
                    "tokens": list(zip(toks, [float(a) for a in acts])),
                }
            )
        sets[name] = {"max": get(f"max/{name}"), "contexts": ctx}
    lens = meta["lens"][key]
    return {
        "key": key,
        "layer": int(layer),
        "index": int(index),
        "score": float(get("score")[0]),
        "rank_layer": int(get("rank_layer")[0]),
        "rank_global": int(get("rank_global")[0]),
        "cosine": float(get("cosine")[0]),
        "sets": sets,
        "promoted": list(zip(lens["promoted"], get("lens/promoted_logits").tolist())),
        "suppressed": list(zip(lens["suppressed"], get("lens/suppressed_logits").tolist())),
        "examples": meta["examples"].get(key, []),
    }


def write_run_dashboards(
    folder, params, cfg, tokenizer, saes, pairs, prompts, direction, attribution, **kw
) -> None:
    """Compute the dashboards of ``pairs`` (:func:`compute_dashboards`, ``kw`` its keyword
    arguments) and save them with the run arrays into ``folder``: what every run folder that
    selects features calls (the demo's pipeline; the experiment scripts)."""
    save_run_arrays(folder, attribution, direction)
    arrays, meta = compute_dashboards(
        params, cfg, tokenizer, saes, pairs, prompts, direction, attribution, **kw
    )
    save_dashboards(folder, arrays, meta)


def add_feature_dashboards(folder, pairs, subject=None, progress=print) -> list[tuple[int, int]]:
    """Compute and save the dashboards of those ``pairs`` the run folder does not have yet;
    returns them. The subject is loaded from the folder's ``subject.json`` (unless given), the
    prompt sets from ``dashboards.json``, the attribution scores and refusal direction from
    ``run_arrays.safetensors`` and the clamp settings from ``report.json``'s config."""
    folder = Path(folder)
    _, meta = load_dashboards(folder)
    if meta is None:
        raise FileNotFoundError(f"{folder / META}: the run saved no dashboards (no prompt sets)")
    have = {tuple(f) for f in meta["features"]}
    todo = [(int(a), int(b)) for a, b in pairs if (int(a), int(b)) not in have]
    todo = list(dict.fromkeys(todo))
    if not todo:
        return []
    for name in ("subject.json", RUN_ARRAYS, "report.json"):
        if subject is not None and name == "subject.json":
            continue
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder / name}: needed to compute new feature dashboards")
    report = read_json(folder / "report.json")
    feature_set(todo, report["model"]["n_layers"], report["sae"]["d_sae"])  # names a bad feature
    if subject is None:
        source = read_json(folder / "subject.json")
        progress(f"loading the subject from {folder / 'subject.json'}: {source}")
        subject = load_subject(**source)
    n_layers, d_sae = int(subject.saes.W_dec.shape[0]), int(subject.saes.W_dec.shape[-2])
    want = (report["model"]["n_layers"], report["sae"]["d_sae"])
    if (n_layers, d_sae) != tuple(want):
        raise ValueError(
            f"{folder / 'subject.json'}: the subject has {n_layers} layers and SAE width "
            f"{d_sae}, report.json {want[0]} and {want[1]}"
        )
    run = load_arrays(folder / RUN_ARRAYS)
    pc = report["config"]
    arrays, new_meta = compute_dashboards(
        subject.params, subject.cfg, subject.tokenizer, subject.saes, todo,
        {name: s["prompts"] for name, s in meta["sets"].items()},
        run["refusal_direction"], run["attribution"], clamp_value=pc["clamp_value"],
        max_new_tokens=pc["max_new_tokens"], batch_size=pc["batch_size"],
        pad_multiple=pc["pad_multiple"],
        positions=position_rule(pc["skip_positions"], subject.tokenizer),
    )  # fmt: skip
    save_dashboards(folder, arrays, new_meta)
    return todo


def save_run_arrays(folder, attribution, direction) -> None:
    save_arrays_atomic(
        Path(folder) / RUN_ARRAYS,
        {
            "attribution": np.asarray(attribution, np.float32),
            "refusal_direction": np.asarray(direction, np.float32),
        },
    )


__all__ = [
    "ARRAYS",
    "add_feature_dashboards",
    "META",
    "PROMPT_SETS",
    "RUN_ARRAYS",
    "compute_dashboards",
    "example_completions",
    "feature_dashboard",
    "feature_key",
    "load_dashboards",
    "parse_features",
    "save_dashboards",
    "save_run_arrays",
    "token_strings",
    "write_run_dashboards",
]
