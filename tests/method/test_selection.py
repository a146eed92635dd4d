"""Feature selection (refusal_jax.method.selection) on hand-built attributions and planted
decoder rows of the tiny model's JumpReLU SAEs (fixtures in tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

from refusal_jax.method.features import feature_set
from refusal_jax.method.selection import (
    candidate_features,
    cs_features,
    random_features,
    select_features,
    top_features,
)
from tests.support.tiny import TINY, TINY_D_SAE

CFG = TINY
D_SAE = TINY_D_SAE


def test_selection_on_hand_built_attributions(tiny_saes):
    L, B, S = CFG.n_layers, 4, D_SAE
    attr = np.zeros((L, B, S), np.float32)
    attr[0, :, 10] = 5.0
    attr[1, :, 20] = 4.0
    attr[2, 0, 30] = 100.0  # huge for one sample only
    attr[2, 1:, 31] = 3.0
    cand = feature_set([(0, 10), (1, 20), (2, 30), (2, 31), (0, 11)], L, S)
    glob = select_features(attr, n=3, candidates=cand)
    assert glob.pairs() == [(0, 10), (1, 20), (2, 30)]
    per = select_features(attr, n=2, candidates=cand, per_sample=True)
    assert per.pairs(0) == [(0, 10), (2, 30)]
    assert per.pairs(1) == [(0, 10), (1, 20)]
    # Without the F0 restriction a feature outside the candidates can win.
    attr[1, :, 77] = 50.0
    assert (1, 77) in top_features(attr.mean(1), 3).pairs()
    assert (1, 77) not in select_features(attr, 3, candidates=cand).pairs()
    # Candidates: a planted decoder row is found at its layer.
    r = np.asarray(tiny_saes.W_dec[1, 42])
    f0 = candidate_features(tiny_saes, r, k=4)
    assert (1, 42) in f0.pairs() and len(f0.pairs()) == 4 * L
    assert cs_features(tiny_saes, r, n=1).pairs() == [(1, 42)]
    rnd = random_features(glob, S, seed=0)
    np.testing.assert_array_equal(rnd.counts_per_layer(), glob.counts_per_layer())
    with pytest.raises(ValueError, match="out of range"):
        feature_set([(0, S)], L, S)
    with pytest.raises(ValueError, match="layer out of range"):
        feature_set([(L, 0)], L, S)
