"""Dataset loaders: the real refusal_direction files when present, malformed files always."""

from __future__ import annotations

import json

import pytest

from refusal_jax.study.data import DatasetError, eval_set, read_instructions, split
from tests.support.paths import SHARED

SHARED = SHARED / "refusal_direction"


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"refusal_direction data not at {SHARED}")
def test_reads_the_real_layout():
    assert len(split(SHARED, "harmful_train")) == 260
    hb = eval_set(SHARED, "harmbench_test")
    assert len(hb) == 100 and all(isinstance(s, str) and s for s in hb)
    assert len(eval_set(SHARED, "advbench", n=None)) == 520


def test_malformed_files_are_rejected(tmp_path, monkeypatch):
    bad = tmp_path / "x.json"
    cases = {
        "[]": "non-empty JSON list",
        "{": "not valid JSON",
        '[{"category": "a"}]': "record 0 has no string 'instruction'",
        '[{"instruction": "ok"}, {"instruction": "  "}]': "record 1 has an empty instruction",
        '{"instruction": "x"}': "non-empty JSON list",
    }
    for text, msg in cases.items():
        bad.write_text(text)
        with pytest.raises(DatasetError, match=msg):
            read_instructions(bad)
    with pytest.raises(DatasetError, match="no such dataset file"):
        read_instructions(tmp_path / "missing.json")
    monkeypatch.delenv("REFUSAL_JAX_DATA", raising=False)
    with pytest.raises(DatasetError, match="REFUSAL_JAX_DATA"):
        split(None, "harmful_train")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "harmful_train.json").write_text(
        json.dumps([{"instruction": "a", "category": None}, {"instruction": "b", "category": "c"}])
    )
    monkeypatch.setenv("REFUSAL_JAX_DATA", str(tmp_path))
    assert split(None, "harmful_train", n=1) == ["a"]
    assert read_instructions(tmp_path / "splits" / "harmful_train.json", with_category=True)[1] == (
        "b",
        "c",
    )
