"""Every experiment script on the organism (tiny counts), killed with SIGKILL at a random point
after its first cached result: every stored entry stays intact, and ``--resume`` ends with the
results of an uninterrupted run, reusing (never rewriting) what was stored before the kill."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from refusal_jax.core.identity import (
    CACHE_ENV,
    IDENTITY_FILE,
    Identity,
    load_checked_arrays,
    read_checked_json,
)
from refusal_jax.organism import MODEL_DIR
from tests.support.paths import EXPERIMENTS, REPO

# each script with counts small enough for the suite (the same reductions as its own test)
SCRIPTS = {
    "gcg": ["--n-train", "4", "--n-test", "4", "--n-steps", "3", "--n-candidates", "16",
            "--candidate-batch", "16", "--max-new-tokens", "4", "--quiet"],
    "probing": ["--n-train", "24", "--n-test", "16", "--n-steps", "2", "--n-random", "2",
                "--quiet"],
    "benchmark": ["--n-train", "16", "--n-prompts", "8", "--n-steps", "2", "--max-new-tokens",
                  "4", "--induction-values", "4,32", "--best-layer", "0", "--quiet"],
    "categories": ["--categories", "weapons,drugs,theft", "--n-prompts", "8", "--n-steps", "2",
                   "--max-new-tokens", "4", "--best-layer", "0", "--min-share", "0.5",
                   "--quiet"],
    "calibrate": ["--n-train", "16", "--n-val", "16", "--clamp-values", "0,-0.5",
                  "--candidates", "10,40", "--quiet"],
    "jailbreak_analysis": ["--n-train", "16", "--n-pairs", "8", "--n-suffix-prompts", "4",
                           "--n-steps", "2", "--gcg-steps", "3", "--gcg-train", "4",
                           "--gcg-candidates", "16", "--max-new-tokens", "4", "--quiet"],
}  # fmt: skip


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"exp_{name}_kill", EXPERIMENTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _intact(folder) -> dict:
    """{name: bytes} of the run's stored entries, each checked (checksum, readable)."""
    assert Identity.load(folder) is not None
    out = {}
    for p in sorted((folder / "cache").iterdir()):
        if p.name.startswith("."):  # an unfinished temporary file: never read
            continue
        ok = read_checked_json(p)[0] if p.suffix == ".json" else load_checked_arrays(p) is not None
        assert ok, p
        out[p.name] = p.read_bytes()
    return out


@pytest.mark.slow
@pytest.mark.skipif(not (MODEL_DIR / "config.json").exists(), reason="organism missing")
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_sigkilled_experiment_resumes_to_the_uninterrupted_results(name, tmp_path, monkeypatch):
    args = SCRIPTS[name]
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "digests"))
    ref = _script(name).main(["--out", str(tmp_path / "full"), *args])
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    env[CACHE_ENV] = str(tmp_path / "digests")
    proc = subprocess.Popen(
        [sys.executable, str(EXPERIMENTS / f"{name}.py"), "--out", str(tmp_path / "killed"), *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if [p for p in (tmp_path / "killed").glob("*/cache/*") if not p.name.startswith(".")]:
            break
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.5))  # a random point after the first stored result
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (folder,) = (tmp_path / "killed").iterdir()
    before = _intact(folder)
    assert before, "killed before any result was stored"
    again = _script(name).main(["--resume", str(folder), *args])
    assert again == ref
    assert json.loads((folder / "results.json").read_text()) == json.loads(
        next((tmp_path / "full").glob("*/results.json")).read_text()
    )
    after = _intact(folder)
    assert {k: after[k] for k in before} == before  # reused, not rewritten or lost
    assert (folder / IDENTITY_FILE).exists()
