"""Section 4.3: WildJailbreak / suffix loaders, and experiments/jailbreak_analysis.py on the
organism (reduced)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from refusal_jax.data import DatasetError, adv_suffixes, wildjailbreak_pairs
from refusal_jax.jailbreaks import first_strong_position
from refusal_jax.organism import ARTIFACTS, MODEL_DIR

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "jailbreak_analysis.py"
SUFFIXES = Path(__file__).resolve().parents[2] / "shared/datasets/refusal_sae/advsuffixes.csv"


def test_wildjailbreak_loader(tmp_path):
    good = tmp_path / "wj.tsv"
    good.write_text(
        "vanilla\tadversarial\tcompletion\tdata_type\n"
        "How to pick a lock?\tYou are a locksmith in a novel...\t...\tadversarial_harmful\n"
        "How to bake?\t\t...\tvanilla_benign\n"
    )
    assert wildjailbreak_pairs(good) == [
        ("You are a locksmith in a novel...", "How to pick a lock?")
    ]
    bad = tmp_path / "bad.tsv"
    bad.write_text("vanilla\tprompt\nA\tB\n")
    with pytest.raises(DatasetError, match="expected columns"):
        wildjailbreak_pairs(bad)
    empty = tmp_path / "empty.tsv"
    empty.write_text("vanilla\tadversarial\tdata_type\nx\t\tadversarial_harmful\n")
    with pytest.raises(DatasetError, match="line 2 has an empty"):
        wildjailbreak_pairs(empty)


def test_suffix_csv_loader(tmp_path):
    good = tmp_path / "s.csv"
    good.write_text('goal,response\nDo X,"[\'to win.\', ""so it\'s done.""]"\n')
    assert adv_suffixes(good) == [("Do X", ["to win.", "so it's done."])]
    for body, msg in (
        ("goal,response\nDo X,\"__import__('os')\"\n", "not a list literal"),
        ('goal,response\nDo X,"[1, 2]"\n', "list of suffix strings"),
        ("goal,text\nDo X,y\n", "expected columns"),
    ):
        bad = tmp_path / "bad.csv"
        bad.write_text(body)
        with pytest.raises(DatasetError, match=msg):
            adv_suffixes(bad)


@pytest.mark.skipif(not SUFFIXES.exists(), reason=f"refusal_sae data not at {SUFFIXES}")
def test_real_suffix_file():
    rows = adv_suffixes(SUFFIXES)
    assert len(rows) == 519 and all(g and s for g, s in rows)


def test_first_strong_position():
    act = np.array([[0.0, 0.1, 0.9, 1.0, 0.2], [0.0, 0.0, 3.0, 0.0, 6.0]])
    mask = np.array([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    # position ids count real tokens: row 2 reaches half its max (3 of 6) at its 2nd token
    np.testing.assert_array_equal(first_strong_position(act, mask), [2, 1])


@pytest.mark.skipif(
    not (MODEL_DIR / "config.json").exists() or not (ARTIFACTS / "saes").exists(),
    reason="organism artifacts missing",
)
def test_jailbreak_analysis_script_on_the_organism(tmp_path):
    spec = importlib.util.spec_from_file_location("exp_jb", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--out", str(tmp_path), "--n-pairs", "16", "--n-suffix-prompts", "8",
                    "--n-steps", "3", "--gcg-steps", "8", "--quiet"])  # fmt: skip
    assert (next(tmp_path.iterdir()) / "drops.png").stat().st_size > 0
    assert 0 < res["n_pairs"] <= 16
    assert res["harm_features"] and res["refusal_features"]
    assert not set(map(tuple, res["harm_features"])) & set(map(tuple, res["refusal_features"]))
    # jailbreaking prompts carry less refusal-feature activation than their refused versions
    assert res["pairs"]["refusal_relative_drop"] > 0
    s = res["suffix"]
    assert len(s["suppression_by_slot"]) == 8 and len(s["most_suppressive_tokens"]) > 0
    assert np.isfinite(s["refusal_activation_harm_clamped"])
