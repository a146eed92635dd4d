"""The content-position rule (refusal_jax.core.positions): special tokens and the chat
template's constant prefix are excluded, left padding does not move the prefix, the legacy
``skip`` rule is unchanged, and LA-IG / act use the same function."""

import jax.numpy as jnp
import numpy as np
import pytest

from refusal_jax.core.positions import (
    ContentPositions,
    common_prefix_length,
    content_positions,
    special_token_ids,
    template_prefix_length,
)
from refusal_jax.method.laig import position_weights
from refusal_jax.method.prompts import encode_prompts
from refusal_jax.organism import MODEL_DIR
from refusal_jax.organism.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(MODEL_DIR)


def test_mask_excludes_prefix_specials_and_padding():
    ids = np.array([[0, 0, 7, 9, 5, 3, 4], [7, 9, 8, 5, 6, 6, 4]])
    mask = np.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    rule = ContentPositions(special_ids=(4, 5), prefix_length=2)
    got = np.asarray(rule.mask(ids, mask))
    want = np.array([[0, 0, 0, 0, 0, 1, 0], [0, 0, 1, 0, 1, 1, 0]], bool)
    np.testing.assert_array_equal(got, want)
    groups = rule.groups(ids, mask)
    np.testing.assert_array_equal(groups[0], [-1, -1, 0, 0, 0, 1, 0])
    assert common_prefix_length(ids, mask) == 2  # [7, 9] starts both rows


def test_legacy_skip_rule_is_the_old_position_weights():
    mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    for skip in (0, 1, 3):
        pos = jnp.cumsum(mask, -1) - 1
        old = ((pos >= skip) & mask.astype(bool)).astype(jnp.float32)
        np.testing.assert_array_equal(position_weights(mask, skip=skip), old)
    with pytest.raises(ValueError, match="token ids"):
        ContentPositions(special_ids=(1,)).mask(None, mask)


def test_organism_template_rule(tok):
    rule = content_positions(tok)
    assert set(rule.special_ids) == {0, 1, 2, 3, 4, 5}
    n = template_prefix_length(tok)
    assert n == rule.prefix_length >= 2  # <bos><start_of_turn>user ...
    ids, mask = encode_prompts(tok, ["How do I bake bread?", "Write a poem about cats."])
    keep = np.asarray(rule.mask(ids, mask))
    for r in range(2):
        real = ids[r][mask[r].astype(bool)]
        text = tok.decode(real[np.asarray(keep[r])[mask[r].astype(bool)]].tolist())
        assert "bake bread" in text or "poem about cats" in text
        assert "<start_of_turn>" not in text and "<bos>" not in text
        assert not keep[r][mask[r].astype(bool)][:n].any()
    assert common_prefix_length(ids, mask) >= n
    # options: no prefix, no specials
    assert content_positions(tok, special=False, prefix="none") == ContentPositions()
    assert content_positions(tok, prefix=7).prefix_length == 7
    with pytest.raises(ValueError, match="prefix must be"):
        content_positions(tok, prefix="bogus")
    assert 2 in special_token_ids(tok)
