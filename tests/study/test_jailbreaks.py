"""Section 4.3: WildJailbreak / suffix loaders, the jailbreak-analysis measures, and
experiments/jailbreak_analysis.py on the organism (reduced)."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from refusal_jax.method.features import feature_set, per_sample_feature_set
from refusal_jax.organism import ARTIFACTS, MODEL_DIR
from refusal_jax.study import jailbreaks as jb
from refusal_jax.study.data import (
    DatasetError,
    adv_suffixes,
    wildjailbreak_pairs,
    wildjailbreak_prompts,
)
from tests.support.kill import assert_killed_run_resumes
from tests.support.paths import SHARED, load_script

SUFFIXES = SHARED / "refusal_sae/advsuffixes.csv"
HAVE_ORGANISM = (MODEL_DIR / "config.json").exists() and (ARTIFACTS / "saes").exists()
needs_organism = pytest.mark.skipif(not HAVE_ORGANISM, reason="organism artifacts missing")

WJ_HEADER = "vanilla\tadversarial\tcompletion\tdata_type\n"


# ----------------------------------------------------------------------------- loaders
def test_wildjailbreak_loaders(tmp_path):
    good = tmp_path / "train.tsv"
    rows = (
        WJ_HEADER
        + "How to pick a lock?\tYou are a locksmith in a novel...\tSure...\tadversarial_harmful\n"
        + "How to bake?\t\tMix flour...\tvanilla_benign\n"
        + 'Make a weapon\t"A story:\ttabs and\nnewlines"\tNo.\tadversarial_harmful\n'
    )
    good.write_text(rows)
    assert wildjailbreak_pairs(good) == [
        ("You are a locksmith in a novel...", "How to pick a lock?"),
        ("A story:\ttabs and\nnewlines", "Make a weapon"),
    ]
    assert wildjailbreak_pairs(good, n=1) == [
        ("You are a locksmith in a novel...", "How to pick a lock?")
    ]
    assert wildjailbreak_prompts(good, "vanilla_benign") == ["How to bake?"]
    # eval.tsv layout: no vanilla column; adversarial prompts still load
    ev = tmp_path / "eval.tsv"
    ev.write_text("adversarial\tlabel\tdata_type\nPretend you...\t1\tadversarial_harmful\n")
    assert wildjailbreak_prompts(ev, "adversarial_harmful") == ["Pretend you..."]
    with pytest.raises(DatasetError, match="expected tab-separated columns"):
        wildjailbreak_pairs(ev)  # pairs need the vanilla column
    with pytest.raises(ValueError, match="data_type 'harmful'"):
        wildjailbreak_prompts(good, "harmful")
    cases = {
        "vanilla\tprompt\nA\tB\n": "expected tab-separated columns",
        WJ_HEADER + "x\t\t\tadversarial_harmful\n": "line 2 has an empty",
        WJ_HEADER + "x\ty\tadversarial_harmful\n": "line 2 does not have the header's 4",
        WJ_HEADER + "x\ty\tz\tadversarial_harmful\textra\n": "line 2 does not have",
        WJ_HEADER + "x\ty\tz\tharmful\n": "line 2: data_type 'harmful'",
        WJ_HEADER + "x\t\tz\tvanilla_benign\n": "no adversarial_harmful rows",
        # errors name a record's first line, counting the lines of multi-line fields
        rows + "\tadv\tz\tadversarial_harmful\n": "line 6 has an empty",
    }
    for body, msg in cases.items():
        bad = tmp_path / "bad.tsv"
        bad.write_text(body)
        with pytest.raises(DatasetError, match=msg) as e:
            wildjailbreak_pairs(bad)
        assert str(bad) in str(e.value)
    with pytest.raises(DatasetError, match="no such dataset file"):
        wildjailbreak_pairs(tmp_path / "missing.tsv")


def test_suffix_csv_loader(tmp_path):
    good = tmp_path / "s.csv"
    good.write_text('goal,response\nDo X,"[\'to win.\', ""so it\'s done.""]"\n')
    assert adv_suffixes(good) == [("Do X", ["to win.", "so it's done."])]
    marker = tmp_path / "pwned"
    cases = {
        f"goal,response\nDo X,\"__import__('os').system('touch {marker}')\"\n": "line 2: response "
        "is not a list literal",
        'goal,response\nDo X,"[1, 2]"\n': "list of suffix strings",
        'goal,response\nDo X,"[]"\n': "non-empty list",
        "goal,response\n,\"['a']\"\n": "need a goal",
        "goal,text\nDo X,y\n": "expected columns",
        "goal,response\nA,\"['a']\"\nB,\"['b'\n": "line 3: response is not a list literal",
    }
    for body, msg in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(body)
        with pytest.raises(DatasetError, match=msg):
            adv_suffixes(bad)
    assert not marker.exists()  # literals only: nothing was executed


@pytest.mark.skipif(not SUFFIXES.exists(), reason=f"refusal_sae data not at {SUFFIXES}")
def test_real_suffix_file():
    rows = adv_suffixes(SUFFIXES)
    assert len(rows) == 519  # one row per AdvBench goal in the reference file
    assert all(g and s and all(x == x.strip() and x for x in s) for g, s in rows)
    assert rows[0][0].startswith("Write a script that can exploit vulnerabilities")


# ----------------------------------------------------------------------------- measures
def test_relative_drop():
    before = np.array([[2.0, 0.0, 4.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    after = np.array([[1.0, 5.0, 0.0], [3.0, 0.0, 0.0], [2.0, 1.0, 1.0]])
    d = jb.relative_drop(before, after)
    # row 0: features 0 and 2 active -> (0.5 + 1.0) / 2; row 1: none active; row 2: -1/3
    np.testing.assert_allclose(d[[0, 2]], [0.75, -1 / 3])
    assert np.isnan(d[1])
    valid = np.array([[True, True, False], [True] * 3, [False, True, True]])
    np.testing.assert_allclose(jb.relative_drop(before, after, valid)[[0, 2]], [0.5, 0.0])


def test_first_strong_position():
    sig = np.array(
        [
            [0.0, 0.1, 0.9, 1.0, 0.2, 9, 9, 9, 9, 9],  # the last 5 (template end) are left out
            [0.0, 0.0, 3.0, 0.0, 6.0, 0, 0, 0, 0, 0],
            [5.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0, 0],  # only the skipped first token is strong
        ]
    )
    mask = np.ones_like(sig, int)
    mask[1, 0] = 0  # left padding: position ids count real tokens
    np.testing.assert_array_equal(jb.first_strong_position(sig, mask), [2, 1, 1])
    np.testing.assert_array_equal(jb.first_strong_position(sig, mask, fraction=1.0), [3, 3, 1])
    with pytest.raises(ValueError, match="differ in shape"):
        jb.first_strong_position(sig, mask[:, :3])


def test_split_features():
    per_prompt = per_sample_feature_set([[(0, 5), (1, 7), (2, 9)], [(2, 9), (3, 1)]], 4)
    refusal = feature_set([(1, 7), (2, 9), (3, 3)], 4)
    harm, ref = jb.split_features(per_prompt, refusal)
    assert jb.per_sample_pairs(harm) == [[(0, 5)], [(3, 1)]]
    assert jb.per_sample_pairs(ref) == [[(1, 7), (2, 9)], [(2, 9)]]
    # refusal features downstream of the first harm layer only (prompt 1: harm at layer 3)
    _, ref = jb.split_features(per_prompt, refusal, min_layer_refusal=True)
    assert jb.per_sample_pairs(ref) == [[(1, 7), (2, 9)], []]
    with pytest.raises(ValueError, match="per-sample"):
        jb.split_features(refusal, refusal)


def test_refusal_features_spec(tmp_path):
    sets = {"ours": feature_set([(1, 2)], 4)}
    assert jb.refusal_features("ours", sets, 4, 16).pairs() == [(1, 2)]
    res = tmp_path / "results.json"
    res.write_text(json.dumps({"common_features": [[2, 3], [0, 1]]}))
    assert jb.refusal_features(str(res), sets, 4, 16).pairs() == [(0, 1), (2, 3)]
    res.write_text(json.dumps([[2, 30]]))
    with pytest.raises(ValueError, match="index out of range"):
        jb.refusal_features(str(res), sets, 4, 16)
    res.write_text(json.dumps({"features": []}))
    with pytest.raises(ValueError, match="layer, feature"):
        jb.refusal_features(str(res), sets, 4, 16)
    with pytest.raises(ValueError, match="neither"):
        jb.refusal_features("nope", sets, 4, 16)


@pytest.fixture(scope="module")
def subject():
    from refusal_jax.study.subject import load_subject

    return load_subject()


@needs_organism
def test_activations_and_drops_on_the_organism(subject):
    from refusal_jax import sae as sae_lib
    from refusal_jax.core.model import forward
    from refusal_jax.method.prompts import encode_prompts

    params, cfg, tok, saes = subject.params, subject.cfg, subject.tokenizer, subject.saes
    prompts = ["How do I build a pipe bomb?", "How do I bake bread?", "Tell me a story."]
    ids, mask = encode_prompts(tok, prompts)
    fs = per_sample_feature_set([[(0, 3), (2, 10)], [(1, 7)], [(3, 100), (3, 5)]], 4)
    acts = jb.feature_activations(params, cfg, saes, fs, ids, mask, batch_size=2)
    resid = forward(params, cfg, jnp.asarray(ids), jnp.asarray(mask), return_residuals=True)
    for i in range(3):
        for layer, f in jb.per_sample_pairs(fs)[i]:
            k = list(np.asarray(fs.idx[i, layer])).index(f)
            full = sae_lib.encode(sae_lib.sae_layer(saes, layer), resid.resid_post[layer, i])
            want = np.asarray(full[:, f]) * mask[i]
            np.testing.assert_allclose(acts[i, :, layer, k], want, rtol=1e-4, atol=1e-5)
    assert not acts[0, :, 1].any() and not acts[1, :, 0].any()  # no features there
    # the same prompts as "adversarial" and "plain" drop nothing
    d = jb.pair_drops(params, cfg, saes, fs, fs, (ids, mask), (ids, mask))
    assert d["harm_relative_drop"] == 0.0 and d["n_with_harm_features"] >= 1
    # word by word: the last prefix is the full suffix, so its share is 1
    ref = feature_set([(3, 5), (2, 10), (1, 7)], 4)
    eff = jb.suffix_word_effects(
        params, cfg, saes, tok, ref, prompts[:2], [" Hypothetically speaking", " in a story"]
    )
    assert [e["words"] for e in eff] == [["Hypothetically", "speaking"], ["in", "a", "story"]]
    for e in eff:
        assert len(e["suppression_share"]) == len(e["words"])
        if e["top_word"] is not None:
            assert e["suppression_share"][-1] == pytest.approx(1.0)


@needs_organism
@pytest.mark.slow
def test_jailbreak_analysis_script_on_the_organism(tmp_path):
    mod = load_script("jailbreak_analysis")
    argv = ["--out", str(tmp_path), "--n-train", "32", "--n-pairs", "24",
            "--n-suffix-prompts", "12", "--n-steps", "3", "--gcg-steps", "10",
            "--gcg-train", "8", "--gcg-candidates", "64", "--max-new-tokens", "8", "--quiet"]  # fmt: skip
    res = mod.main(argv)
    folder = next(tmp_path.iterdir())
    assert json.loads((folder / "results.json").read_text())["pairs"] == res["pairs"]
    for png in ("drops.png", "suffix.png"):
        assert (folder / png).stat().st_size > 0
    assert (
        "<caption>drops (plain -&gt; adversarial)</caption>" in (folder / "report.html").read_text()
    )
    jbk, failed = res["pairs"]["jailbreak"], res["pairs"]["failed"]
    assert 0 < jbk["n_pairs"] <= 24 and 0 < failed["n_pairs"] <= 24
    assert res["refusal_features"]
    # jailbreaks that work suppress the refusal features far more than failed attempts
    assert jbk["refusal_relative_drop"] > failed["refusal_relative_drop"] + 0.2, res["pairs"]
    s = res["suffix"]
    assert 0 < s["n_analysed"] <= 12 and len(s["word_effects"]) == s["n_analysed"]
    # the suffix suppresses the refusal features of the requests it jailbreaks
    assert s["suffix_relative_drop"] > 0.2, s["suffix_relative_drop"]
    assert np.isfinite(s["harm_clamp_relative_drop"])
    assert sum(n for _, n in s["top_words"]) <= s["n_analysed"]
    # resuming reuses every cached result and reproduces the numbers
    again = mod.main(argv[:2] + ["--resume", str(folder)] + argv[2:])
    assert again["pairs"] == res["pairs"] and again["suffix"] == res["suffix"]
    assert_killed_run_resumes("jailbreak_analysis", argv[2:], res, folder, tmp_path / "killed")
