"""Out-of-distribution probing (the paper's probing experiment): do refusal features recognise
harmful requests that jailbreak the model?

Linear probes (scikit-learn logistic regression on standardized inputs) on last-token
representations, trained on vanilla harmful (label 1) vs harmless (label 0) prompts and tested on
groups such as vanilla harmful prompts and successful jailbreaks (both label 1):

- ``refusal``: the SAE activations of a feature set (the paper's refusal features) at the last
  token, each feature at its own layer;
- ``dense``: the residual stream at the layer with the best accuracy on a validation part of the
  training prompts (the reference code used the last layer);
- ``random``: as many random SAE features, drawn per layer like the refusal set.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from refusal_jax import sae as sae_lib
from refusal_jax.direction import batches
from refusal_jax.features import FeatureSet
from refusal_jax.model import forward_fn


@functools.partial(jax.jit, static_argnames=("cfg",))
def _last_resid(params, cfg, ids, mask):
    return forward_fn(params, cfg, ids, mask, return_residuals=True).resid_post[:, :, -1]


def last_token_resid(params, cfg, ids, mask, batch_size: int = 32) -> np.ndarray:
    """resid_post at the last prompt position for every layer: [N, L, D] (left padding)."""
    out = []
    for b_ids, b_mask, n in batches(ids, mask, batch_size):
        out.append(np.asarray(_last_resid(params, cfg, b_ids, b_mask)).transpose(1, 0, 2)[:n])
    return np.concatenate(out)


def feature_matrix(saes, features: FeatureSet, resid: np.ndarray) -> np.ndarray:
    """SAE activations of a (global) feature set from last-token residuals [N, L, D]:
    [N, n_features], columns in ``features.pairs()`` order."""
    cols = []
    for layer, f in features.pairs():
        sae_l = sae_lib.sae_layer(saes, layer)
        idx = jnp.asarray([f], jnp.int32)
        cols.append(np.asarray(sae_lib.encode_features(sae_l, jnp.asarray(resid[:, layer]), idx)))
    if not cols:
        raise ValueError("empty feature set")
    return np.concatenate(cols, axis=1)


def fit_probe(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """A standardized logistic-regression probe."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y)) < 2:
        raise ValueError("probe training data holds one class only")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    return probe.fit(x, y)


def best_dense_layer(resid: np.ndarray, y: np.ndarray, val_fraction: float = 0.25, seed: int = 0):
    """Layer whose dense probe scores best on a held-out part of the training prompts:
    (layer, validation accuracy per layer)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_val = max(2, int(len(y) * val_fraction))
    val, tr = order[:n_val], order[n_val:]
    accs = []
    for layer in range(resid.shape[1]):
        probe = fit_probe(resid[tr, layer], y[tr], seed)
        accs.append(float(probe.score(resid[val, layer], y[val])))
    return int(np.argmax(accs)), accs


def probe_report(
    saes, refusal: FeatureSet, random: FeatureSet, train_resid, train_y, groups: dict, seed=0
) -> dict:
    """Accuracies of the three probes on every test group ({name: (resid [N, L, D], labels)})
    and overall (all groups pooled)."""
    layer, val_accs = best_dense_layer(train_resid, train_y, seed=seed)
    views = {
        "refusal": lambda r: feature_matrix(saes, refusal, r),
        "dense": lambda r: r[:, layer],
        "random": lambda r: feature_matrix(saes, random, r),
    }
    out = {"dense_layer": layer, "dense_val_accuracy_by_layer": val_accs, "probes": {}}
    for name, view in views.items():
        probe = fit_probe(view(train_resid), train_y, seed)
        accs, right, total = {}, 0, 0
        for g, (resid, y) in groups.items():
            pred = probe.predict(view(resid))
            accs[g] = float((pred == y).mean())
            right, total = right + int((pred == y).sum()), total + len(y)
        out["probes"][name] = {"overall": right / total, "groups": accs}
    return out


__all__ = [
    "best_dense_layer",
    "feature_matrix",
    "fit_probe",
    "last_token_resid",
    "probe_report",
]
