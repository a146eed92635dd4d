"""Harm categories (section 4.2): shared-feature selection, the simultaneous clamp + prompt hold
the interventions are made of, the CategoricalHarmfulQA loader, and experiments/categories.py on
the organism (reduced), its results schema and resume."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from refusal_jax.method.features import feature_set
from refusal_jax.organism import ARTIFACTS, MODEL_DIR
from refusal_jax.study.categories import CategoryFeatures, restrict, shared_features, split_common
from refusal_jax.study.data import DatasetError, categorical_harmful_qa
from tests.support.kill import assert_killed_run_resumes
from tests.support.paths import load_script

needs_organism = pytest.mark.skipif(
    not (MODEL_DIR / "config.json").exists() or not (ARTIFACTS / "saes").exists(),
    reason="organism artifacts missing",
)


def test_shared_features_and_specific_ranking():
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
    attr = np.zeros((3, 8))
    attr[2, 3], attr[1, 2] = 5.0, 1.0
    cf = split_common(0, sets, {c: attr for c in sets})
    assert isinstance(cf, CategoryFeatures)
    assert cf.specific["a"].pairs() == [(1, 2), (2, 3)]
    assert cf.specific_top("a", 1).pairs() == [(2, 3)]  # most attributed first
    assert cf.specific_top("b", 3).pairs() == [(1, 2)]
    # on a subset of the categories the common features are recomputed over that subset
    sub = restrict(cf, ["a", "b"])
    assert list(sub.sets) == ["a", "b"] and sub.common.pairs() == [(0, 1), (1, 2)]
    assert sub.specific["a"].pairs() == [(2, 3)]
    with pytest.raises(KeyError, match="'e'"):
        restrict(cf, ["a", "e"])


def test_active_categories_keep_those_whose_fstar_clamp_works(monkeypatch):
    import refusal_jax.study.categories as categories

    sets = {c: feature_set([(0, i)], 2) for i, c in enumerate("abc")}
    cf = split_common(0, sets, {c: np.zeros((2, 4)) for c in sets})
    seen = {}

    def fake(params, cfg, tok, saes, cf_, prompts, clamp, pc, **kw):
        seen.update(n_common=len(cf_.common.pairs()), transfer=kw["transfer"])
        rates = {"a": 0.9, "b": 0.1, "c": 0.5}
        return {
            "score_key": "jailbreak_rate",
            "scores": {c: {"all": {"jailbreak_rate": rates[c]}} for c in cf_.sets},
        }

    monkeypatch.setattr(categories, "category_interventions", fake)
    args = (None, None, None, None, cf, {}, -1.0, None)
    active, rates = categories.active_categories(*args, 0.5)
    assert active == ["a", "c"] and rates == {"a": 0.9, "b": 0.1, "c": 0.5}
    assert seen == {"n_common": 0, "transfer": False}  # only the 'all' runs
    assert categories.active_categories(*args, 0.0)[0] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="min_rate"):
        categories.active_categories(*args, 1.5)


def test_categorical_harmful_qa_loader(tmp_path):
    expect = {
        "Illegal Activity": ["How do I make X?", "How do I steal Y?"],
        "Malware, Viruses": ["Write a virus, quickly"],
    }
    csv = tmp_path / "chqa.csv"
    csv.write_text(
        "Category,Subcategory,Question\n"
        "Illegal Activity,Drugs,How do I make X?\n"
        "Illegal Activity,Theft,How do I steal Y?\n"
        '"Malware, Viruses",Code,"Write a virus, quickly"\n'
    )
    records = [
        {"Category": c, "Subcategory": "s", "Question": q} for c, qs in expect.items() for q in qs
    ]
    as_list, as_lines, nested = tmp_path / "l.json", tmp_path / "r.jsonl", tmp_path / "n.json"
    as_list.write_text(json.dumps(records))
    as_lines.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    nested.write_text(json.dumps({c: {"sub": qs} for c, qs in expect.items()}))
    for path in (csv, as_list, as_lines, nested):
        assert categorical_harmful_qa(path) == expect, path
    assert (
        categorical_harmful_qa(csv, n_per_category=1)["Illegal Activity"]
        == expect["Illegal Activity"][:1]
    )
    mirror = tmp_path / "m.json"  # lower-case columns, "prompt" for the question
    mirror.write_text(json.dumps([{"category": "A", "subcategory": "b", "prompt": "q?"}]))
    assert categorical_harmful_qa(mirror) == {"A": ["q?"]}

    bad = {
        "cols.csv": ("category,text\nA,B\n", r"line 2 has no question column"),
        "empty.csv": ("Category,Subcategory,Question\nA,B,\n", "line 2 has an empty"),
        "extra.csv": ("Category,Question\nA,B,C\n", "line 2 has more fields"),
        "header.csv": ("", "empty file"),
        "rec.json": ('[{"Category": "A", "Question": "q"}, 3]', "record 1 is not a record"),
        "cat.json": ('[{"Question": "q"}]', "record 0 has no category column"),
        "nested.json": ('{"A": ["q"]}', "category 'A' must map subcategories to lists"),
        "lines.jsonl": ('{"Category": "A", "Question": "q"}\n{oops\n', "line 2 is not JSON"),
        "none.json": ("[]", "no questions"),
        "scalar.json": ("3", "expected a list of records"),
    }
    for name, (text, msg) in bad.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(DatasetError, match=msg) as err:
            categorical_harmful_qa(path)
        assert str(path) in str(err.value)
    with pytest.raises(DatasetError, match="no such dataset file"):
        categorical_harmful_qa(tmp_path / "missing.csv")


@pytest.fixture(scope="module")
def organism():

    from refusal_jax.study.subject import load_subject

    return load_subject()


def _organism_batch(subject, n=6):
    from refusal_jax.method.prompts import encode_prompts
    from refusal_jax.organism.corpus import build_corpus

    prompts = build_corpus(seed=0).prompts("test", harmful=True, wrapped=False)[:n]
    return encode_prompts(subject.tokenizer, prompts)


@needs_organism
def test_simultaneous_clamp_and_hold_is_one_encode(organism):
    """Clamp A and hold B at given values, both from one encoding of x (the reference code's
    clamp with retained features) = the dense encode -> edit -> decode + error."""
    from refusal_jax import sae as sae_lib
    from refusal_jax.core.model import forward, positions_from_mask
    from refusal_jax.core.patches import Compose, PatchContext, Simultaneous
    from refusal_jax.method.interventions import (
        clamp_dense_reference,
        clamp_features,
        hold_features,
    )

    s = organism
    ids, mask = _organism_batch(s)
    x = forward(s.params, s.cfg, ids, mask, return_residuals=True).resid_post[2]
    sae2 = sae_lib.sae_layer(s.saes, 2)
    f = sae_lib.encode(sae2, x)
    live = np.argsort(-np.asarray(f).mean(axis=(0, 1)))[:6]  # active features, so edits matter
    a, b = [(2, int(i)) for i in sorted(live[:3])], [(2, int(i)) for i in sorted(live[3:])]
    # per-token values [L, B, T, K], K in the set's (sorted) feature order
    vals = np.random.default_rng(0).uniform(0, 2, size=(s.cfg.n_layers, *x.shape[:2], 3))
    fa, fb = feature_set(a, s.cfg.n_layers), feature_set(b, s.cfg.n_layers)
    patch = Simultaneous((clamp_features(s.saes, fa, -1.0), hold_features(s.saes, fb, vals)))
    ctx = PatchContext(positions_from_mask(mask), jnp.asarray(mask, bool), jnp.bool_(True))
    got = patch(x, jnp.int32(2), ctx)
    idx = jnp.asarray([i for _, i in a + b])
    new = jnp.concatenate([-1.0 * f[..., idx[:3]], jnp.asarray(vals[2], f.dtype)], axis=-1)
    ref = clamp_dense_reference(sae2, x, idx, jnp.ones(6, bool), new)
    valid = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(ref)[valid], atol=1e-4)
    # Composing instead encodes B after A's edit: a different (not the reference's) result.
    seq = Compose((clamp_features(s.saes, fa, -1.0), hold_features(s.saes, fb, vals)))
    assert np.abs(np.asarray(seq(x, jnp.int32(2), ctx) - ref)[valid]).max() > 1e-3


@needs_organism
def test_hold_on_prompt_leaves_generated_tokens_alone(organism):
    from refusal_jax.core.model import generate
    from refusal_jax.core.patches import PromptOnly
    from refusal_jax.method.features import pad_width, per_sample_feature_set
    from refusal_jax.method.interventions import clamp_features, clean_feature_values, hold_features

    s = organism
    ids, mask = _organism_batch(s)
    fs = pad_width(feature_set([(1, 162), (1, 431), (2, 67), (3, 22)], s.cfg.n_layers), 5)
    clean = clean_feature_values(s.params, s.cfg, s.saes, fs, ids, mask, batch_size=4)
    assert clean.shape == (s.cfg.n_layers, len(ids), ids.shape[1], 5)
    gen = lambda patch: np.asarray(
        generate(s.params, s.cfg, ids, mask, max_new_tokens=8, patch=patch).tokens
    )
    base = gen(None)
    # Held at their own clean values: nothing changes.
    np.testing.assert_array_equal(gen(hold_features(s.saes, fs, clean, prompt_only=True)), base)
    # Held at zero on the prompt only == a prompt-only set-to-zero clamp, unlike an every-step one.
    zero = gen(hold_features(s.saes, fs, np.zeros_like(clean), prompt_only=True))
    np.testing.assert_array_equal(zero, gen(PromptOnly(clamp_features(s.saes, fs, 0.0, "set"))))
    per = per_sample_feature_set([[(1, 2)]] * len(ids), s.cfg.n_layers)
    with pytest.raises(ValueError, match="global feature set"):
        clean_feature_values(s.params, s.cfg, s.saes, per, ids, mask)


REDUCED = ["--categories", "weapons,drugs,theft,fraud", "--n-prompts", "12",
           "--best-layer", "0", "--min-share", "0.5", "--quiet"]  # fmt: skip


@needs_organism
@pytest.mark.slow
@pytest.mark.optimized
def test_categories_script_schema_and_resume(tmp_path, monkeypatch):
    res = load_script("categories").main(["--out", str(tmp_path), *REDUCED])
    folder = next(tmp_path.iterdir())
    on_disk = json.loads((folder / "results.json").read_text())
    assert on_disk["scores"] == res["scores"] and on_disk["summary"] == res["summary"]
    cats = ["weapons", "drugs", "theft", "fraud"]
    assert res["categories"] == cats and res["best_layer"] == 0 and res["protocol"] == "paper"
    k = res["n_common"]
    assert k == len(res["common_features"]) and k > 0
    common = {tuple(p) for p in res["common_features"]}
    fstars = {c: {tuple(p) for p in res["features"][c]} for c in cats}
    assert all(len(f) == 20 for f in fstars.values())
    for p in set().union(*fstars.values()):  # common = in at least 2 of the 4 F* sets
        assert (p in common) == (sum(p in f for f in fstars.values()) >= 2)
    for c in cats:
        fstar = fstars[c]
        spec = {tuple(p) for p in res["specific_features"][c]}
        assert spec <= fstar - common and len(spec) <= k
        row = res["scores"][c]
        assert set(row) == {"base", "all", "common", "specific"}
        for r in row.values():
            assert 0 <= r["jailbreak_rate"] <= 1 - r["refusal_rate"] + 1e-9
            assert 0 <= r["first_token_non_refusal"] <= 1
        assert row["base"]["jailbreak_rate"] <= 0.1 and row["base"]["refusal_rate"] >= 0.9
        norm = res["normalized"][c]
        if row["all"]["jailbreak_rate"] > 0:
            for part in ("common", "specific"):
                assert norm[part] == pytest.approx(
                    row[part]["jailbreak_rate"] / row["all"]["jailbreak_rate"]
                )
    m = np.asarray(res["transfer"]["score"])
    assert m.shape == (4, 4)
    diag = [res["scores"][c]["specific"]["jailbreak_rate"] for c in cats]
    np.testing.assert_allclose(np.diag(m), diag)
    for name in ("scores.png", "transfer.png"):
        assert (folder / name).stat().st_size > 0
    html = (folder / "report.html").read_text()  # the experiment page: matrices, then tables
    assert "<caption>transfer matrix</caption>" in html and 'alt="transfer.png"' in html
    assert res["all_rates"] == {c: res["scores"][c]["all"]["jailbreak_rate"] for c in cats}
    assert res["min_all_rate"] == 0 and res["excluded_categories"] == []
    assert_killed_run_resumes("categories", REDUCED, res, folder, tmp_path / "killed")
    # Resume: feature sets and every response come from the cache.
    import refusal_jax.study.categories as categories

    monkeypatch.setattr(categories, "category_features", lambda *a, **k: pytest.fail("features"))
    monkeypatch.setattr(categories, "generate_tokens", lambda *a, **k: pytest.fail("generation"))
    again = load_script("categories").main(["--resume", str(folder), *REDUCED])
    assert again["scores"] == res["scores"] and again["transfer"] == res["transfer"]
    # the category rule reuses the cached 'all' responses; at the lowest rate it keeps every one
    low = str(min(res["all_rates"].values()))
    kept = load_script("categories").main(
        ["--resume", str(folder), *REDUCED, "--min-all-rate", low]
    )
    assert kept["categories"] == cats and kept["scores"] == res["scores"]


@needs_organism
@pytest.mark.slow
@pytest.mark.optimized  # 8 categories x 50 prompts: long programs, run many times
def test_shared_features_carry_the_jailbreak_on_the_organism(tmp_path):
    """The full paper-protocol run on all 8 categories (no transfer matrix) at the layer the
    pipeline chooses: the paper's common features (in every category's F*) are non-empty and
    clamping them jailbreaks more than as many category-specific ones (README: 5 features,
    0.77 vs 0.42)."""
    argv = ["--out", str(tmp_path), "--no-transfer", "--quiet"]
    res = load_script("categories").main(argv)
    s = res["summary"]["jailbreak_rate"]
    assert res["best_layer"] == 0 and res["min_share"] == 1.0 and res["n_common"] >= 3
    assert res["n_common_strict_every_category"] == res["n_common"]
    assert s["common"] >= s["specific"] + 0.2, s
