"""experiments/benchmark.py end to end on the organism (reduced): both protocols, the results
schema, resume from the content-keyed cache, and the classifier judge wired through the script
(a tiny random HF Llama stands in for the HarmBench classifier)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refusal_jax.organism import ARTIFACTS, MODEL_DIR
from refusal_jax.study.pipeline import METHODS
from refusal_jax.study.subject import load_classifier
from tests.support.kill import assert_killed_run_resumes
from tests.support.paths import load_script

pytestmark = [
    pytest.mark.skipif(
        not (MODEL_DIR / "config.json").exists() or not (ARTIFACTS / "saes").exists(),
        reason="organism artifacts missing",
    ),
    pytest.mark.slow,
]
ARGS = ["--n-train", "16", "--n-prompts", "12", "--n-steps", "2", "--max-new-tokens", "8",
        "--induction-values", "4,32", "--best-layer", "0", "--quiet"]  # fmt: skip
DATASETS = {"heldout_plain", "heldout_failing_wrappers"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for protocol in ("paper", "heldout"):
        folder = tmp_path_factory.mktemp(protocol)
        res = load_script("benchmark").main(["--out", str(folder), "--protocol", protocol, *ARGS])
        out[protocol] = (next(folder.iterdir()), res)
    return out


def _check_schema(folder, res, protocol):
    on_disk = json.loads((folder / "results.json").read_text())
    assert on_disk["jailbreak"] == res["jailbreak"] and on_disk["protocol"] == protocol
    for name in ("jailbreak.png", "induction.png"):
        assert (folder / name).stat().st_size > 0
    assert set(res["jailbreak"]) == DATASETS and res["best_layer"] == 0
    for rows in res["jailbreak"].values():
        assert set(rows) == set(METHODS)
        for r in rows.values():
            assert 0 <= r["jailbreak_rate"] <= 1 - r["refusal_rate"] + 1e-9
        assert rows["base"]["refusal_rate"] >= 0.9 and rows["random"]["refusal_rate"] >= 0.9
    cap = res["capability"]
    assert set(cap) == set(METHODS)
    assert cap["base"]["plain_text_ce_change"] == 0.0 == cap["base"]["harmless_rollout_ce_change"]
    for r in cap.values():
        assert r["harmless_rollout_ce"] > 0 and r["plain_text_ce"] > 0
        assert r["plain_text_ce_change"] == pytest.approx(
            r["plain_text_ce"] - cap["base"]["plain_text_ce"]
        )
    ind = res["refusal_induction"]
    assert ind["values"] == [4.0, 32.0] and len(ind["ours"]) == len(ind["cs"]) == 2
    assert all(0 <= v <= 1 for v in ind["ours"] + ind["cs"] + [ind["add_direction"], ind["base"]])
    sources = {"train"} if protocol == "heldout" else DATASETS
    assert set(res["features"]) == sources
    for sets in res["features"].values():
        assert set(sets) == {"ours", "la", "cs", "act", "random"}
        assert all(len(v) == 20 for v in sets.values())


def test_paper_protocol(runs):
    folder, res = runs["paper"]
    _check_schema(folder, res, "paper")
    # Per dataset: its own direction and sets (the datasets differ, so do their sets).
    f = res["features"]
    assert f["heldout_plain"]["ours"] != f["heldout_failing_wrappers"]["ours"]
    for d in DATASETS:  # one cached set of directions, attributions and sets per dataset
        assert len(list((folder / "cache").glob(f"prepare-{d}-*.safetensors"))) == 1


def test_heldout_protocol(runs):
    folder, res = runs["heldout"]
    _check_schema(folder, res, "heldout")
    for rows in res["jailbreak"].values():  # F* from training prompts jailbreaks, random does not
        assert rows["ours"]["jailbreak_rate"] > rows["random"]["jailbreak_rate"] + 0.3


def test_sigkilled_run_resumes_to_the_uninterrupted_results(runs, tmp_path):
    folder, res = runs["heldout"]
    args = ["--protocol", "heldout", *ARGS]
    assert_killed_run_resumes("benchmark", args, res, folder, tmp_path / "killed")


def test_resume_reuses_the_cache_and_adds_the_classifier(runs, tmp_path, monkeypatch):
    """A second run on the same folder recomputes nothing; with --classifier-dir it only adds
    the classifier's verdicts, which equal the judge run directly on the cached responses."""
    import refusal_jax.study.benchmark as bench
    from refusal_jax.method.judges import ClassifierJudge
    from tests.support.hf_tiny import save_tiny_classifier

    folder, res = runs["paper"]
    fns = ("generate_tokens", "prepare_methods", "directions_and_layer", "dataset_prepare")
    for name in (*fns, "masked_ce"):
        monkeypatch.setattr(bench, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} rerun"))
    again = load_script("benchmark").main(["--resume", str(folder), *ARGS])
    assert again["jailbreak"] == res["jailbreak"] and again["capability"] == res["capability"]
    assert again["refusal_induction"] == res["refusal_induction"]

    cls_dir = save_tiny_classifier(tmp_path / "cls", MODEL_DIR)
    cls_args = ["--classifier-dir", str(cls_dir), "--classifier-dtype", "float32"]
    with_cls = load_script("benchmark").main(["--resume", str(folder), *ARGS, *cls_args])
    judge = load_classifier(cls_dir)
    for d in DATASETS:
        for m in ("base", "ours"):
            row = with_cls["jailbreak"][d][m]
            assert {k: row[k] for k in res["jailbreak"][d][m]} == res["jailbreak"][d][m]
            files = list((folder / "cache").glob(f"responses-{d}-{m}-*.json"))
            assert len(files) == 1
            cached = json.loads(files[0].read_text())["value"]  # checksummed entry
            direct = judge(cached["prompts"], cached["responses"])
            assert row["classifier_harmful_rate"] == pytest.approx(float(np.mean(direct)))
    # Verdicts are cached too: a third run does not call the classifier.
    monkeypatch.setattr(ClassifierJudge, "scores", lambda *a, **k: pytest.fail("classifier rerun"))
    third = load_script("benchmark").main(["--resume", str(folder), *ARGS, *cls_args])
    assert third["jailbreak"] == with_cls["jailbreak"]
