"""Out-of-distribution probing (the paper's probing experiment): which representation predicts
whether the model refuses, on prompts unlike the ones the probe was trained on?

Linear probes (scikit-learn logistic regression on standardized inputs) on last-token
representations are trained on vanilla harmful (refused, label 1) vs harmless (label 0) prompts
and tested on groups with their own labels. The reference code (wj210/refusal_sae,
notebooks/wildjailbreak.ipynb) tests on vanilla harmful prompts (label 1) and on adversarial
prompts that jailbreak the model (label 0: the model does not refuse them), so a probe scores on
jailbreaks only if it follows the model's refusal rather than the request's harmfulness. Its
Gemma-2-2B numbers (overall, adversarial / vanilla): refusal features .87 (.86 / .88), dense
.51 (.03 / .98), random features .50. Every group also reports the share predicted 1 (harmful /
refused), so the harmfulness reading (jailbreaks labelled 1) is one minus the jailbreak accuracy.

Probes (:func:`probe_report`):

- ``refusal``: the SAE activations of a feature set (the refusal features) at the last token,
  each feature at its own layer;
- ``dense``: the residual stream at the layer with the best accuracy on a validation part of the
  training prompts (ties: the first such layer, as the reference's ``max``); the reference code
  evaluated the last layer's probe instead (a defect). Every layer's probe is reported too;
- ``random``: as many random SAE features (per layer like the refusal set), averaged over
  several draws.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from refusal_jax import sae as sae_lib
from refusal_jax.core.batching import batches
from refusal_jax.core.config import ModelConfig
from refusal_jax.core.model import forward_fn
from refusal_jax.method.features import FeatureSet
from refusal_jax.sae import SAE


@functools.partial(jax.jit, static_argnames=("cfg",))
def _last_resid(params, cfg, ids, mask):
    return forward_fn(params, cfg, ids, mask, return_residuals=True).resid_post[:, :, -1]


def last_token_resid(
    params: dict, cfg: ModelConfig, ids: ArrayLike, mask: ArrayLike, batch_size: int = 32
) -> np.ndarray:
    """resid_post at the last prompt position for every layer: ids [N, T] int, mask [N, T]
    (left padding) -> [N, L, D]."""
    out = []
    for b_ids, b_mask, n in batches(ids, mask, batch_size):
        out.append(np.asarray(_last_resid(params, cfg, b_ids, b_mask)).transpose(1, 0, 2)[:n])
    return np.concatenate(out)


def feature_matrix(saes: SAE, features: FeatureSet, resid: ArrayLike) -> np.ndarray:
    """SAE activations of a (global) feature set from last-token residuals [N, L, D]:
    [N, K], columns in ``features.pairs()`` order (stacked ``saes`` [L, ...])."""
    if features.per_sample:
        raise ValueError("probes take a global feature set (one column per feature)")
    if resid.ndim != 3 or resid.shape[1] != features.n_layers:
        raise ValueError(
            f"resid has shape {resid.shape}; expected [N, {features.n_layers} layers, D]"
        )
    cols = []
    for layer, f in features.pairs():
        sae_l = sae_lib.sae_layer(saes, layer)
        idx = jnp.asarray([f], jnp.int32)
        cols.append(np.asarray(sae_lib.encode_features(sae_l, jnp.asarray(resid[:, layer]), idx)))
    if not cols:
        raise ValueError("empty feature set")
    return np.concatenate(cols, axis=1)


def fit_probe(x: ArrayLike, y: ArrayLike, seed: int = 0) -> object:
    """A standardized logistic-regression probe (a fitted sklearn ``Pipeline``) on x [N, F]
    (F features), y [N] labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(x) != len(y):
        raise ValueError(f"{len(x)} inputs for {len(y)} labels")
    if len(np.unique(y)) < 2:
        raise ValueError("probe training data holds one class only")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    return probe.fit(x, y)


def best_dense_layer(
    resid: ArrayLike, y: ArrayLike, val_fraction: float = 0.25, seed: int = 0
) -> tuple[int, list[float]]:
    """The layer whose dense probe, trained on the rest, scores best on a held-out
    ``val_fraction`` of the training prompts (ties: the first): resid [N, L, D], y [N] ->
    (layer, accuracy per layer [L])."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction {val_fraction} must be in (0, 1)")
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = max(2, int(len(y) * val_fraction))
    val, tr = order[:n_val], order[n_val:]
    accs = []
    for layer in range(resid.shape[1]):
        probe = fit_probe(resid[tr, layer], y[tr], seed)
        accs.append(float(probe.score(resid[val, layer], y[val])))
    return int(np.argmax(accs)), accs


def _evaluate(probe, view, groups: dict) -> dict:
    accs, pred_pos, right, total = {}, {}, 0, 0
    for g, (resid, y) in groups.items():
        pred = probe.predict(view(resid))
        accs[g] = float((pred == y).mean())
        pred_pos[g] = float((pred == 1).mean())
        right, total = right + int((pred == y).sum()), total + len(y)
    return {"overall": right / total, "groups": accs, "predicted_positive": pred_pos}


def probe_report(
    saes: SAE,
    refusal: FeatureSet,
    random_sets: FeatureSet | Sequence[FeatureSet],
    train_resid: ArrayLike,
    train_y: ArrayLike,
    groups: dict,
    seed: int = 0,
) -> dict:
    """Accuracies of the probes on every test group ({name: (resid [N, L, D], labels [N])})
    and overall (all groups pooled), and the share of each group predicted 1.
    ``random_sets``: one or more random feature sets (results averaged over them). train_resid
    [N, L, D], train_y [N]; stacked ``saes`` [L, ...]."""
    if not groups:
        raise ValueError("no test groups")
    for g, (resid, y) in groups.items():
        if len(resid) != len(y) or len(y) == 0:
            raise ValueError(f"group {g!r}: {len(resid)} inputs for {len(y)} labels")
    random_sets = [random_sets] if isinstance(random_sets, FeatureSet) else list(random_sets)
    layer, val_accs = best_dense_layer(train_resid, train_y, seed=seed)
    fit_eval = lambda view: _evaluate(fit_probe(view(train_resid), train_y, seed), view, groups)
    by_layer = [fit_eval(lambda r, lay=lay: r[:, lay]) for lay in range(train_resid.shape[1])]
    draws = [fit_eval(lambda r, fs=fs: feature_matrix(saes, fs, r)) for fs in random_sets]
    mean = lambda key, g=None: float(np.mean([d[key] if g is None else d[key][g] for d in draws]))
    random = {
        "overall": mean("overall"),
        "groups": {g: mean("groups", g) for g in groups},
        "predicted_positive": {g: mean("predicted_positive", g) for g in groups},
        "overall_per_draw": [d["overall"] for d in draws],
    }
    return {
        "dense_layer": layer,
        "dense_val_accuracy_by_layer": val_accs,
        "probes": {
            "refusal": fit_eval(lambda r: feature_matrix(saes, refusal, r)),
            "dense": by_layer[layer],
            "random": random,
        },
        "dense_by_layer": by_layer,
    }


__all__ = [
    "best_dense_layer",
    "feature_matrix",
    "fit_probe",
    "last_token_resid",
    "probe_report",
]
