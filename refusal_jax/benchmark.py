"""The paper's benchmark (section 4.1): every method on every harmful dataset, and what each costs.

For base, AS, cs, act, la, random and ours (feature sets from :func:`refusal_jax.pipeline.
prepare_methods`): greedy responses on each harmful dataset judged by the substring judge
(refusal score; jailbreak = no refusal, opening with a compliance prefix when given) and, when a
classifier is given, by :class:`refusal_jax.judges.ClassifierJudge` (the paper's jailbreak
score). Capability under each intervention: CE on harmless prompts with the unpatched model's own
greedy rollouts as targets, and CE on plain text. Refusal induction on harmless prompts: the ours
(and cs) features set to each value of a sweep, and the direction added at the best layer.

Expensive pieces are cached by content (:class:`refusal_jax.runs.Cache`), so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from refusal_jax.capability import masked_ce, rollout_batch
from refusal_jax.features import FeatureSet
from refusal_jax.interventions import clamp_features
from refusal_jax.patches import add_at_layers
from refusal_jax.pipeline import (
    METHODS,
    PipelineConfig,
    Prepared,
    judge_responses,
    method_patches,
    prepare_methods,
)
from refusal_jax.prompts import decode_responses, encode_prompts, generate_tokens
from refusal_jax.runs import Cache, content_key


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    pipeline: PipelineConfig
    induction_values: tuple[float, ...] = (10.0, 15.0, 20.0, 25.0, 30.0)
    plain_max_tokens: int = 128


def cached_prepare(
    params, cfg, tokenizer, saes, harmful_train, harmless_train, pc, cache: Cache, progress=False
) -> Prepared:
    """:func:`prepare_methods` through the cache (keyed by the prompts and the settings)."""
    key = content_key("prepare", harmful_train, harmless_train, dataclasses.asdict(pc))

    def compute():
        prep = prepare_methods(
            params, cfg, tokenizer, saes, harmful_train, harmless_train, pc, progress=progress
        )
        out = {
            "directions": np.asarray(prep.directions),
            "attributions": prep.attributions,
            "best_layer": np.int32(prep.best_layer),
            "refusal_token": np.int32(prep.refusal_token),
            "layer_rates": np.asarray(prep.layer_rates, np.float32),
            "n_kept": np.asarray(list(prep.n_kept.values()), np.int64),
        }
        for name, fs in prep.sets.items():
            out[f"set.{name}.idx"], out[f"set.{name}.mask"] = (
                np.asarray(fs.idx),
                np.asarray(fs.mask),
            )
        return out

    a = cache.arrays("prepare", key, compute)
    sets = {
        name[4:-4]: FeatureSet(jnp.asarray(a[name]), jnp.asarray(a[name[:-4] + ".mask"]))
        for name in a
        if name.startswith("set.") and name.endswith(".idx")
    }
    kept = ("harmful_train_kept", "harmful_train", "harmless_train_kept", "harmless_train")
    return Prepared(
        int(a["refusal_token"].ravel()[0]),
        dict(zip(kept, (int(x) for x in a["n_kept"]))),
        a["directions"],
        int(a["best_layer"].ravel()[0]),
        [float(x) for x in a["layer_rates"]],
        a["attributions"],
        sets,
    )


def plain_text_batch(tokenizer, texts, max_tokens: int):
    """Plain text (no chat template), left padded, every token a target: (ids, mask, target)."""
    if not texts:
        raise ValueError("no plain text to score")
    enc = [tokenizer(t, add_special_tokens=True)["input_ids"][:max_tokens] for t in texts]
    T = max(len(e) for e in enc)
    ids = np.zeros((len(enc), T), np.int32)
    mask = np.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, T - len(e) :], mask[i, T - len(e) :] = e, 1
    return ids, mask, mask.copy()


def run_benchmark(
    params,
    cfg,
    tokenizer,
    saes,
    *,
    harmful_train,
    harmless_train,
    datasets: dict,
    harmless_eval,
    plain_text,
    bc: BenchmarkConfig,
    cache: Cache,
    classifier=None,
    progress: bool = True,
) -> dict:
    """Run the benchmark; returns the results dict (see experiments/README.md for its schema)."""
    pc = bc.pipeline
    enc = lambda xs: encode_prompts(tokenizer, xs, max_length=cfg.max_position_embeddings)
    prep = cached_prepare(
        params, cfg, tokenizer, saes, harmful_train, harmless_train, pc, cache, progress
    )
    patches = method_patches(prep, saes, cfg, pc)

    def responses(prompts, name, tag):
        key = content_key(tag, name, prompts, dataclasses.asdict(pc), prep.best_layer)

        def compute():
            toks = generate_tokens(
                params, cfg, *enc(prompts), batch_size=pc.batch_size,
                max_new_tokens=pc.max_new_tokens, patch=patches[name],
            )  # fmt: skip
            return {"responses": decode_responses(tokenizer, *toks)}

        return cache.json(f"responses-{tag}-{name}", key, compute)["responses"]

    total = len(datasets) * len(METHODS) + 2 * len(METHODS) + len(bc.induction_values) * 2 + 1
    bar = tqdm(total=total, desc="benchmark", disable=not progress)
    jailbreak = {}
    for dname, prompts in datasets.items():
        if not prompts:
            raise ValueError(f"dataset {dname!r} is empty")
        jailbreak[dname] = {}
        for name in METHODS:
            texts = responses(prompts, name, dname)
            refused, complied = judge_responses(texts, pc.compliance_prefixes)
            row = {
                "refusal_rate": float(refused.mean()),
                "jailbreak_rate": float(complied.mean()),
            }
            if classifier is not None:
                row["classifier_harmful_rate"] = float(np.mean(classifier(prompts, texts)))
            jailbreak[dname][name] = row
            bar.set_postfix_str(f"{dname}/{name}")
            bar.update(1)

    # Capability: CE on harmless rollouts of the unpatched model, CE on plain text.
    h_ids, h_mask = enc(harmless_eval)
    base_toks = generate_tokens(
        params, cfg, h_ids, h_mask, batch_size=pc.batch_size, max_new_tokens=pc.max_new_tokens
    )
    r_ids, r_mask, r_tgt = rollout_batch(h_ids, h_mask, *base_toks)
    p_ids, p_mask, p_tgt = plain_text_batch(tokenizer, plain_text, bc.plain_max_tokens)
    capability = {}
    for name in METHODS:
        ce_r = masked_ce(params, cfg, r_ids, r_mask, r_tgt, patches[name], pc.batch_size)
        bar.update(1)
        ce_p = masked_ce(params, cfg, p_ids, p_mask, p_tgt, patches[name], pc.batch_size)
        bar.update(1)
        capability[name] = {"harmless_rollout_ce": ce_r, "plain_text_ce": ce_p}
    for name in METHODS:
        for k in ("harmless_rollout_ce", "plain_text_ce"):
            capability[name][k + "_change"] = capability[name][k] - capability["base"][k]

    # Refusal induction on harmless prompts.
    def refusal_on_harmless(patch, tag):
        key = content_key("induce", tag, harmless_eval, dataclasses.asdict(pc), prep.best_layer)

        def compute():
            toks = generate_tokens(
                params, cfg, h_ids, h_mask, batch_size=pc.batch_size,
                max_new_tokens=pc.max_new_tokens, patch=patch,
            )  # fmt: skip
            return {"responses": decode_responses(tokenizer, *toks)}

        texts = cache.json(f"induce-{tag}", key, compute)["responses"]
        bar.update(1)
        return float(judge_responses(texts)[0].mean())

    induction = {"values": list(bc.induction_values), "ours": [], "cs": []}
    for c in bc.induction_values:
        for name in ("ours", "cs"):
            patch = clamp_features(saes, prep.sets[name], c, mode="set")
            induction[name].append(refusal_on_harmless(patch, f"{name}-set{c:g}"))
    steer = add_at_layers(np.asarray(prep.r_best), [prep.best_layer], cfg.n_layers)
    induction["add_direction"] = refusal_on_harmless(steer, "add-direction")
    bar.close()
    return {
        "best_layer": prep.best_layer,
        "n_prompts": {**prep.n_kept, **{k: len(v) for k, v in datasets.items()},
                      "harmless_eval": len(harmless_eval), "plain_text": len(plain_text)},
        "jailbreak": jailbreak,
        "capability": capability,
        "refusal_induction": induction,
        "features": {name: fs.pairs() for name, fs in prep.sets.items()},
        "config": dataclasses.asdict(bc),
    }  # fmt: skip


__all__ = ["BenchmarkConfig", "cached_prepare", "plain_text_batch", "run_benchmark"]
