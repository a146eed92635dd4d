"""Fixed-shape batches and the batch size fitted to small prompt sets."""

import numpy as np
import pytest

from refusal_jax.core.batching import batches, bucket, fit_batch_size
from refusal_jax.method.capability import masked_ce
from refusal_jax.method.prompts import generate_tokens
from tests.support.tiny import TINY


def test_batches_pad_the_last_batch_with_the_last_prompt():
    ids = np.arange(10, dtype=np.int32).reshape(5, 2)
    mask = np.ones_like(ids)
    out = list(batches(ids, mask, 4))
    assert [n for *_, n in out] == [4, 1]
    assert all(b.shape == (4, 2) for b, _, _ in out)
    np.testing.assert_array_equal(np.asarray(out[1][0]), np.repeat(ids[4:], 4, 0))
    with pytest.raises(ValueError, match="empty prompt set"):
        next(batches(ids[:0], mask[:0], 4))


def test_bucket():
    assert [bucket(n) for n in (0, 1, 8, 9, 10, 16, 17, 100)] == [8, 8, 8, 16, 16, 16, 32, 128]
    assert bucket(3, minimum=1) == 4 and bucket(1, minimum=1) == 1
    with pytest.raises(ValueError, match="must be >= 0"):
        bucket(-1)


def test_fit_batch_size():
    assert fit_batch_size(32, 4) == 8  # one batch of 8 rows, not 32
    assert fit_batch_size(32, 9) == 16
    assert fit_batch_size(32, 32) == 32 and fit_batch_size(32, 500) == 32
    assert fit_batch_size(6, 4) == 6  # never above the requested size
    assert fit_batch_size(32, 3, multiple=1) == 3
    for bad in ((0, 4), (32, 0)):
        with pytest.raises(ValueError, match="must be >= 1"):
            fit_batch_size(*bad)


def test_fitted_batch_gives_the_same_generations_and_ce(tiny_params):
    """Rows are independent: 5 prompts in one batch of 8 rows or of 32 rows agree."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, TINY.vocab_size, size=(5, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0
    small = generate_tokens(tiny_params, TINY, ids, mask, batch_size=fit_batch_size(32, 5),
                            max_new_tokens=5)  # fmt: skip
    full = generate_tokens(tiny_params, TINY, ids, mask, batch_size=32, max_new_tokens=5)
    for a, b in zip(small, full):
        np.testing.assert_array_equal(a, b)
    tgt = mask.copy()
    tgt[:, :3] = 0
    ce8 = masked_ce(tiny_params, TINY, ids, mask, tgt, None, fit_batch_size(32, 5))
    ce32 = masked_ce(tiny_params, TINY, ids, mask, tgt, None, 32)
    assert ce8 == pytest.approx(ce32, rel=1e-6) and ce8 > 0
