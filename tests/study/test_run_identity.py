"""Run folders are bound to their identity: resuming with another model (one interior value
changed), other SAEs, other data, other settings, another input file or another algorithm version
is refused naming the difference, or recomputed with --force, never reused; damaged cache entries
are named and recomputed."""

import argparse
import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from refusal_jax.cli.common import (
    add_refusal_features_argument,
    add_run_arguments,
    add_subject_arguments,
    open_run_from_args,
)
from refusal_jax.core.identity import ALGORITHM_VERSION, CACHE_ENV, IDENTITY_FILE
from refusal_jax.organism import MODEL_DIR
from refusal_jax.study.subject import load_subject


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "digests"))


@pytest.fixture(scope="module")
def subject():
    return load_subject()


def _parser():
    p = argparse.ArgumentParser()
    add_subject_arguments(p)
    add_run_arguments(p)
    add_refusal_features_argument(p)
    p.add_argument("--best-layer", type=int, default=None)
    p.add_argument("--n-prompts", type=int, default=8)
    return p


def _open(subject, *argv):
    return open_run_from_args(_parser().parse_args(list(argv)), "exp", subject)


def _refused(capsys, subject, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        _open(subject, *argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: --resume ")  # one line
    return err


def _other_model(tmp_path):
    """A copy of the organism's model folder with one interior weight changed: the corner
    values a sampled fingerprint would read are untouched."""
    folder = tmp_path / "model2"
    shutil.copytree(MODEL_DIR, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    name = max(tensors, key=lambda k: tensors[k].size)
    w = tensors[name].copy()
    mid = tuple(s // 2 for s in w.shape)
    w[mid] += 1e-3
    tensors[name] = w
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def test_every_identity_case_is_refused_naming_the_difference(subject, tmp_path, capsys):
    folder, cache = _open(subject, "--out", str(tmp_path / "runs"), "--best-layer", "1")
    assert (folder / IDENTITY_FILE).exists()
    calls = []
    cache.json("result", "k", lambda: calls.append(1) or {"v": 1})
    resume = ["--resume", str(folder), "--best-layer", "1"]
    # the same inputs: the same cache, nothing recomputed
    _, again = _open(subject, *resume)
    assert again.json("result", "k", lambda: pytest.fail("recomputed")) == {"v": 1}

    cases = {}
    other_model = dataclasses.replace(subject, model_dir=str(_other_model(tmp_path)))
    cases["model"] = (other_model, resume, r"model weights differ: .*model.safetensors changed")
    other_saes = dataclasses.replace(
        subject, saes=subject.saes.replace(threshold=subject.saes.threshold + 1e-3)
    )
    cases["saes"] = (other_saes, resume, "SAEs differ")
    data = tmp_path / "data"
    data.mkdir()
    (data / "harmful_train.json").write_text(json.dumps([{"instruction": "x"}]))
    real = dataclasses.replace(subject, organism=False, data_dir=str(data))
    cases["data"] = (real, resume, r"data differ: organism corpus vs .*data")
    cases["layers"] = (subject, ["--resume", str(folder), "--best-layer", "2"],
                       r"settings.best_layer: 1 vs 2")  # fmt: skip
    cases["settings"] = (subject, [*resume, "--n-prompts", "9"], r"settings.n_prompts: 8 vs 9")
    cases["seed"] = (subject, [*resume, "--seed", "1"], r"settings.seed: 0 vs 1")
    for what, (subj, argv, msg) in cases.items():
        err = _refused(capsys, subj, *argv)
        assert re.search(msg, err), (what, err)

    # a data folder whose content changes under the same path
    f2, _ = _open(real, "--out", str(tmp_path / "runs2"))
    (data / "harmful_train.json").write_text(json.dumps([{"instruction": "y"}]))
    err = _refused(capsys, real, "--resume", str(f2))
    assert "data differ" in err and "harmful_train.json changed" in err

    # another input file (--refusal-features) by content
    feats = tmp_path / "features.json"
    feats.write_text("[[1, 2]]")
    f3, _ = _open(subject, "--out", str(tmp_path / "runs3"), "--refusal-features", str(feats))
    feats.write_text("[[1, 3]]")
    err = _refused(capsys, subject, "--resume", str(f3), "--refusal-features", str(feats))
    assert "input refusal_features differ" in err

    # a folder made by an older algorithm version
    ident = json.loads((folder / IDENTITY_FILE).read_text())
    (folder / IDENTITY_FILE).write_text(json.dumps(ident | {"algorithm": "0"}))
    err = _refused(capsys, subject, *resume)
    assert f"algorithm version: 0 vs {ALGORITHM_VERSION}" in err
    (folder / IDENTITY_FILE).write_text(json.dumps(ident))

    # a run folder from before identities were recorded
    (tmp_path / "old" / "cache").mkdir(parents=True)
    assert "without an identity.json" in _refused(
        capsys, subject, "--resume", str(tmp_path / "old")
    )
    assert "no such run folder" in _refused(capsys, subject, "--resume", str(tmp_path / "none"))

    # --force: rebound, every result recomputed under the new identity (the old entry is left)
    for what, (subj, argv, _) in cases.items():
        f, forced = _open(subj, *argv, "--force")
        assert f == folder
        n = len(calls)
        assert forced.json("result", "k", lambda: calls.append(1) or {"v": 2}) == {"v": 2}
        assert len(calls) == n + 1, what
    assert len(list((folder / "cache").glob("result-*.json"))) == 1 + len(cases)


def test_damaged_cache_entries_are_named_and_recomputed(subject, tmp_path):
    folder, cache = _open(subject, "--out", str(tmp_path))
    x = cache.arrays("acts", "k", lambda: {"x": np.arange(64, dtype=np.float32)})
    cache.json("meta", "k", lambda: {"a": 1})
    (arr,) = (folder / "cache").glob("acts-*.safetensors")
    raw = arr.read_bytes()
    arr.write_bytes(raw[: len(raw) - 7])  # truncated
    with pytest.warns(UserWarning, match=rf"{arr.name}: damaged"):
        y = cache.arrays("acts", "k", lambda: {"x": np.arange(64, dtype=np.float32)})
    np.testing.assert_array_equal(x["x"], y["x"])
    assert arr.read_bytes() == raw  # rewritten whole
    (js,) = (folder / "cache").glob("meta-*.json")
    js.write_text(js.read_text().replace('"a": 1', '"a": 5'))
    with pytest.warns(UserWarning, match=rf"{js.name}: damaged"):
        assert cache.json("meta", "k", lambda: {"a": 1}) == {"a": 1}
