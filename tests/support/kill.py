"""SIGKILL an experiment script at a random point after its first stored result and resume it:
every stored entry stays intact, and ``--resume`` ends with the results of the uninterrupted run
(the caller's own run of the same script with the same arguments), reusing, never rewriting,
what was stored before the kill."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from refusal_jax.core.identity import (
    IDENTITY_FILE,
    Identity,
    load_checked_arrays,
    read_checked_json,
)
from tests.support.paths import EXPERIMENTS, REPO, load_script


def _intact(folder: Path) -> dict:
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


def assert_killed_run_resumes(name: str, args: list, ref: dict, ref_folder: Path, out: Path):
    """Run experiments/<name>.py ``args`` (without --out) in a subprocess under ``out``, SIGKILL
    it after its first stored result, check the stored entries, resume in this process (which
    has the script's programs compiled already) and compare with ``ref`` (the uninterrupted
    run's return value) and ``ref_folder``'s results.json."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, str(EXPERIMENTS / f"{name}.py"), "--out", str(out), *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if [p for p in out.glob("*/cache/*") if not p.name.startswith(".")]:
            break
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.5))  # a random point after the first stored result
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (folder,) = out.iterdir()
    before = _intact(folder)
    assert before, "killed before any result was stored"
    again = load_script(name).main(["--resume", str(folder), *args])
    assert again == ref
    assert json.loads((folder / "results.json").read_text()) == json.loads(
        (ref_folder / "results.json").read_text()
    )
    after = _intact(folder)
    assert {k: after[k] for k in before} == before  # reused, not rewritten or lost
    assert (folder / IDENTITY_FILE).exists()
