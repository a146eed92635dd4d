"""Sharded = single device, on 8 fake CPU devices (a subprocess: the device count is fixed when
JAX starts, and this test process already runs on one device)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    script = Path(__file__).with_name("multidevice_check.py")
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layout", ["8x1", "2x4", "1x8"])
def test_sharded_equals_single_device(report, layout):
    r = report[layout]
    model = int(layout.split("x")[1])
    # parameters really are split over the model axis (heads), one shard per device
    assert r["q_shards"] == 8
    assert r["orbax_sharded_load_equal"], r
    assert (r["q_spec"][-1] == "model") == (model > 1)
    assert r["logits_max_abs_err"] <= 1e-4, r
    assert r["tokens_equal"], r
    assert r["attr_max_rel_err"] <= 1e-4, r
    assert r["codes_max_abs_err"] <= 1e-5, r
    assert r["sweep_max_rel_err"] <= 1e-4, r
