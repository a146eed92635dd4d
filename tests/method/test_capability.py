"""CE under intervention: masked CE against a direct computation, rollout batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from refusal_jax.core.config import gemma2_config, shape_kw
from refusal_jax.core.model import forward, generate, init_params
from refusal_jax.core.patches import add_at_layers
from refusal_jax.method.capability import masked_ce, rollout_batch

# smaller than tests.support.tiny's TINY: CE plumbing only (vocab, d_model, layers, heads, KV
# heads, head dim, MLP)
CFG = gemma2_config(**shape_kw(40, 16, 2, 2, 1, 8, 32), sliding_window=8, eos_token_ids=(1,))


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.PRNGKey(0), scale=0.3)


def test_rollout_ce_matches_direct_sum(params):
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 40, size=(5, 6)).astype(np.int32)
    mask = np.ones_like(ids)
    ids[1, :2], mask[1, :2] = 0, 0
    out = generate(params, CFG, ids, mask, max_new_tokens=4, eos_token_ids=(7,))
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    full, fmask, target = rollout_batch(ids, mask, tokens, lengths)
    assert target.sum() == lengths.sum()
    steer = add_at_layers(jnp.ones(16), [0], 2, 0.5)
    for patch in (None, steer):
        got = masked_ce(params, CFG, full, fmask, target, patch, batch_size=2)  # ragged batches
        logits = np.asarray(
            forward(params, CFG, jnp.asarray(full), jnp.asarray(fmask), patch=patch).logits
        )
        logp = (
            logits
            - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
            - logits.max(-1, keepdims=True)
        )
        nll = [
            -logp[b, t - 1, full[b, t]]
            for b in range(5)
            for t in range(1, full.shape[1])
            if target[b, t]
        ]
        assert got == pytest.approx(float(np.mean(nll)), rel=1e-5)
    assert masked_ce(params, CFG, full, fmask, target, steer) != pytest.approx(
        masked_ce(params, CFG, full, fmask, target), rel=1e-3
    )
    with pytest.raises(ValueError, match="no target tokens"):
        masked_ce(params, CFG, full, fmask, np.zeros_like(target))
