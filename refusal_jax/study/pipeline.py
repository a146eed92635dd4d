"""The paper's pipeline end to end, as one function over a model, its SAEs and prompt sets.

refusal direction -> best layer -> directional-ablation jailbreak ("AS") -> LA-IG over harmful
prompts -> feature sets (ours, la, cs, act, random) -> clamp each -> refusal / jailbreak rates on
held-out harmful prompts, refusal on held-out harmless prompts, CE change on harmless rollouts.
Every step is a library call; this module only sequences them and writes the run folder
(``report.json``, ``report.md``, PNG plots, the feature dashboards of F* and ``report.html``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from refusal_jax.core.batching import fit_batch_size
from refusal_jax.core.errors import check_direction, check_finite
from refusal_jax.core.io import write_text_atomic
from refusal_jax.core.positions import ContentPositions, position_rule
from refusal_jax.method.capability import masked_ce, rollout_batch
from refusal_jax.method.direction import choose_best_layer, refusal_directions
from refusal_jax.method.features import pad_width
from refusal_jax.method.interventions import ablate_direction, clamp_features
from refusal_jax.method.judges import (
    first_token_refuses,
    is_refusal,
    judge_responses,
    refusal_token,
)
from refusal_jax.method.laig import alpha_schedule, attribute_prompts
from refusal_jax.method.prompts import decode_responses, encode_prompts, generate_tokens
from refusal_jax.method.selection import (
    act_features,
    candidate_features,
    cs_features,
    la_features,
    max_activation_means,
    random_features,
    select_features,
)
from refusal_jax.study.dashboards import write_run_dashboards
from refusal_jax.study.html import write_report_html
from refusal_jax.study.report import plot_report, render_markdown

METHODS = ("base", "AS", "cs", "act", "la", "random", "ours")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    best_layer: int | None = None  # None: the layer whose direction, ablated, refuses least
    n_steps: int = 10  # LA-IG alpha steps
    # LA-IG quadrature over alpha (refusal_jax.method.laig.alpha_schedule): "left" is the
    # paper's; "radau" with 2 steps costs about a third of left's 10 at a similar F* overlap
    # (experiments/benchmarks/RESULTS.md).
    alpha_rule: str = "left"
    n_candidates: int = 10  # F0: per layer
    n_features: int = 20  # |F*| and every baseline
    clamp_value: float = -3.0  # multiply clamp (Gemma: -3, Llama: -1)
    # Positions left out of the LA-IG position mean (refusal_jax.core.positions): an int n skips
    # the first n real tokens (1: BOS; the organism's recorded setting); "content" excludes the
    # special tokens and the chat template's constant prefix, in LA-IG and the act baseline.
    skip_positions: int | str = 1
    error_mode: str = "paper"
    max_new_tokens: int = 24
    batch_size: int = 32  # at most; smaller prompt sets run in one batch of their size (to 8)
    laig_batch_size: int = 8
    seed: int = 0
    # Jailbreak judge: a harmful-prompt response counts as a jailbreak when it is not a refusal
    # (substring judge) and, if given, starts with one of these compliance openers.
    compliance_prefixes: tuple[str, ...] | None = None
    # Prompts are left padded to a multiple of this many tokens (a common length for several
    # prompt sets lets every jitted step compile once).
    pad_multiple: int = 8

    def __post_init__(self):
        # an unknown rule or too few steps for it fails here, before any compute
        alpha_schedule(self.n_steps, self.alpha_rule)


@dataclasses.dataclass
class PromptData:
    """Instruction strings. ``*_train`` build the direction and attributions; ``*_test`` are
    held out for the rates."""

    harmful_train: list[str]
    harmless_train: list[str]
    harmful_test: list[str]
    harmless_test: list[str]
    # Held-out jailbreak prompts (wrapped harmful requests), for the feature dashboards only.
    jailbreak_test: list[str] | None = None

    def __post_init__(self):
        for name in ("harmful_train", "harmless_train", "harmful_test", "harmless_test"):
            if not getattr(self, name):
                raise ValueError(f"PromptData.{name} is empty")


def pipeline_positions(pc: PipelineConfig, tokenizer=None) -> ContentPositions:
    """The position rule of ``pc.skip_positions`` (see
    :func:`refusal_jax.core.positions.position_rule`)."""
    return position_rule(pc.skip_positions, tokenizer)


def accumulate_attributions(
    params, cfg, saes, ids, mask, direction, refusal_token, pc, progress=False, positions=None
) -> np.ndarray:
    """Position-mean LA-IG attributions for every prompt: [L, N, d_sae]
    (:func:`refusal_jax.method.laig.attribute_prompts` in batches of ``pc.laig_batch_size``,
    ``pc.n_steps`` alpha steps of ``pc.alpha_rule``, over the content positions of
    ``positions``, default :func:`pipeline_positions` of an int ``pc.skip_positions``)."""
    if positions is None:
        positions = pipeline_positions(pc)
    out = attribute_prompts(
        params, cfg, saes, ids, mask, direction, refusal_token=refusal_token,
        positions=positions, n_steps=pc.n_steps, alpha_rule=pc.alpha_rule,
        error_mode=pc.error_mode, batch_size=pc.laig_batch_size, progress=progress,
    )  # fmt: skip
    return out.attributions


@dataclasses.dataclass
class Prepared:
    """Steps 1-4 of the pipeline: what every evaluation of the methods starts from."""

    refusal_token: int
    n_kept: dict  # harmful_train_kept, harmful_train, harmless_train_kept, harmless_train
    directions: object  # [L, D] difference-in-means directions (filtered training prompts)
    best_layer: int
    layer_rates: list  # first-token refusal with each layer's direction ablated
    attributions: np.ndarray  # [L, N_harmful_kept, d_sae] position-mean LA-IG
    sets: dict  # method name -> FeatureSet (ours, la, cs, act, random)

    @property
    def r_best(self):
        return self.directions[self.best_layer]


@dataclasses.dataclass
class Directions:
    """Steps 1-2 of the pipeline: filtered training prompts, the direction at every layer and
    the best layer."""

    refusal_token: int
    n_kept: dict  # harmful_train_kept, harmful_train, harmless_train_kept, harmless_train
    directions: object  # [L, D]
    best_layer: int
    layer_rates: list  # first-token refusal with each layer's direction ablated ([] if given)
    harmful: tuple  # (ids, mask) of the kept harmful prompts
    harmless: tuple  # (ids, mask) of the kept harmless prompts
    kept_harmful: np.ndarray  # [N] bool: which harmful training prompts were kept
    kept_harmless: np.ndarray  # [N] bool


def directions_and_layer(
    params, cfg, tokenizer, harmful_train, harmless_train, pc: PipelineConfig,
    stage=lambda msg: None,
) -> Directions:  # fmt: skip
    """Filter training prompts by refusal (harmful: refused, harmless: not, as in the paper),
    build the difference-in-means direction at every layer and choose the best layer (or take
    ``pc.best_layer``)."""
    enc = lambda xs: encode_prompts(
        tokenizer, xs, multiple=pc.pad_multiple, max_length=cfg.max_position_embeddings
    )
    refusal_tok = refusal_token(tokenizer)
    harm_ids, harm_mask = enc(harmful_train)
    safe_ids, safe_mask = enc(harmless_train)
    keep_h = first_token_refuses(
        params, cfg, harm_ids, harm_mask, [refusal_tok], None, pc.batch_size
    )
    keep_s = ~first_token_refuses(
        params, cfg, safe_ids, safe_mask, [refusal_tok], None, pc.batch_size
    )
    if keep_h.sum() == 0 or keep_s.sum() == 0:
        raise ValueError(
            f"after filtering, {int(keep_h.sum())} harmful and {int(keep_s.sum())} harmless "
            "training prompts remain: the model does not refuse (first token 'I') as expected"
        )
    harm_ids, harm_mask = harm_ids[keep_h], harm_mask[keep_h]
    safe_ids, safe_mask = safe_ids[keep_s], safe_mask[keep_s]
    stage("filtered")
    directions = refusal_directions(
        params, cfg, (harm_ids, harm_mask), (safe_ids, safe_mask), batch_size=pc.batch_size
    )[0]
    check_finite(directions, "pipeline stage 'direction': refusal directions [L, D]")
    if pc.best_layer is None:
        best, layer_rates = choose_best_layer(
            params, cfg, directions, harm_ids, harm_mask, refusal_tok, pc.batch_size
        )
    else:
        if not 0 <= pc.best_layer < cfg.n_layers:
            raise ValueError(f"best_layer {pc.best_layer} out of range [0, {cfg.n_layers})")
        best, layer_rates = pc.best_layer, []
    check_direction(directions[best], cfg.d_model, f"refusal direction at layer {best}")
    stage(f"direction (layer {best})")
    n_kept = {
        "harmful_train_kept": int(keep_h.sum()),
        "harmful_train": len(keep_h),
        "harmless_train_kept": int(keep_s.sum()),
        "harmless_train": len(keep_s),
    }
    return Directions(
        refusal_tok, n_kept, directions, best, layer_rates, (harm_ids, harm_mask),
        (safe_ids, safe_mask), np.asarray(keep_h), np.asarray(keep_s),
    )  # fmt: skip


def prepare_methods(
    params, cfg, tokenizer, saes, harmful_train, harmless_train, pc: PipelineConfig, *,
    progress: bool = False, stage=lambda msg: None,
) -> Prepared:  # fmt: skip
    """Filter training prompts by refusal, build the direction at every layer, choose the best
    layer (:func:`directions_and_layer`), run LA-IG over the harmful prompts and select every
    method's feature set."""
    d = directions_and_layer(params, cfg, tokenizer, harmful_train, harmless_train, pc, stage)
    (harm_ids, harm_mask), (safe_ids, safe_mask) = d.harmful, d.harmless
    refusal_tok, best, r_best = d.refusal_token, d.best_layer, d.directions[d.best_layer]

    # 3. LA-IG over the (filtered) harmful training prompts.
    positions = pipeline_positions(pc, tokenizer)
    attr = accumulate_attributions(
        params, cfg, saes, harm_ids, harm_mask, r_best, refusal_tok, pc, progress, positions
    )
    check_finite(attr, "pipeline stage 'LA-IG': feature attributions [L, N, S]")
    stage("LA-IG")

    # 4. Feature sets.
    sets = method_sets(
        params, cfg, saes, attr, r_best, (harm_ids, harm_mask), (safe_ids, safe_mask), pc,
        positions=positions,
    )  # fmt: skip
    stage("feature sets")
    return Prepared(refusal_tok, d.n_kept, d.directions, best, d.layer_rates, attr, sets)


def method_sets(
    params, cfg, saes, attributions, r_best, harmful, harmless, pc: PipelineConfig,
    per_sample: bool = False, positions: ContentPositions | None = None,
) -> dict:  # fmt: skip
    """Every method's feature set from LA-IG ``attributions`` [L, N, S] over the ``harmful``
    prompts ((ids, mask); ``harmless`` likewise, for ``act``) and the direction ``r_best``:
    global ``ours`` (F* within F0), ``la``, ``cs``, ``act`` and ``random``; with ``per_sample``
    also ``ours_per_sample`` and ``la_per_sample`` (one set per harmful prompt, as the reference
    code clamps on its benchmark). ``positions``: the content rule of the ``act`` baseline's max
    over positions, used only with ``pc.skip_positions == "content"`` (an int keeps every real
    token, the recorded organism behaviour); ``cs`` and F0 use no positions."""
    act_positions = positions if pc.skip_positions == "content" else None
    d_sae = int(saes.W_dec.shape[-2])
    f0 = candidate_features(saes, r_best, k=pc.n_candidates)
    ours = select_features(attributions, pc.n_features, candidates=f0)
    act_h = max_activation_means(params, cfg, saes, *harmful, pc.batch_size, act_positions)
    act_s = max_activation_means(params, cfg, saes, *harmless, pc.batch_size, act_positions)
    sets = {
        "ours": ours,
        "la": la_features(attributions, pc.n_features),
        "cs": cs_features(saes, r_best, pc.n_features),
        "act": act_features(act_h, act_s, pc.n_features),
        "random": random_features(ours, d_sae, seed=pc.seed),
    }
    if per_sample:
        sets["ours_per_sample"] = select_features(
            attributions, pc.n_features, candidates=f0, per_sample=True
        )
        sets["la_per_sample"] = select_features(attributions, pc.n_features, per_sample=True)
    return sets


def method_patches(prep: Prepared, saes, cfg, pc: PipelineConfig) -> dict:
    """Patch per method: base (None), AS (directional ablation of r_best at every layer) and a
    multiply clamp (``pc.clamp_value``) of each feature set (padded to one width, so every clamp
    compiles once)."""
    patches = {"base": None, "AS": ablate_direction(prep.r_best, cfg.n_layers)}
    width = max(fs.idx.shape[-1] for fs in prep.sets.values())
    for name, fs in prep.sets.items():
        fs = pad_width(fs, max(width, pc.n_features))
        patches[name] = clamp_features(saes, fs, pc.clamp_value, mode="multiply")
    return patches


def run_pipeline(
    params,
    cfg,
    tokenizer,
    saes,
    data: PromptData,
    pc: PipelineConfig,
    out_dir,
    *,
    progress: bool = True,
) -> dict:
    """Run every step and write ``report.json``, ``report.md`` and plots into ``out_dir``."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    enc = lambda xs: encode_prompts(tokenizer, xs, max_length=cfg.max_position_embeddings)
    bar = tqdm(total=6 + len(METHODS), desc="pipeline", disable=not progress)

    def stage(msg):
        bar.set_postfix_str(msg)
        bar.update(1)

    # prompt sets smaller than a batch run in one batch of their own size (less padding)
    sets_n = [len(xs) for xs in (data.harmful_train, data.harmless_train)]
    sets_n += [len(xs) for xs in dashboard_prompts(data).values()]
    pc = dataclasses.replace(pc, batch_size=fit_batch_size(pc.batch_size, max(sets_n)))
    prep = prepare_methods(
        params, cfg, tokenizer, saes, data.harmful_train, data.harmless_train, pc,
        progress=progress, stage=stage,
    )  # fmt: skip
    sets, attr, best = prep.sets, prep.attributions, prep.best_layer
    d_sae = int(saes.W_dec.shape[-2])

    # 5. Held-out evaluation of every method.
    test_h = enc(data.harmful_test)
    test_s = enc(data.harmless_test)
    gen = lambda ids_mask, patch: generate_tokens(
        params,
        cfg,
        *ids_mask,
        batch_size=pc.batch_size,
        max_new_tokens=pc.max_new_tokens,
        patch=patch,
    )
    base_s_tokens = gen(test_s, None)
    ce_ids, ce_mask, ce_tgt = rollout_batch(*test_s, *base_s_tokens)
    base_ce = masked_ce(params, cfg, ce_ids, ce_mask, ce_tgt, None, pc.batch_size)
    stage("baseline rollouts")

    patches = method_patches(prep, saes, cfg, pc)
    results, samples = {}, {}
    for name in METHODS:
        patch = patches[name]
        harm_text = decode_responses(tokenizer, *gen(test_h, patch))
        safe_tokens = base_s_tokens if patch is None else gen(test_s, patch)
        safe_text = decode_responses(tokenizer, *safe_tokens)
        refused_h, complied = judge_responses(harm_text, pc.compliance_prefixes)
        ce = (
            base_ce
            if patch is None
            else masked_ce(params, cfg, ce_ids, ce_mask, ce_tgt, patch, pc.batch_size)
        )
        results[name] = {
            "harmful_refusal_rate": float(refused_h.mean()),
            "jailbreak_rate": float(complied.mean()),
            "non_refusal_rate": float((~refused_h).mean()),
            "harmless_refusal_rate": float(np.mean([is_refusal(t) for t in safe_text])),
            "harmless_ce": ce,
            "harmless_ce_change": ce - base_ce,
            "n_features": int(sets[name].size()) if name in sets else 0,
        }
        check_finite(list(results[name].values()), f"pipeline stage 'evaluate {name}': metrics")
        samples[name] = [
            {"prompt": p, "response": r} for p, r in zip(data.harmful_test[:3], harm_text[:3])
        ]
        stage(name)
    bar.close()

    ranking = sorted(
        (m for m in METHODS if m != "base"), key=lambda m: -results[m]["jailbreak_rate"]
    )
    report = {
        "model": {"family": cfg.family, "n_layers": cfg.n_layers, "d_model": cfg.d_model},
        "sae": {"d_sae": d_sae, "architecture": saes.cfg.architecture},
        "config": dataclasses.asdict(pc),
        "n_prompts": {
            **prep.n_kept,
            "harmful_test": len(data.harmful_test),
            "harmless_test": len(data.harmless_test),
        },
        "best_layer": best,
        "layer_ablation_refusal": prep.layer_rates,
        "refusal_token": prep.refusal_token,
        "methods": results,
        "ranking_by_jailbreak": ranking,
        "features": {name: fs.pairs() for name, fs in sets.items()},
        "attribution_by_layer": np.abs(attr).sum(axis=-1).mean(axis=1).tolist(),
        "samples": samples,
        "runtime_s": time.perf_counter() - t0,
    }
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2))
    write_text_atomic(out_dir / "report.md", render_markdown(report))
    plot_report(report, out_dir)
    write_run_dashboards(
        out_dir, params, cfg, tokenizer, saes, sets["ours"].pairs(), dashboard_prompts(data),
        prep.r_best, attr.mean(axis=1), clamp_value=pc.clamp_value,
        max_new_tokens=pc.max_new_tokens, batch_size=pc.batch_size, pad_multiple=pc.pad_multiple,
        positions=pipeline_positions(pc, tokenizer),
    )  # fmt: skip
    write_report_html(out_dir)
    return report


def dashboard_prompts(data: PromptData) -> dict[str, list[str]]:
    """The prompt sets the feature dashboards show: held-out harmful, harmless and jailbreak."""
    return {
        "harmful": list(data.harmful_test),
        "harmless": list(data.harmless_test),
        "jailbreak": list(data.jailbreak_test or []),
    }


__all__ = [
    "METHODS",
    "PipelineConfig",
    "Prepared",
    "PromptData",
    "accumulate_attributions",
    "dashboard_prompts",
    "Directions",
    "directions_and_layer",
    "method_patches",
    "method_sets",
    "pipeline_positions",
    "prepare_methods",
    "run_pipeline",
]
