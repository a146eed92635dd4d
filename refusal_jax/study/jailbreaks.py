"""Jailbreak analysis (section 4.3): how jailbreaks move harm and refusal features.

Following the reference code (notebooks/wildjailbreak.ipynb of wj210/refusal_sae):

- *Refusal features* R: one global set, the paper's features shared by every harm category
  (:func:`refusal_jax.study.categories.shared_features`), or F* of the training prompts.
- *Per-prompt features*: F*_i, the top LA-IG features (within F0) of prompt i, attributed on
  the prompt the model refuses (the plain request). Its *harm features* are F*_i - R and its
  refusal features F*_i & R (:func:`split_features`).

Measures, all relative drops ``(before - after) / before`` per feature over the features active
(non-zero) before, averaged over features and then prompts:

- :func:`pair_drops`: plain (refused) -> adversarial version of the same request. Harm features
  are averaged over the prompt's tokens, refusal features over its last 5 tokens (the end of the
  chat template, where the model decides). The reference finds for Gemma-2-2B jailbreaks
  dropping harm 0.49 and refusal 0.73, failed jailbreaks 0.30 / 0.18.
- :func:`suffix_analysis`: for requests that an adversarial suffix jailbreaks, the drop of the
  refusal features (those at or after the first harm-feature layer) from the plain request to
  request + suffix (reference: 0.72), and, on the plain request, from clamping its harm features
  from their first strong position onward (reference: 0.45): harm features upstream drive the
  refusal features that the suffix suppresses.
- :func:`suffix_word_effects`: the suffix added word by word; the word that adds most to the
  suppression is the suffix's most suppressive word (reference: "fictional" in 39 of 85).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from refusal_jax.core.batching import batches
from refusal_jax.method.dashboards import feature_activations
from refusal_jax.method.features import FeatureSet, feature_set, per_sample_feature_set
from refusal_jax.method.interventions import clamp_features
from refusal_jax.method.laig import la_ig, subset_attributions
from refusal_jax.method.prompts import encode_prompts
from refusal_jax.method.selection import candidate_features, select_features
from refusal_jax.study.pipeline import accumulate_attributions

LAST_K = 5  # refusal features are read over the last 5 prompt tokens (the reference's choice)


# ----------------------------------------------------------------------------- activations
def sequence_mean(acts, mask) -> np.ndarray:
    """Mean over a prompt's real tokens: [N, T, ...] -> [N, ...]."""
    m = np.asarray(mask, np.float32).reshape(np.shape(mask) + (1,) * (np.ndim(acts) - 2))
    return (np.asarray(acts) * m).sum(1) / np.maximum(m.sum(1), 1)


def last_tokens_mean(acts, k: int = LAST_K) -> np.ndarray:
    """Mean over the last ``k`` tokens (left padding: they are real tokens): [N, T, ...] ->
    [N, ...]."""
    return np.asarray(acts)[:, -k:].mean(1)


def relative_drop(before, after, valid=None) -> np.ndarray:
    """Per prompt, the mean over features active before (``before > 0``, and ``valid``) of
    ``(before - after) / before``: [N, ...features] -> [N] (NaN where no feature is active)."""
    before = np.asarray(before, np.float64).reshape(len(before), -1)
    after = np.asarray(after, np.float64).reshape(len(after), -1)
    active = before > 0
    if valid is not None:
        active &= np.asarray(valid, bool).reshape(len(before), -1)
    ratio = np.where(active, (before - after) / np.where(active, before, 1.0), 0.0)
    n = active.sum(1)
    return np.where(n > 0, ratio.sum(1) / np.maximum(n, 1), np.nan)


def _set_mask(fs: FeatureSet, n: int) -> np.ndarray:
    m = np.asarray(fs.mask)
    return m if fs.per_sample else np.broadcast_to(m, (n,) + m.shape)


def _summary(x) -> dict:
    """Mean over the non-NaN entries (None when there are none) and their count."""
    x = np.asarray(x, np.float64)
    ok = ~np.isnan(x)
    return {"mean": float(x[ok].mean()) if ok.any() else None, "n": int(ok.sum())}


def _list(x) -> list:
    """A JSON-safe list: NaN (no active feature) becomes None."""
    return [None if np.isnan(v) else float(v) for v in np.asarray(x, np.float64).ravel()]


# ----------------------------------------------------------------------------- feature sets
def split_features(per_prompt: FeatureSet, refusal: FeatureSet, min_layer_refusal: bool = False):
    """Per prompt i: harm features F*_i - R and refusal features F*_i & R (two per-sample sets).
    ``min_layer_refusal``: keep only refusal features at or after the prompt's first
    harm-feature layer (the reference's suffix analysis: refusal features downstream of harm)."""
    if not per_prompt.per_sample:
        raise ValueError("split_features needs a per-sample feature set (one set per prompt)")
    r = set(refusal.pairs())
    n_layers, width = per_prompt.n_layers, per_prompt.idx.shape[-1]
    harm, ref = [], []
    for i in range(per_prompt.idx.shape[0]):
        pairs = per_prompt.pairs(i)
        h = [p for p in pairs if p not in r]
        f = [p for p in pairs if p in r]
        if min_layer_refusal and h:
            f = [p for p in f if p[0] >= min(layer for layer, _ in h)]
        harm.append(h)
        ref.append(f)
    # both as wide as the input, so every set of this analysis has one shape (one compilation)
    return (
        per_sample_feature_set(harm, n_layers, width=width),
        per_sample_feature_set(ref, n_layers, width=width),
    )


def refusal_features(spec: str, sets: dict, n_layers: int, d_sae: int) -> FeatureSet:
    """The refusal features R named by ``spec``: a method's set in ``sets`` (e.g. "ours", the
    global F* of the training prompts), or a JSON file - experiments/categories.py's results
    (its ``common_features``, the paper's choice) or a list of [layer, feature] pairs."""

    if spec in sets:
        return sets[spec]
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"refusal features {spec!r}: neither one of {sorted(sets)} nor a JSON file"
        )
    data = json.loads(path.read_text())
    pairs = data.get("common_features") if isinstance(data, dict) else data
    ok = isinstance(pairs, list) and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) for v in p) for p in pairs
    )
    if not ok or not pairs:
        raise ValueError(
            f"{path}: expected a non-empty list of [layer, feature] pairs (or a categories.py "
            "results.json with common_features)"
        )
    return feature_set(pairs, n_layers, d_sae)


def per_prompt_features(
    params, cfg, saes, ids, mask, direction, refusal_token: int, pc, progress=False
) -> FeatureSet:
    """F*_i for every prompt: LA-IG (``pc``: steps, batch, skipped positions) with
    ``direction``, top ``pc.n_features`` within F0 (``pc.n_candidates`` per layer)."""

    attr = accumulate_attributions(
        params, cfg, saes, ids, mask, direction, refusal_token, pc, progress
    )
    f0 = candidate_features(saes, direction, k=pc.n_candidates)
    return select_features(attr, pc.n_features, candidates=f0, per_sample=True)


def per_sample_pairs(fs: FeatureSet) -> list[list[tuple[int, int]]]:
    return [fs.pairs(i) for i in range(fs.idx.shape[0])]


def from_pairs(pair_lists, n_layers: int) -> FeatureSet:
    """Inverse of :func:`per_sample_pairs` (e.g. for sets read back from a cache)."""
    return per_sample_feature_set([[tuple(p) for p in ps] for ps in pair_lists], n_layers)


# ----------------------------------------------------------------------------- measures
def pair_drops(
    params, cfg, saes, harm: FeatureSet, refusal: FeatureSet, adv, plain,
    last_k: int = LAST_K, batch_size: int = 32,
) -> dict:  # fmt: skip
    """Relative drops plain -> adversarial of the harm features (mean over the prompt's tokens)
    and of the refusal features (mean over its last ``last_k`` tokens). ``adv`` and ``plain``
    are (ids, mask) of paired prompts in the same order; ``harm`` / ``refusal`` global or one
    set per pair (:func:`split_features`)."""
    n = len(plain[0])
    if len(adv[0]) != n:
        raise ValueError(f"{len(adv[0])} adversarial prompts for {n} plain ones")
    acts = lambda fs, p: feature_activations(params, cfg, saes, fs, *p, batch_size=batch_size)
    h_plain = sequence_mean(acts(harm, plain), plain[1])
    h_adv = sequence_mean(acts(harm, adv), adv[1])
    r_plain = last_tokens_mean(acts(refusal, plain), last_k)
    r_adv = last_tokens_mean(acts(refusal, adv), last_k)
    harm_drop = relative_drop(h_plain, h_adv, _set_mask(harm, n))
    ref_drop = relative_drop(r_plain, r_adv, _set_mask(refusal, n))
    return {
        "harm_relative_drop": _summary(harm_drop)["mean"],
        "refusal_relative_drop": _summary(ref_drop)["mean"],
        "n_with_harm_features": _summary(harm_drop)["n"],
        "n_with_refusal_features": _summary(ref_drop)["n"],
        "harm_drop_per_pair": _list(harm_drop),
        "refusal_drop_per_pair": _list(ref_drop),
        "harm_plain": h_plain.reshape(n, -1).sum(1).tolist(),
        "harm_adversarial": h_adv.reshape(n, -1).sum(1).tolist(),
        "refusal_plain": r_plain.reshape(n, -1).sum(1).tolist(),
        "refusal_adversarial": r_adv.reshape(n, -1).sum(1).tolist(),
    }


def token_attributions(
    params, cfg, saes, features: FeatureSet, ids, mask, direction, refusal_token: int, pc,
    progress: bool = False,
) -> np.ndarray:  # fmt: skip
    """LA-IG attribution of a (global or per-sample) feature set at every token, summed over
    its features: [N, T] (``pc``: alpha steps and rule, batch size, error mode)."""

    ids, mask = np.asarray(ids), np.asarray(mask)
    bs = pc.laig_batch_size
    out = []
    steps = list(batches(ids, mask, bs))
    for i, (b_ids, b_mask, n) in enumerate(
        tqdm(steps, desc="token LA-IG", disable=not progress, leave=False)
    ):
        res = la_ig(
            params, cfg, b_ids, b_mask, direction, refusal_token=refusal_token,
            n_steps=pc.n_steps, alpha_rule=pc.alpha_rule, error_mode=pc.error_mode,
        )  # fmt: skip
        a = subset_attributions(res, saes, features.rows(i * bs, bs))  # [L, B, T, K]
        out.append(np.asarray(a.sum(axis=(0, 3)))[:n] * np.asarray(b_mask)[:n])
    return np.concatenate(out)


def first_strong_position(
    signal, mask, fraction: float = 0.5, exclude_last: int = LAST_K, skip_first: int = 1
) -> np.ndarray:
    """Per prompt, the position id (real tokens counted from 0) of the first token whose
    ``signal`` (e.g. harm-feature attribution) reaches ``fraction`` of the prompt's maximum,
    leaving out the first ``skip_first`` tokens (BOS) and the last ``exclude_last`` (the chat
    template's end); ``skip_first`` when nothing is positive: [N] int32."""
    signal, mask = np.asarray(signal, np.float64), np.asarray(mask).astype(bool)
    if signal.shape != mask.shape:
        raise ValueError(f"signal {signal.shape} and mask {mask.shape} differ in shape")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction} must be in (0, 1]")
    out = np.full(len(signal), skip_first, np.int32)
    for i in range(len(signal)):
        a = signal[i][mask[i]]
        a = a[skip_first : max(len(a) - exclude_last, skip_first + 1)]
        if a.size and a.max() > 0:
            out[i] = skip_first + int(np.argmax(a >= fraction * a.max()))
    return out


def suffix_analysis(
    params, cfg, saes, harm: FeatureSet, refusal: FeatureSet, plain, suffixed, start_positions,
    clamp_value: float, last_k: int = LAST_K, batch_size: int = 32,
) -> dict:  # fmt: skip
    """For requests (``plain``, (ids, mask)) that a suffix (``suffixed``, same order) jailbreaks:
    the relative drop of the refusal features (last ``last_k`` tokens) from plain to suffixed,
    and from clamping (multiply by ``clamp_value``) the harm features on the plain request from
    ``start_positions`` [N] (position ids, e.g. :func:`first_strong_position`) onward.
    ``harm`` / ``refusal``: one set per request (:func:`split_features` with
    ``min_layer_refusal``)."""
    n = len(plain[0])
    if len(suffixed[0]) != n or len(start_positions) != n:
        raise ValueError(
            f"{n} requests, {len(suffixed[0])} suffixed prompts, {len(start_positions)} positions"
        )
    acts = lambda fs, p, patch=None: feature_activations(
        params, cfg, saes, fs, *p, patch=patch, batch_size=batch_size
    )
    r_plain = last_tokens_mean(acts(refusal, plain), last_k)
    r_suffix = last_tokens_mean(acts(refusal, suffixed), last_k)
    start = jnp.asarray(start_positions, jnp.int32)
    clamp = clamp_features(saes, harm, clamp_value, min_position=start)
    r_clamped = last_tokens_mean(acts(refusal, plain, clamp), last_k)
    valid = _set_mask(refusal, n)
    suffix_drop = relative_drop(r_plain, r_suffix, valid)
    clamp_drop = relative_drop(r_plain, r_clamped, valid)
    return {
        "suffix_relative_drop": _summary(suffix_drop)["mean"],
        "harm_clamp_relative_drop": _summary(clamp_drop)["mean"],
        "n_with_refusal_features": _summary(suffix_drop)["n"],
        "suffix_drop_per_prompt": _list(suffix_drop),
        "harm_clamp_drop_per_prompt": _list(clamp_drop),
        "harm_start_position": np.asarray(start_positions).tolist(),
        "refusal_plain": r_plain.reshape(n, -1).sum(1).tolist(),
        "refusal_suffixed": r_suffix.reshape(n, -1).sum(1).tolist(),
        "refusal_harm_clamped": r_clamped.reshape(n, -1).sum(1).tolist(),
    }


def suffix_word_effects(
    params, cfg, saes, tokenizer, refusal: FeatureSet, goals, suffixes,
    last_k: int = LAST_K, batch_size: int = 32, progress: bool = False,
) -> list[dict]:  # fmt: skip
    """The suffix added word by word: ``suffixes[i]`` is the exact text appended to
    ``goals[i]`` (e.g. " " + a suffix), cut after each of its words. Per request, the
    suppression of its refusal features (summed, last ``last_k`` tokens) after each word as a
    share of the full suffix's suppression, and the word that raises that share most (``None``
    when no word raises it)."""

    if len(goals) != len(suffixes):
        raise ValueError(f"{len(goals)} requests for {len(suffixes)} suffixes")
    out = []
    for i in tqdm(range(len(goals)), desc="suffix words", disable=not progress, leave=False):
        spans = [m.span() for m in re.finditer(r"\S+", suffixes[i])]
        if not spans:
            raise ValueError(f"suffix {i} has no words: {suffixes[i]!r}")
        words = [suffixes[i][a:b] for a, b in spans]
        texts = [goals[i]] + [goals[i] + suffixes[i][:b] for _, b in spans]
        ids, mask = encode_prompts(
            tokenizer, texts, multiple=32, max_length=cfg.max_position_embeddings
        )
        fs = refusal
        if refusal.per_sample:  # request i's set, once per prefix
            one = refusal.rows(i, 1)
            fs = FeatureSet(jnp.repeat(one.idx, len(texts), 0), jnp.repeat(one.mask, len(texts), 0))
        r = last_tokens_mean(
            feature_activations(params, cfg, saes, fs, ids, mask, batch_size=batch_size), last_k
        )
        r = r.reshape(len(texts), -1).sum(1)
        full = r[0] - r[-1]
        share = (r[0] - r[1:]) / full if abs(full) > 1e-9 else np.zeros(len(words))
        gain = np.diff(np.concatenate([[0.0], share]))
        top = int(np.argmax(gain))
        out.append(
            {
                "words": words,
                "suppression_share": share.tolist(),
                "top_word": words[top] if gain[top] > 0 else None,
                "top_gain": float(gain[top]),
            }
        )
    return out


def top_words(effects: list[dict], n: int = 20) -> list[tuple[str, int]]:
    """How often each word is a suffix's most suppressive word, most frequent first."""
    counts: dict[str, int] = {}
    for e in effects:
        if e["top_word"] is not None:
            counts[e["top_word"]] = counts.get(e["top_word"], 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


__all__ = [
    "LAST_K",
    "feature_activations",
    "first_strong_position",
    "from_pairs",
    "last_tokens_mean",
    "pair_drops",
    "refusal_features",
    "per_prompt_features",
    "per_sample_pairs",
    "relative_drop",
    "sequence_mean",
    "split_features",
    "suffix_analysis",
    "suffix_word_effects",
    "token_attributions",
    "top_words",
]
