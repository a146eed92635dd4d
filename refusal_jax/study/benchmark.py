"""The paper's benchmark (section 4.1): every method on every harmful dataset, and what each costs.

Methods: base, AS (directional ablation of r), cs, act, la, random and ours (feature sets of
:func:`refusal_jax.study.pipeline.method_sets`), each clamp a multiply by ``clamp_value``. Two
protocols say where r and the feature sets come from:

- ``paper`` (the reference code's): per evaluation dataset, r at the best layer = mean over the
  dataset's prompts - mean over as many (filtered) harmless training prompts, LA-IG over the
  dataset's own prompts, and ``ours`` / ``la`` clamped with one feature set per prompt; ``cs`` /
  ``act`` / ``random`` global. Capability and refusal induction use each dataset's global sets
  and average over the datasets. The best layer is chosen on the training prompts (or given).
- ``heldout``: one direction and global feature sets from the (filtered) training prompts,
  evaluated on every dataset; nothing is fitted on the prompts it is scored on.

Scores per dataset and method: greedy responses judged by the substring judge (refusal score;
jailbreak = no refusal, opening with a compliance prefix when given) and, with a classifier
(:class:`refusal_jax.method.judges.ClassifierJudge`), the paper's jailbreak score. Capability under
each intervention: CE on harmless prompts with the unpatched model's own greedy rollouts as targets,
and CE on plain text. Refusal induction on harmless prompts: the ours and cs features *set* to
each value of a sweep, and r added at the best layer.

Expensive pieces (feature sets, responses, classifier verdicts, CE values) are cached by content
(:class:`refusal_jax.study.runs.Cache`), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from refusal_jax.core.patches import add_at_layers
from refusal_jax.method.capability import masked_ce, rollout_batch
from refusal_jax.method.direction import refusal_directions
from refusal_jax.method.features import FeatureSet, pad_width
from refusal_jax.method.interventions import clamp_features
from refusal_jax.method.judges import jailbreak_scores, judge_responses, refusal_token
from refusal_jax.method.prompts import (
    decode_responses,
    encode_prompts,
    generate_tokens,
    shared_padding,
)
from refusal_jax.study.pipeline import (
    METHODS,
    PipelineConfig,
    Prepared,
    accumulate_attributions,
    directions_and_layer,
    method_patches,
    method_sets,
    prepare_methods,
)
from refusal_jax.study.runs import Cache, content_key

PROTOCOLS = ("paper", "heldout")


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    pipeline: PipelineConfig
    protocol: str = "paper"
    induction_values: tuple[float, ...] = (10.0, 15.0, 20.0, 25.0, 30.0)
    n_induction: int = 100  # harmless prompts for refusal induction (the paper: 100)
    plain_max_tokens: int = 128

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r}: expected one of {PROTOCOLS}")
        if not self.induction_values:
            raise ValueError("induction_values is empty")


# ----------------------------------------------------------------------------- cached sets
def _to_arrays(prep: Prepared) -> dict:
    out = {
        "directions": np.asarray(prep.directions),
        "attributions": np.asarray(prep.attributions),
        "best_layer": np.int32(prep.best_layer),
        "refusal_token": np.int32(prep.refusal_token),
        "layer_rates": np.asarray(prep.layer_rates, np.float32),
    }
    for name, n in prep.n_kept.items():
        out[f"n_kept.{name}"] = np.int64(n)
    for name, fs in prep.sets.items():
        out[f"set.{name}.idx"], out[f"set.{name}.mask"] = np.asarray(fs.idx), np.asarray(fs.mask)
    return out


def _from_arrays(a: dict) -> Prepared:
    sets = {
        k[4:-4]: FeatureSet(jnp.asarray(a[k]), jnp.asarray(a[k[:-4] + ".mask"]))
        for k in a
        if k.startswith("set.") and k.endswith(".idx")
    }
    n_kept = {k[7:]: int(np.ravel(v)[0]) for k, v in a.items() if k.startswith("n_kept.")}
    return Prepared(
        int(np.ravel(a["refusal_token"])[0]),
        n_kept,
        a["directions"],
        int(np.ravel(a["best_layer"])[0]),
        [float(x) for x in a["layer_rates"]],
        a["attributions"],
        sets,
    )


def prepare_key(harmful_train, harmless_train, pc: PipelineConfig) -> str:
    return content_key("prepare", harmful_train, harmless_train, dataclasses.asdict(pc))


def cached_prepare(
    params, cfg, tokenizer, saes, harmful_train, harmless_train, pc, cache: Cache, progress=False
) -> Prepared:
    """:func:`refusal_jax.study.pipeline.prepare_methods` through the cache (keyed by the prompts
    and the settings)."""
    key = prepare_key(harmful_train, harmless_train, pc)
    compute = lambda: _to_arrays(
        prepare_methods(
            params, cfg, tokenizer, saes, harmful_train, harmless_train, pc, progress=progress
        )
    )
    return _from_arrays(cache.arrays("prepare", key, compute))


def dataset_prepare(
    params, cfg, tokenizer, saes, prompts, harmless, best_layer: int, pc: PipelineConfig,
    progress: bool = False,
) -> Prepared:  # fmt: skip
    """The reference code's per-dataset sets: r = mean over ``prompts`` - mean over the first
    ``len(prompts)`` ``harmless`` prompts (at every layer), LA-IG over ``prompts`` with
    r[best_layer], every method's set incl. per-prompt ``ours_per_sample`` / ``la_per_sample``
    (``act`` against all of ``harmless``). The prompts are not filtered."""
    if not prompts or not harmless:
        raise ValueError("dataset_prepare needs harmful and harmless prompts")
    enc = lambda xs: encode_prompts(
        tokenizer, xs, multiple=pc.pad_multiple, max_length=cfg.max_position_embeddings
    )
    rt = refusal_token(tokenizer)
    h, s_all = enc(prompts), enc(harmless)
    s_dir = enc(harmless[: len(prompts)])
    directions = refusal_directions(params, cfg, h, s_dir, batch_size=pc.batch_size)[0]
    r = directions[best_layer]
    attr = accumulate_attributions(params, cfg, saes, *h, r, rt, pc, progress)
    sets = method_sets(params, cfg, saes, attr, r, h, s_all, pc, per_sample=True)
    n = {"harmful": len(prompts), "harmless_direction": len(s_dir[0]), "harmless": len(harmless)}
    return Prepared(rt, n, np.asarray(directions), best_layer, [], attr, sets)


# ----------------------------------------------------------------------------- helpers
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


def _eval_patch(patches: dict, name: str, protocol: str):
    """The patch a method is scored with on a harmful dataset: per-prompt sets for ours and la
    under the paper protocol."""
    if protocol == "paper" and f"{name}_per_sample" in patches:
        return patches[f"{name}_per_sample"]
    return patches[name]


@dataclasses.dataclass
class _Run:
    """What every step of one benchmark run shares: the model, the settings, the cache, the
    progress bar, and the cached generation and classifier calls."""

    params: dict
    cfg: object
    tokenizer: object
    saes: object
    pc: PipelineConfig
    cache: Cache
    classifier: object
    common: int  # one padded length for every prompt set: each jitted step compiles once
    bar: object = None

    def enc(self, prompts):
        return encode_prompts(
            self.tokenizer,
            prompts,
            multiple=self.common,
            max_length=self.cfg.max_position_embeddings,
        )

    @property
    def gen_kw(self) -> dict:
        return dict(batch_size=self.pc.batch_size, max_new_tokens=self.pc.max_new_tokens)

    def responses(self, prompts, patch, tag, key) -> list[str]:
        """Greedy responses to ``prompts`` under ``patch``, cached under ``tag`` and ``key``."""

        def compute():
            toks = generate_tokens(
                self.params, self.cfg, *self.enc(prompts), patch=patch, **self.gen_kw
            )
            return {"prompts": list(prompts), "responses": decode_responses(self.tokenizer, *toks)}

        key = content_key(tag, key, prompts, dataclasses.asdict(self.pc))
        return self.cache.json(tag, key, compute)["responses"]

    def verdicts(self, prompts, texts):
        """The classifier's harmful verdicts, cached by its identity and the texts."""
        clf = self.classifier
        ident = (getattr(clf, "name", None), getattr(clf, "template", None))
        key = content_key("classifier", ident, prompts, texts)
        return self.cache.json("classifier", key, lambda: {"harmful": clf(prompts, texts)})[
            "harmful"
        ]


def _check_inputs(datasets: dict, harmless_eval) -> None:
    for dname, prompts in datasets.items():
        if not prompts:
            raise ValueError(f"dataset {dname!r} is empty")
    if not harmless_eval:
        raise ValueError("no harmless evaluation prompts")


def _prepare_step(run: _Run, bc, harmful_train, harmless_train, datasets: dict, progress: bool):
    """Where each dataset's direction and feature sets come from (per the protocol): returns
    (best layer, kept training counts, {dataset: Prepared}, {dataset: cache key})."""
    params, cfg, tokenizer, saes, pc, cache = (
        run.params, run.cfg, run.tokenizer, run.saes, run.pc, run.cache
    )  # fmt: skip
    base_key = prepare_key(harmful_train, harmless_train, pc)
    if bc.protocol == "heldout":
        train = cached_prepare(
            params, cfg, tokenizer, saes, harmful_train, harmless_train, pc, cache, progress
        )
        return (
            train.best_layer,
            train.n_kept,
            {d: train for d in datasets},
            dict.fromkeys(datasets, base_key),
        )

    # the training prompts give the best layer and the harmless prompts for r
    def layer():
        d = directions_and_layer(params, cfg, tokenizer, harmful_train, harmless_train, pc)
        kept = [p for p, k in zip(harmless_train, d.kept_harmless) if k]
        return {"best_layer": d.best_layer, "n_kept": d.n_kept, "kept_harmless": kept}

    lay = cache.json("layer", content_key("layer", base_key), layer)
    best, n_kept, kept = lay["best_layer"], lay["n_kept"], lay["kept_harmless"]
    preps, keys = {}, {}
    for d, prompts in datasets.items():
        keys[d] = content_key("dataset-prepare", prompts, kept, best, dataclasses.asdict(pc))
        compute = lambda prompts=prompts: _to_arrays(
            dataset_prepare(params, cfg, tokenizer, saes, prompts, kept, best, pc, progress)
        )
        preps[d] = _from_arrays(cache.arrays(f"prepare-{d}", keys[d], compute))
    return best, n_kept, preps, keys


def _jailbreak_step(run: _Run, bc, datasets: dict, patches: dict, keys: dict) -> dict:
    """1. Jailbreak and refusal scores of every method on each harmful dataset."""
    verdicts = None if run.classifier is None else run.verdicts
    jailbreak = {}
    for d, prompts in datasets.items():
        jailbreak[d] = {}
        for name in METHODS:
            texts = run.responses(
                prompts, _eval_patch(patches[d], name, bc.protocol), f"responses-{d}-{name}",
                (keys[d], name, bc.protocol),
            )  # fmt: skip
            jailbreak[d][name] = jailbreak_scores(
                prompts, texts, run.pc.compliance_prefixes, verdicts
            )
            run.bar.set_postfix_str(f"{d}/{name}")
            run.bar.update(1)
    return jailbreak


def _capability_step(
    run: _Run, bc, h_ids, h_mask, base, base_texts_key, plain_text, sources, patches, by_key
) -> dict:
    """2. Capability: CE on the unpatched model's own harmless rollouts (``base``) and CE on
    plain text, per method, averaged over the distinct preparations ``sources``."""
    params, cfg, pc = run.params, run.cfg, run.pc
    r_ids, r_mask, r_tgt = rollout_batch(h_ids, h_mask, base["tokens"], base["lengths"])
    p_ids, p_mask, p_tgt = plain_text_batch(run.tokenizer, plain_text, bc.plain_max_tokens)

    def ce(kind, patch, key):
        ids, mask, tgt = (r_ids, r_mask, r_tgt) if kind == "rollout" else (p_ids, p_mask, p_tgt)
        k = content_key("ce", kind, key, base_texts_key, plain_text, bc.plain_max_tokens)
        return run.cache.json(
            f"ce-{kind}",
            k,
            lambda: {"ce": masked_ce(params, cfg, ids, mask, tgt, patch, pc.batch_size)},
        )["ce"]

    capability = {name: {"harmless_rollout_ce": [], "plain_text_ce": []} for name in METHODS}
    for src in sources:
        p = patches[by_key[src]]
        for name in METHODS:
            capability[name]["harmless_rollout_ce"].append(ce("rollout", p[name], (src, name)))
            run.bar.update(1)
            capability[name]["plain_text_ce"].append(ce("plain", p[name], (src, name)))
            run.bar.update(1)
    for name in METHODS:
        row = capability[name]
        for k in ("harmless_rollout_ce", "plain_text_ce"):
            row[k] = float(np.mean(row[k]))
    for name in METHODS:
        for k in ("harmless_rollout_ce", "plain_text_ce"):
            capability[name][k + "_change"] = capability[name][k] - capability["base"][k]
    return capability


def _induction_step(run: _Run, bc, ind_prompts, base, best, sources, preps, by_key) -> dict:
    """3. Refusal induction on harmless prompts: features set to c, and r added at the best
    layer."""
    base_texts = decode_responses(
        run.tokenizer, base["tokens"][: len(ind_prompts)], base["lengths"][: len(ind_prompts)]
    )
    induction = {
        "values": list(bc.induction_values),
        "base": float(judge_responses(base_texts)[0].mean()),
        "ours": [],
        "cs": [],
        "add_direction": [],
    }
    refusal = lambda texts: float(judge_responses(texts)[0].mean())
    for src in sources:
        prep = preps[by_key[src]]
        for name in ("ours", "cs"):
            rates = []
            for c in bc.induction_values:
                fs = pad_width(prep.sets[name], run.pc.n_features)
                patch = clamp_features(run.saes, fs, c, mode="set")
                tag = f"induce-{name}"
                rates.append(refusal(run.responses(ind_prompts, patch, tag, (src, name, c))))
                run.bar.update(1)
            induction[name].append(rates)
        steer = add_at_layers(np.asarray(prep.r_best), [best], run.cfg.n_layers)
        texts = run.responses(ind_prompts, steer, "induce-add", (src, "add"))
        induction["add_direction"].append(refusal(texts))
        run.bar.update(1)
    induction["ours"] = np.mean(induction["ours"], axis=0).tolist()
    induction["cs"] = np.mean(induction["cs"], axis=0).tolist()
    induction["add_direction"] = float(np.mean(induction["add_direction"]))
    return induction


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
    """Run the benchmark; returns the results dict (schema: experiments/README.md).

    Steps: prepare directions and feature sets (:func:`_prepare_step`), jailbreak scores
    (:func:`_jailbreak_step`), capability (:func:`_capability_step`), refusal induction
    (:func:`_induction_step`); each expensive call is cached in ``cache``."""
    _check_inputs(datasets, harmless_eval)
    sets = [harmful_train, harmless_train, *datasets.values(), harmless_eval]
    common = shared_padding(tokenizer, *sets)
    pc = dataclasses.replace(bc.pipeline, pad_multiple=common)
    run = _Run(params, cfg, tokenizer, saes, pc, cache, classifier, common)

    best, n_kept, preps, keys = _prepare_step(
        run, bc, harmful_train, harmless_train, datasets, progress
    )
    patches = {d: method_patches(preps[d], saes, cfg, pc) for d in datasets}
    sources = list(dict.fromkeys(keys.values()))  # distinct preps: capability is averaged
    by_key = {keys[d]: d for d in datasets}

    n_ind = len(bc.induction_values)
    total = len(datasets) * len(METHODS) + len(sources) * (2 * len(METHODS) + 2 * n_ind + 1)
    run.bar = tqdm(total=total, desc="benchmark", disable=not progress)

    jailbreak = _jailbreak_step(run, bc, datasets, patches, keys)

    # The unpatched model's own greedy rollouts on the harmless prompts: CE targets and the
    # induction baseline.
    h_ids, h_mask = run.enc(harmless_eval)
    base_texts_key = content_key("rollouts", harmless_eval, dataclasses.asdict(pc))

    def rollouts():
        toks, lens = generate_tokens(params, cfg, h_ids, h_mask, **run.gen_kw)
        return {"tokens": toks, "lengths": lens}

    base = cache.arrays("rollouts", base_texts_key, rollouts)
    capability = _capability_step(
        run, bc, h_ids, h_mask, base, base_texts_key, plain_text, sources, patches, by_key
    )
    ind_prompts = harmless_eval[: bc.n_induction]
    induction = _induction_step(run, bc, ind_prompts, base, best, sources, preps, by_key)
    run.bar.close()

    features = {
        ("train" if bc.protocol == "heldout" else by_key[src]): {
            name: fs.pairs() for name, fs in preps[by_key[src]].sets.items() if not fs.per_sample
        }
        for src in sources
    }
    n_prompts = {f"train.{k}": v for k, v in n_kept.items()}
    n_prompts.update({k: len(v) for k, v in datasets.items()})
    n_prompts.update(harmless_eval=len(harmless_eval), induction=len(ind_prompts),
                     plain_text=len(plain_text))  # fmt: skip
    return {
        "protocol": bc.protocol,
        "best_layer": best,
        "n_prompts": n_prompts,
        "jailbreak": jailbreak,
        "capability": capability,
        "refusal_induction": induction,
        "features": features,
        "config": dataclasses.asdict(bc),
    }


__all__ = [
    "PROTOCOLS",
    "BenchmarkConfig",
    "cached_prepare",
    "dataset_prepare",
    "plain_text_batch",
    "prepare_key",
    "run_benchmark",
]
