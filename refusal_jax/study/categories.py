"""Harm categories (section 4.2): per-category direction, LA-IG and global F*; the features the
categories share ("common", the paper's refusal features) and the rest ("specific").

For each category c: r_c = mean over c's harmful prompts - mean over as many harmless prompts
at the best layer, LA-IG over c's prompts with r_c, and F*_c = the top ``n_features`` of F0_c by
mean attribution. common = the features in every F*_c (``min_share`` 1, the paper's
intersection; a smaller share keeps the features in at least that share of the categories);
specific_c = F*_c - common, ranked by attribution. With k = |common|, the interventions on c's
prompts, as in the reference code (multiply clamps by ``clamp_value`` at every position; "hold"
= the features kept at their clean per-token activations on the prompt):

- ``all``: clamp F*_c;
- ``common``: clamp the common features, holding c's top-k specific ones;
- ``specific``: clamp c's top-k specific features, holding the common ones;
- transfer: clamp category o's top-k specific features on c's prompts, holding the common ones
  (the diagonal is ``specific``).

Each is scored by greedy generation and the judges
(:func:`refusal_jax.method.judges.jailbreak_scores`), plus the first-token non-refusal rate (the
quantity LA-IG attributes). Normalized scores divide by the ``all`` score of the category
(transfer: mean over the other categories' features).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tqdm.auto import tqdm

from refusal_jax.core.patches import Simultaneous
from refusal_jax.method.direction import filter_by_refusal, refusal_directions
from refusal_jax.method.features import FeatureSet, difference, feature_set, intersection, pad_width
from refusal_jax.method.interventions import clamp_features, clean_feature_values, hold_features
from refusal_jax.method.judges import jailbreak_scores, refusal_token
from refusal_jax.method.prompts import decode_responses, encode_prompts, generate_tokens
from refusal_jax.method.selection import candidate_features, select_features
from refusal_jax.study.pipeline import PipelineConfig, accumulate_attributions, directions_and_layer
from refusal_jax.study.runs import Cache, content_key

INTERVENTIONS = ("base", "all", "common", "specific")
# The CategoricalHarmfulQA categories the paper uses (7 of 11: "only these have perf drop").
PAPER_CATEGORIES = (
    "Illegal Activity",
    "Child Abuse",
    "Hate/Harass/Violence",
    "Physical Harm",
    "Economic Harm",
    "Fraud/Deception",
    "Adult Content",
)


@dataclasses.dataclass
class CategoryFeatures:
    best_layer: int
    sets: dict  # category -> F*_c (global FeatureSet)
    attributions: dict  # category -> [L, d_sae] mean attribution over the category's prompts
    common: FeatureSet
    specific: dict  # category -> F*_c - common
    min_share: float = 1.0

    def specific_top(self, category: str, k: int) -> FeatureSet:
        """The category's ``k`` most attributed specific features."""
        a = self.attributions[category]
        pairs = sorted(self.specific[category].pairs(), key=lambda p: (-a[p], p))[:k]
        return feature_set(pairs, self.common.n_layers)


def shared_features(sets: dict, min_share: float = 1.0) -> FeatureSet:
    """Features in at least ``min_share`` of the categories' sets (1.0: in every one, the
    paper's intersection)."""
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share {min_share} must be in (0, 1]")
    if not sets:
        raise ValueError("no category feature sets")
    fs = list(sets.values())
    if min_share == 1.0:
        return intersection(*fs)
    counts: dict = {}
    for s in fs:
        for p in s.pairs():
            counts[p] = counts.get(p, 0) + 1
    need = min_share * len(fs) - 1e-9
    return feature_set(sorted(p for p, n in counts.items() if n >= need), fs[0].n_layers)


def split_common(best_layer, sets: dict, attributions: dict, min_share=1.0) -> CategoryFeatures:
    """Common and specific features of per-category F* sets."""
    common = shared_features(sets, min_share)
    specific = {c: difference(s, common) for c, s in sets.items()}
    return CategoryFeatures(best_layer, sets, attributions, common, specific, min_share)


def restrict(cf: CategoryFeatures, categories) -> CategoryFeatures:
    """The same per-category sets on a subset of the categories, with common and specific
    features recomputed over that subset."""
    cats = list(categories)
    unknown = [c for c in cats if c not in cf.sets]
    if unknown:
        raise KeyError(f"categories {unknown} not in {list(cf.sets)}")
    return split_common(
        cf.best_layer,
        {c: cf.sets[c] for c in cats},
        {c: cf.attributions[c] for c in cats},
        cf.min_share,
    )


def active_categories(
    params, cfg, tokenizer, saes, cf: CategoryFeatures, prompts_by_category: dict,
    clamp_value: float, pc: PipelineConfig, min_rate: float, *, classifier=None,
    cache: Cache | None = None, progress: bool = False,
) -> tuple[list[str], dict]:  # fmt: skip
    """The categories whose own F*_c clamp (``all``) reaches a score of at least ``min_rate``,
    and every category's ``all`` score.

    The reference code analyses only the CategoricalHarmfulQA categories where its intervention
    works ("only these have perf drop": 7 of 11, chosen by hand); this is that choice as a rule.
    The ``all`` runs are the ones :func:`category_interventions` makes (same cache entries)."""
    if not 0 <= min_rate <= 1:
        raise ValueError(f"min_rate {min_rate} must be in [0, 1]")
    n_layers = cf.common.n_layers
    only_all = dataclasses.replace(cf, common=feature_set([], n_layers), specific=dict(cf.sets))
    res = category_interventions(
        params, cfg, tokenizer, saes, only_all, prompts_by_category, clamp_value, pc,
        classifier=classifier, cache=cache, transfer=False, progress=progress,
    )  # fmt: skip
    rates = {c: res["scores"][c]["all"][res["score_key"]] for c in cf.sets}
    return [c for c in cf.sets if rates[c] >= min_rate], rates


def category_layer(params, cfg, tokenizer, harmful_by_category, harmless, pc) -> int:
    """The best layer of the direction of every category's prompts together (see
    :func:`refusal_jax.study.pipeline.directions_and_layer`)."""
    pooled = [q for qs in harmful_by_category.values() for q in qs]
    return directions_and_layer(params, cfg, tokenizer, pooled, harmless, pc).best_layer


def category_features(
    params, cfg, tokenizer, saes, harmful_by_category: dict, harmless, pc: PipelineConfig,
    best_layer: int, progress: bool = False, min_share: float = 1.0,
) -> CategoryFeatures:  # fmt: skip
    """Per-category r, LA-IG and F* at ``best_layer`` (r_c against the first len(c) harmless
    prompts, as the reference code); common / specific features: :func:`split_common`."""
    enc = lambda xs: encode_prompts(
        tokenizer, xs, multiple=pc.pad_multiple, max_length=cfg.max_position_embeddings
    )
    rt = refusal_token(tokenizer)
    sets, attrs = {}, {}
    for cat, prompts in tqdm(harmful_by_category.items(), desc="categories", disable=not progress):
        if not prompts:
            raise ValueError(f"category {cat!r} has no prompts")
        if len(harmless) < len(prompts):
            raise ValueError(f"{len(harmless)} harmless prompts for {len(prompts)} of {cat!r}")
        h = enc(prompts)
        safe = enc(harmless[: len(prompts)])
        r = refusal_directions(params, cfg, h, safe, batch_size=pc.batch_size)[0][best_layer]
        attr = accumulate_attributions(params, cfg, saes, *h, r, rt, pc)
        f0 = candidate_features(saes, r, k=pc.n_candidates)
        sets[cat] = select_features(attr, pc.n_features, candidates=f0)
        attrs[cat] = np.asarray(attr).mean(axis=1)
    return split_common(best_layer, sets, attrs, min_share)


def cached_category_features(
    params, cfg, tokenizer, saes, harmful_by_category: dict, harmless, pc: PipelineConfig,
    cache: Cache, best_layer: int | None = None, min_share: float = 1.0, progress: bool = False,
) -> CategoryFeatures:  # fmt: skip
    """:func:`category_features` through the cache, with the ``harmless`` prompts the model does
    not refuse (the paper's filter) and the best layer chosen on all categories together
    (:func:`category_layer`) unless given."""
    cats = list(harmful_by_category)
    key = content_key(
        "category-features", harmful_by_category, harmless, dataclasses.asdict(pc), best_layer
    )

    def compute():
        kept = filter_by_refusal(
            params, cfg, tokenizer, harmless, False, pc.batch_size, pc.pad_multiple
        )
        layer = best_layer
        if layer is None:
            layer = category_layer(params, cfg, tokenizer, harmful_by_category, kept, pc)
        cf = category_features(
            params, cfg, tokenizer, saes, harmful_by_category, kept, pc, layer, progress
        )
        out = {"best_layer": np.int32(cf.best_layer)}
        for i, c in enumerate(cats):
            out[f"{i}.idx"], out[f"{i}.mask"] = cf.sets[c].idx, cf.sets[c].mask
            out[f"{i}.attr"] = cf.attributions[c]
        return out

    a = cache.arrays("category-features", key, compute)
    sets = {c: FeatureSet(a[f"{i}.idx"], a[f"{i}.mask"]) for i, c in enumerate(cats)}
    attrs = {c: a[f"{i}.attr"] for i, c in enumerate(cats)}
    return split_common(int(np.ravel(a["best_layer"])[0]), sets, attrs, min_share)


def _edited(cf: CategoryFeatures, spec: dict, cat: str, name: str):
    """(clamped, held) feature pairs of an intervention (part of its cache key)."""
    if name == "base":
        return [], []
    if name == "all":
        return cf.sets[cat].pairs(), []
    if name == "common":
        return cf.common.pairs(), spec[cat].pairs()
    return spec[name.split(":", 1)[1]].pairs(), cf.common.pairs()


def category_interventions(
    params, cfg, tokenizer, saes, cf: CategoryFeatures, prompts_by_category: dict,
    clamp_value: float, pc: PipelineConfig, *, classifier=None, cache: Cache | None = None,
    transfer: bool = True, progress: bool = False, small_set_clamp: float | None = None,
) -> dict:  # fmt: skip
    """Score every intervention on every category's prompts (greedy generation of
    ``pc.max_new_tokens`` tokens, judged with ``pc.compliance_prefixes`` and the optional
    ``classifier``); normalized scores and (``transfer``) the transfer matrix. Schema:
    experiments/README.md. Give ``pc.pad_multiple`` =
    :func:`refusal_jax.study.pipeline.shared_padding` of every prompt set to compile each step once.

    ``clamp_value`` multiplies F*_c in ``all``; ``small_set_clamp`` (None: the same) multiplies
    the k common or specific features of ``common``, ``specific`` and transfer (the reference code
    clamps these smaller sets by -3 whatever the model's own factor)."""
    cache = cache or Cache(None)
    cats = list(cf.sets)
    missing = [c for c in cats if not prompts_by_category.get(c)]
    if missing:
        raise ValueError(f"no evaluation prompts for categories {missing}")
    k = len(cf.common.pairs())
    width = max([pc.n_features] + [s.idx.shape[-1] for s in cf.sets.values()])
    pad = lambda fs: pad_width(fs, width)
    small = clamp_value if small_set_clamp is None else small_set_clamp
    clamp = lambda fs, c=clamp_value: clamp_features(saes, pad(fs), c)
    spec = {c: cf.specific_top(c, k) for c in cats}
    rt = refusal_token(tokenizer)
    score_key = "jailbreak_rate" if classifier is None else "classifier_harmful_rate"
    # responses depend on the prompts, the edited features and the factor applied to them
    setting = dataclasses.asdict(pc)
    factor = lambda name: {"base": None, "all": clamp_value}.get(name, small)

    def judge(prompts, texts):
        if classifier is None:
            return jailbreak_scores(prompts, texts, pc.compliance_prefixes)
        ident = (getattr(classifier, "name", None), getattr(classifier, "template", None))
        key = content_key("classifier", ident, prompts, texts)
        harmful = cache.json("classifier", key, lambda: {"h": classifier(prompts, texts)})["h"]
        return jailbreak_scores(prompts, texts, pc.compliance_prefixes, lambda b, t: harmful)

    def run(patch, prompts, ids, mask):
        toks = generate_tokens(
            params, cfg, ids, mask, batch_size=pc.batch_size, max_new_tokens=pc.max_new_tokens,
            patch=patch,
        )  # fmt: skip
        first = toks[0][:, 0] == rt  # the greedy first token: what LA-IG's metric is about
        texts = decode_responses(tokenizer, *toks)
        return {"prompts": list(prompts), "responses": texts, "first_refuses": first}

    def hold(fs, ids, mask):
        values = clean_feature_values(params, cfg, saes, pad(fs), ids, mask, pc.batch_size)
        return hold_features(saes, pad(fs), values, prompt_only=True)

    do_transfer = bool(k) and transfer
    n_runs = len(cats) * (1 + (2 if k else 0) + (len(cats) - 1 if do_transfer else 0))
    bar = tqdm(total=n_runs, desc="interventions", disable=not progress)
    scores, matrix = {}, np.full((len(cats), len(cats)), np.nan)
    for j, cat in enumerate(cats):
        prompts = list(prompts_by_category[cat])
        ids, mask = encode_prompts(
            tokenizer, prompts, multiple=pc.pad_multiple, max_length=cfg.max_position_embeddings
        )
        patches = {"base": None, "all": clamp(cf.sets[cat])}
        if k:
            hold_common = hold(cf.common, ids, mask)
            patches["common"] = Simultaneous((clamp(cf.common, small), hold(spec[cat], ids, mask)))
            for o in cats if do_transfer else [cat]:
                patches[f"specific_of:{o}"] = Simultaneous((clamp(spec[o], small), hold_common))
        row = {}
        for name, patch in patches.items():
            edited = _edited(cf, spec, cat, name)
            key = content_key("category-responses", name, edited, factor(name), prompts, setting)
            compute = lambda p=patch, q=prompts, i=ids, m=mask: run(p, q, i, m)
            got = cache.json("category-responses", key, compute)
            row[name] = judge(prompts, got["responses"])
            row[name]["first_token_non_refusal"] = 1.0 - float(np.mean(got["first_refuses"]))
            if name != "base":
                bar.set_postfix_str(f"{cat}/{name}")
                bar.update(1)
        if k:
            row["specific"] = row[f"specific_of:{cat}"]
        if do_transfer:
            for i, o in enumerate(cats):
                matrix[i, j] = row[f"specific_of:{o}"][score_key]
        scores[cat] = {n: row[n] for n in INTERVENTIONS if n in row}
    bar.close()

    normalized = {}
    for j, cat in enumerate(cats):
        denom = scores[cat]["all"][score_key]
        if not k or denom <= 0:
            normalized[cat] = None
            continue
        others = [matrix[i, j] for i in range(len(cats)) if i != j]
        normalized[cat] = {
            "common": scores[cat]["common"][score_key] / denom,
            "specific": scores[cat]["specific"][score_key] / denom,
            "transfer": float(np.mean(others)) / denom if others and do_transfer else None,
        }
    mean = lambda name, key: float(np.mean([scores[c][name][key] for c in cats]))
    summary = {
        key: {n: mean(n, key) for n in INTERVENTIONS if n in scores[cats[0]]}
        for key in (score_key, "first_token_non_refusal")
    }
    if do_transfer and len(cats) > 1:
        summary[score_key]["transfer"] = float(matrix[~np.eye(len(cats), dtype=bool)].mean())
    # Over categories: mean score / mean "all" score (a mean of per-category ratios is dominated
    # by categories whose "all" score is near zero).
    all_mean = summary[score_key]["all"]
    summary["normalized"] = {
        n: (v / all_mean if all_mean > 0 and v is not None else None)
        for n, v in summary[score_key].items()
        if n not in ("base", "all")
    }
    return {
        "categories": cats,
        "best_layer": cf.best_layer,
        "min_share": cf.min_share,
        "clamp_value": clamp_value,
        "small_set_clamp": small,
        "n_common": k,
        "common_features": cf.common.pairs(),
        "specific_features": {c: spec[c].pairs() for c in cats},
        "n_specific": {c: len(s.pairs()) for c, s in cf.specific.items()},
        "features": {c: s.pairs() for c, s in cf.sets.items()},
        "score_key": score_key,
        "scores": scores,
        "normalized": normalized,
        "transfer": {
            "rows_features_of": cats,
            "cols_prompts_of": cats,
            "score": matrix.tolist() if do_transfer else None,
        },
        "summary": summary,
    }


__all__ = [
    "INTERVENTIONS",
    "PAPER_CATEGORIES",
    "CategoryFeatures",
    "active_categories",
    "cached_category_features",
    "category_features",
    "category_interventions",
    "category_layer",
    "restrict",
    "shared_features",
    "split_common",
]
