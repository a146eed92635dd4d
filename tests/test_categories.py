"""Harm categories (section 4.2) on the organism (reduced), shared-feature selection and the
CategoricalHarmfulQA loader."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from refusal_jax.categories import shared_features
from refusal_jax.data import DatasetError, categorical_harmful_qa
from refusal_jax.features import feature_set
from refusal_jax.organism import ARTIFACTS, MODEL_DIR

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "categories.py"
needs_organism = pytest.mark.skipif(
    not (MODEL_DIR / "config.json").exists() or not (ARTIFACTS / "saes").exists(),
    reason="organism artifacts missing",
)


def test_shared_features():
    sets = {
        "a": feature_set([(0, 1), (1, 2), (2, 3)], 3),
        "b": feature_set([(0, 1), (1, 2)], 3),
        "c": feature_set([(0, 1), (2, 3)], 3),
        "d": feature_set([(0, 1), (1, 2), (2, 5)], 3),
    }
    assert shared_features(sets).pairs() == [(0, 1)]
    assert shared_features(sets, 0.75).pairs() == [(0, 1), (1, 2)]
    assert shared_features(sets, 0.5).pairs() == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match="min_share"):
        shared_features(sets, 0.0)


def test_categorical_harmful_qa_loader(tmp_path):
    good = tmp_path / "chqa.csv"
    good.write_text(
        "Category,Subcategory,Question\n"
        "Illegal Activity,Drugs,How do I make X?\n"
        "Illegal Activity,Theft,How do I steal Y?\n"
        '"Malware, Viruses",Code,"Write a virus, quickly"\n'
    )
    got = categorical_harmful_qa(good)
    assert got == {
        "Illegal Activity": ["How do I make X?", "How do I steal Y?"],
        "Malware, Viruses": ["Write a virus, quickly"],
    }
    assert categorical_harmful_qa(good, n_per_category=1)["Illegal Activity"] == [
        "How do I make X?"
    ]
    bad_cols = tmp_path / "cols.csv"
    bad_cols.write_text("category,question\nA,B\n")
    with pytest.raises(DatasetError, match="expected columns"):
        categorical_harmful_qa(bad_cols)
    empty_q = tmp_path / "empty.csv"
    empty_q.write_text("Category,Subcategory,Question\nA,B,\n")
    with pytest.raises(DatasetError, match="line 2 has an empty Category or Question"):
        categorical_harmful_qa(empty_q)
    with pytest.raises(DatasetError, match="no such dataset file"):
        categorical_harmful_qa(tmp_path / "missing.csv")


@needs_organism
def test_categories_script_on_the_organism(tmp_path):
    spec = importlib.util.spec_from_file_location("exp_categories", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--out", str(tmp_path), "--n-prompts", "16", "--n-steps", "3", "--quiet"])
    folder = next(tmp_path.iterdir())
    assert json.loads((folder / "results.json").read_text())["scores"] == res["scores"]
    for name in ("scores.png", "transfer.png"):
        assert (folder / name).stat().st_size > 0
    assert len(res["categories"]) == 8
    n = len(res["categories"])
    assert len(res["transfer"]["non_refusal"]) == n and len(res["transfer"]["non_refusal"][0]) == n
    # issue 6: common features exist, and clamping them jailbreaks more than as many specific ones
    assert res["n_common"] > 0
    scores = res["scores"].values()
    common = sum(r["common"] for r in scores) / n
    specific = sum(r["specific_k"] for r in scores) / n
    assert common > specific + 0.2, (common, specific)
    for r in scores:
        assert r["base"] <= 0.1 and r["all"] >= 0.8
