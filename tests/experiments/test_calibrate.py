"""experiments/calibrate.py on the organism (reduced): grid structure and choice rule, and a
SIGKILLed second run that ``--resume`` brings to the same results."""

from __future__ import annotations

import json

import pytest

from refusal_jax.organism import ARTIFACTS, MODEL_DIR
from refusal_jax.study.subject import ORGANISM_METHOD
from tests.support.kill import assert_killed_run_resumes
from tests.support.paths import load_script


@pytest.mark.slow
@pytest.mark.skipif(
    not (MODEL_DIR / "config.json").exists() or not (ARTIFACTS / "saes").exists(),
    reason="organism artifacts missing",
)
def test_calibrate_grid_on_the_organism(tmp_path):
    mod = load_script("calibrate")
    args = ["--n-train", "24", "--n-val", "24", "--clamp-values", "0,-0.5", "--candidates",
            "10,40", "--quiet"]  # fmt: skip
    res = mod.main(["--out", str(tmp_path), *args])
    folder = next(tmp_path.iterdir())
    assert json.loads((folder / "results.json").read_text())["best"] == res["best"]
    assert (folder / "calibration.png").stat().st_size > 0
    html = (folder / "report.html").read_text()  # the experiment page, with the script's PNG
    assert "Experiment: calibrate" in html and 'alt="calibration.png"' in html
    assert json.loads((folder / "subject.json").read_text())["model_dir"] is None
    cells = {(g["n_candidates"], g["clamp_value"]) for g in res["grid"]}
    assert cells == {(10, 0.0), (10, -0.5), (40, 0.0), (40, -0.5)}
    score = lambda g: g["jailbreak_rate"] - g["harmless_refusal_rate"]
    assert score(res["best"]) == max(score(g) for g in res["grid"])
    # the organism's committed defaults (F0 40, c = -0.5) are what this grid picks
    best = (res["best"]["n_candidates"], res["best"]["clamp_value"])
    assert best == (ORGANISM_METHOD["n_candidates"], ORGANISM_METHOD["clamp_value"]) == (40, -0.5)
    assert_killed_run_resumes("calibrate", args, res, folder, tmp_path / "killed")
