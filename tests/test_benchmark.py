"""experiments/benchmark.py end to end on the organism (reduced), its results schema, and resume
from the content-keyed cache."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from refusal_jax.organism import ARTIFACTS, MODEL_DIR
from refusal_jax.pipeline import METHODS

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "config.json").exists() or not (ARTIFACTS / "saes").exists(),
    reason="organism artifacts missing",
)
SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "benchmark.py"
ARGS = ["--n-train", "16", "--n-prompts", "12", "--n-steps", "2", "--max-new-tokens", "8",
        "--induction-values", "4,32", "--quiet"]  # fmt: skip


def _script():
    spec = importlib.util.spec_from_file_location("exp_benchmark", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    res = _script().main(["--out", str(out), *ARGS])
    return next(out.iterdir()), res


def test_results_schema_and_orderings(run):
    folder, res = run
    on_disk = json.loads((folder / "results.json").read_text())
    assert on_disk["jailbreak"] == res["jailbreak"]
    assert (folder / "jailbreak.png").stat().st_size > 0
    assert (folder / "induction.png").stat().st_size > 0
    assert set(res["jailbreak"]) == {"heldout_plain", "heldout_failing_wrappers"}
    for rows in res["jailbreak"].values():
        assert set(rows) == set(METHODS)
        for r in rows.values():
            assert 0 <= r["jailbreak_rate"] <= 1 - r["refusal_rate"] + 1e-9
        assert rows["base"]["refusal_rate"] >= 0.9
        assert rows["ours"]["jailbreak_rate"] > rows["random"]["jailbreak_rate"] + 0.3
    cap = res["capability"]
    assert set(cap) == set(METHODS)
    assert cap["base"]["plain_text_ce_change"] == 0.0
    for r in cap.values():
        assert r["harmless_rollout_ce"] > 0 and r["plain_text_ce"] > 0
    ind = res["refusal_induction"]
    assert ind["values"] == [4.0, 32.0] and len(ind["ours"]) == len(ind["cs"]) == 2
    assert all(0 <= v <= 1 for v in ind["ours"] + ind["cs"] + [ind["add_direction"]])
    assert len(res["features"]["ours"]) == 20


def test_resume_reuses_the_cache(run, monkeypatch):
    folder, res = run
    import refusal_jax.benchmark as bench

    calls = []
    real = bench.generate_tokens
    monkeypatch.setattr(bench, "generate_tokens", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(bench, "prepare_methods", lambda *a, **k: pytest.fail("recomputed"))
    again = _script().main(["--resume", str(folder), *ARGS])
    assert len(calls) == 1  # only the unpatched harmless rollouts (CE targets) are regenerated
    assert again["jailbreak"] == res["jailbreak"]
    assert again["refusal_induction"] == res["refusal_induction"]
