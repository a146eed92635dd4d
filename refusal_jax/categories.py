"""Harm categories (section 4.2): per-category direction, LA-IG and global F*; the features all
categories share ("common", the paper's refusal features) and the rest ("specific").

For each category c: the difference-in-means direction of c's harmful prompts against the
harmless ones, LA-IG over c's prompts, and F*_c (top features restricted to F0_c). common =
intersection of all F*_c; specific_c = F*_c - common. Interventions, scored on held-out prompts of
each category by the first-token test (the share of prompts whose greedy first response token is
not the refusal token "I" - the quantity LA-IG attributes), one forward pass each:

- ``all``: clamp F*_c;
- ``specific_hold_common``: clamp specific_c while the common features are held at their clean
  activations (per token);
- ``common_hold_specific``: the reverse;
- ``common`` / ``specific_k``: clamp the common features alone, or an equal number of specific
  ones (the top-attributed |common| of specific_c);
- normalized scores divide by the ``all`` score;
- transfer: F*_c clamped on category c' prompts, a categories x categories matrix.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tqdm.auto import tqdm

from refusal_jax.direction import first_token_refuses, refusal_directions
from refusal_jax.features import FeatureSet, difference, feature_set, intersection
from refusal_jax.interventions import clamp_features, feature_values, hold_features
from refusal_jax.model import forward
from refusal_jax.patches import Compose
from refusal_jax.pipeline import PipelineConfig, accumulate_attributions, refusal_token
from refusal_jax.prompts import encode_prompts
from refusal_jax.selection import candidate_features, select_features


@dataclasses.dataclass
class CategoryFeatures:
    best_layer: int
    sets: dict  # category -> FeatureSet (F*_c)
    attributions: dict  # category -> [L, d_sae] mean attribution over the category's prompts
    common: FeatureSet
    specific: dict  # category -> FeatureSet


def category_features(
    params, cfg, tokenizer, saes, harmful_by_category: dict, harmless, pc: PipelineConfig,
    best_layer: int, progress: bool = False, min_share: float = 1.0,
) -> CategoryFeatures:  # fmt: skip
    """Per-category F* at ``best_layer`` (the layer chosen on all categories together); common
    features: see :func:`shared_features`."""
    enc = lambda xs: encode_prompts(tokenizer, xs, max_length=cfg.max_position_embeddings)
    rt = refusal_token(tokenizer)
    safe = enc(harmless)
    sets, attrs = {}, {}
    for cat, prompts in tqdm(harmful_by_category.items(), desc="categories", disable=not progress):
        if not prompts:
            raise ValueError(f"category {cat!r} has no prompts")
        h = enc(prompts)
        r = refusal_directions(params, cfg, h, safe, batch_size=pc.batch_size)[0][best_layer]
        attr = accumulate_attributions(params, cfg, saes, *h, r, rt, pc)
        f0 = candidate_features(saes, r, k=pc.n_candidates)
        sets[cat] = select_features(attr, pc.n_features, candidates=f0)
        attrs[cat] = attr.mean(axis=1)
    common = shared_features(sets, min_share)
    specific = {c: difference(s, common) for c, s in sets.items()}
    return CategoryFeatures(best_layer, sets, attrs, common, specific)


def shared_features(sets: dict, min_share: float = 1.0) -> FeatureSet:
    """Features in at least ``min_share`` of the categories' sets (1.0: in every one, the
    paper's intersection)."""
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share {min_share} must be in (0, 1]")
    fs = list(sets.values())
    if min_share == 1.0:
        return intersection(*fs)
    counts: dict = {}
    for s in fs:
        for p in s.pairs():
            counts[p] = counts.get(p, 0) + 1
    need = min_share * len(fs) - 1e-9
    return feature_set(sorted(p for p, n in counts.items() if n >= need), fs[0].n_layers)


def _top_k(fs: FeatureSet, scores: np.ndarray, k: int, n_layers: int) -> FeatureSet:
    pairs = sorted(fs.pairs(), key=lambda p: -scores[p[0], p[1]])[:k]
    return feature_set(pairs, n_layers)


def _non_refusal(params, cfg, ids, mask, rt, patch, batch_size) -> float:
    return float(1.0 - first_token_refuses(params, cfg, ids, mask, [rt], patch, batch_size).mean())


def _held(saes, fs: FeatureSet, params, cfg, ids, mask):
    """Hold ``fs`` at its clean per-token activations on these prompts."""
    clean = forward(params, cfg, ids, mask, return_residuals=True).resid_post
    return hold_features(saes, fs, feature_values(saes, fs, clean))


def category_interventions(
    params, cfg, tokenizer, saes, cf: CategoryFeatures, test_by_category: dict,
    clamp_value: float, batch_size: int = 32, progress: bool = False,
) -> dict:  # fmt: skip
    """Scores of every intervention per category, normalized scores and the transfer matrix."""
    enc = lambda xs: encode_prompts(tokenizer, xs, max_length=cfg.max_position_embeddings)
    rt = refusal_token(tokenizer)
    L = cfg.n_layers
    cats = list(cf.sets)
    n_common = len(cf.common.pairs())
    out, transfer = {}, np.zeros((len(cats), len(cats)))
    clamp = lambda fs: clamp_features(saes, fs, clamp_value)
    for i, cat in enumerate(tqdm(cats, desc="interventions", disable=not progress)):
        ids, mask = enc(test_by_category[cat])
        score = lambda patch, ids=ids, mask=mask: _non_refusal(
            params, cfg, ids, mask, rt, patch, batch_size
        )
        spec = cf.specific[cat]
        row = {"base": score(None), "all": score(clamp(cf.sets[cat]))}
        if n_common:
            row["common"] = score(clamp(cf.common))
            spec_k = _top_k(spec, cf.attributions[cat], n_common, L)
            row["specific_k"] = score(clamp(spec_k)) if spec_k.pairs() else row["base"]
            row["common_hold_specific"] = score(
                Compose((clamp(cf.common), _held(saes, spec, params, cfg, ids, mask)))
            ) if spec.pairs() else row["common"]  # fmt: skip
            row["specific_hold_common"] = score(
                Compose((clamp(spec), _held(saes, cf.common, params, cfg, ids, mask)))
            ) if spec.pairs() else row["base"]  # fmt: skip
        denom = max(row["all"], 1e-9)
        row["normalized"] = {k: v / denom for k, v in row.items() if k not in ("base", "all")}
        out[cat] = row
        for j, other in enumerate(cats):
            transfer[j, i] = score(clamp(cf.sets[other]))  # features of `other` on `cat`
    return {
        "categories": cats,
        "n_common": n_common,
        "common_features": cf.common.pairs(),
        "n_specific": {c: len(s.pairs()) for c, s in cf.specific.items()},
        "features": {c: s.pairs() for c, s in cf.sets.items()},
        "scores": out,
        "transfer": {"rows_features_of": cats, "cols_prompts_of": cats,
                     "non_refusal": transfer.tolist()},
    }  # fmt: skip


__all__ = [
    "CategoryFeatures",
    "category_features",
    "category_interventions",
    "shared_features",
]
