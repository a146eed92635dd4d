"""Probing: probe helpers on synthetic data, and experiments/probing.py on the organism (reduced)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from refusal_jax.organism import ARTIFACTS, MODEL_DIR
from refusal_jax.probing import best_dense_layer, fit_probe

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "probing.py"


def test_probe_and_validation_layer_on_synthetic_data():
    rng = np.random.default_rng(0)
    n, layers, d = 200, 4, 8
    y = rng.integers(0, 2, n)
    resid = rng.normal(size=(n, layers, d))
    resid[:, 2, 0] += 4.0 * (2 * y - 1)  # only layer 2 separates the classes
    layer, accs = best_dense_layer(resid, y)
    assert layer == 2 and accs[2] >= 0.95 and max(accs[:2] + accs[3:]) < 0.8
    probe = fit_probe(resid[:, 2], y)
    assert probe.score(resid[:, 2], y) >= 0.95
    with pytest.raises(ValueError, match="one class"):
        fit_probe(resid[:, 2], np.ones(n, int))


@pytest.mark.skipif(
    not (MODEL_DIR / "config.json").exists() or not (ARTIFACTS / "saes").exists(),
    reason="organism artifacts missing",
)
def test_probing_script_on_the_organism(tmp_path):
    spec = importlib.util.spec_from_file_location("exp_probing", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--out", str(tmp_path), "--n-train", "48", "--n-test", "24", "--n-steps", "3",
                    "--quiet"])  # fmt: skip
    folder = next(tmp_path.iterdir())
    assert json.loads((folder / "results.json").read_text())["probes"] == res["probes"]
    assert (folder / "probes.png").stat().st_size > 0
    assert set(res["probes"]) == {"refusal", "dense", "random"}
    assert 0 <= res["dense_layer"] < res["subject"]["n_layers"]
    assert res["n"]["jailbreaks"] > 0 and len(res["refusal_features"]) == 20
    for r in res["probes"].values():
        assert set(r["groups"]) == {"vanilla_harmful", "successful_jailbreaks"}
        assert 0 <= r["overall"] <= 1
    # every probe recognises vanilla harmful prompts like the ones it was trained on
    assert res["probes"]["dense"]["groups"]["vanilla_harmful"] >= 0.9
    assert res["probes"]["refusal"]["groups"]["vanilla_harmful"] >= 0.9
