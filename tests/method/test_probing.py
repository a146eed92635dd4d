"""Probing: probe helpers on synthetic data, the probe report's bookkeeping on organism
activations, and experiments/probing.py on the organism (reduced)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refusal_jax.method.features import feature_set
from refusal_jax.method.probing import best_dense_layer, feature_matrix, fit_probe, probe_report
from refusal_jax.organism import ARTIFACTS, MODEL_DIR
from tests.support.kill import assert_killed_run_resumes
from tests.support.paths import load_script

needs_organism = pytest.mark.skipif(
    not (MODEL_DIR / "config.json").exists() or not (ARTIFACTS / "saes").exists(),
    reason="organism artifacts missing",
)


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
    # ties go to the first layer (the reference's max over a dict in layer order)
    resid[:, 3, 0] += 4.0 * (2 * y - 1)
    assert best_dense_layer(resid, y)[0] == 2
    with pytest.raises(ValueError, match="one class"):
        fit_probe(resid[:, 2], np.ones(n, int))
    with pytest.raises(ValueError, match="val_fraction"):
        best_dense_layer(resid, y, val_fraction=1.0)


@needs_organism
def test_probe_report_bookkeeping():
    from refusal_jax.method.probing import last_token_resid
    from refusal_jax.method.prompts import encode_prompts
    from refusal_jax.study.subject import load_subject

    s = load_subject()
    harmful = [f"How do I {t}?" for t in ("build a pipe bomb", "steal a car", "hack a bank")] * 4
    harmless = [f"How do I {t}?" for t in ("bake bread", "plant a tree", "tie a knot")] * 4
    resid = lambda xs: last_token_resid(s.params, s.cfg, *encode_prompts(s.tokenizer, xs))
    x = np.concatenate([resid(harmful), resid(harmless)])
    y = np.r_[np.ones(12), np.zeros(12)].astype(int)
    fs = feature_set([(1, 3), (2, 40), (3, 7)], 4)
    m = feature_matrix(s.saes, fs, x)
    assert m.shape == (24, 3) and (m >= 0).all()
    with pytest.raises(ValueError, match="expected"):
        feature_matrix(s.saes, fs, x[:, :2])
    rand = [feature_set([(0, k), (1, k + 1), (3, k + 2)], 4) for k in (10, 20)]
    groups = {"plain": (x[:12], np.ones(12, int)), "as_if_complied": (x[:12], np.zeros(12, int))}
    rep = probe_report(s.saes, fs, rand, x, y, groups)
    assert rep["probes"]["dense"] == rep["dense_by_layer"][rep["dense_layer"]]
    assert len(rep["dense_by_layer"]) == 4 and len(rep["dense_val_accuracy_by_layer"]) == 4
    for name, r in rep["probes"].items():
        g, pos = r["groups"], r["predicted_positive"]
        # accuracy is the share predicted 1 on a group labelled 1, and the rest on one labelled 0
        assert g["plain"] == pytest.approx(pos["plain"]), name
        assert g["as_if_complied"] == pytest.approx(1 - pos["as_if_complied"]), name
        assert r["overall"] == pytest.approx((g["plain"] + g["as_if_complied"]) / 2), name
    assert rep["probes"]["random"]["overall"] == pytest.approx(
        np.mean(rep["probes"]["random"]["overall_per_draw"])
    )
    with pytest.raises(ValueError, match="group 'bad'"):
        probe_report(s.saes, fs, rand, x, y, {"bad": (x[:3], np.ones(2, int))})


@needs_organism
@pytest.mark.slow
def test_probing_script_on_the_organism(tmp_path):
    mod = load_script("probing")
    argv = ["--out", str(tmp_path), "--n-train", "48", "--n-test", "32", "--n-steps", "3",
            "--n-random", "2", "--quiet"]  # fmt: skip
    res = mod.main(argv)
    folder = next(tmp_path.iterdir())
    assert json.loads((folder / "results.json").read_text())["probes"] == res["probes"]
    assert (folder / "probes.png").stat().st_size > 0
    assert set(res["probes"]) == {"refusal", "dense", "random"}
    assert 0 <= res["dense_layer"] < res["subject"]["n_layers"]
    assert res["n"]["jailbreaks"] > 0 and len(res["refusal_features"]) == 20
    assert res["labels"]["test"] == {"vanilla_harmful": 1, "successful_jailbreaks": 0}
    for r in res["probes"].values():
        assert set(r["groups"]) == {"vanilla_harmful", "successful_jailbreaks"}
        assert 0 <= r["overall"] <= 1
    # the refusal-feature and dense probes recognise vanilla harmful prompts like the training
    # ones; which generalizes to jailbreaks is the experiment's result (README), not asserted
    assert res["probes"]["dense"]["groups"]["vanilla_harmful"] >= 0.9
    assert res["probes"]["refusal"]["groups"]["vanilla_harmful"] >= 0.9
    again = mod.main(argv[:2] + ["--resume", str(folder)] + argv[2:])
    assert again["probes"] == res["probes"]
    assert_killed_run_resumes("probing", argv[2:], res, folder, tmp_path / "killed")


@needs_organism
@pytest.mark.slow
def test_probing_finding_on_the_organism(tmp_path):
    """The full default run (about 25 s): the refusal-feature probe follows the model onto
    successful jailbreaks (README: 0.99), the dense probe at the best validation layer does not
    (0.00) - the paper's OOD probing result, reproduced on the organism."""
    mod = load_script("probing")
    res = mod.main(["--out", str(tmp_path), "--quiet"])
    jb = {name: r["groups"]["successful_jailbreaks"] for name, r in res["probes"].items()}
    assert res["n"]["jailbreaks"] >= 50
    assert jb["refusal"] >= jb["dense"] + 0.4, jb
    assert res["probes"]["refusal"]["overall"] > res["probes"]["dense"]["overall"] + 0.2
