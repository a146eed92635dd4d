"""Multi-host for real: two JAX processes (4 fake CPU devices each, gloo collectives) joined by
``jax.distributed`` run the sweep CLI on a 4 x 2 (data x model) mesh spanning both, and agree
with one device. Slow (two process launches of the whole CLI), hence marked ``slow``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ARGS = ["laig", "--n-prompts", "12", "--shard-size", "4", "--n-steps", "3"]
ARGS += ["--direction-prompts", "16", "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(out) -> list[str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    port = _free_port()
    common = [sys.executable, "-m", "refusal_jax.cli.sweep", *ARGS, "--out", str(out)]
    common += ["--model-parallel", "2", "--multihost", "--coordinator", f"localhost:{port}"]
    common += ["--num-processes", "2"]
    procs = [
        subprocess.Popen(
            [*common, "--process-id", str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-3000:]
        outs.append(stdout)
    return outs


def test_two_process_sweep_equals_one_device_and_resumes(tmp_path):
    from refusal_jax.cli.sweep import main
    from refusal_jax.core.io import load_arrays
    from refusal_jax.organism import MODEL_DIR

    if not (MODEL_DIR / "config.json").exists():
        pytest.skip("organism artifacts missing")
    outs = _two_processes(tmp_path / "mh")
    assert "3 shards (3 computed now) on 4 x 2 devices (2 process(es))" in outs[0]
    assert "computed now" not in outs[1]  # only process 0 reports and writes
    shards = sorted((tmp_path / "mh" / "shards").iterdir())
    mtimes = [p.stat().st_mtime_ns for p in shards]
    # rerun on both hosts: process 0 finds every shard and tells process 1; nothing recomputed
    outs = _two_processes(tmp_path / "mh")
    assert "3 shards (0 computed now)" in outs[0]
    assert [p.stat().st_mtime_ns for p in shards] == mtimes

    main([*ARGS, "--out", str(tmp_path / "one")])  # one device, this process
    got = load_arrays(tmp_path / "mh" / "laig.safetensors")
    ref = load_arrays(tmp_path / "one" / "laig.safetensors")
    scale = np.abs(ref["attributions"]).max()
    err = np.abs(got["attributions"] - ref["attributions"]).max() / scale
    print(f"2 processes x 4 devices vs 1 device: attributions max rel err {err:.1e}")
    assert err <= 1e-4
    np.testing.assert_array_equal(got["jailbreak_token"], ref["jailbreak_token"])
    np.testing.assert_allclose(got["metric"], ref["metric"], rtol=1e-4)
