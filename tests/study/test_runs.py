"""Run-folder plumbing: content keys, the safetensors/JSON cache, atomic writes, --resume."""

import numpy as np
import pytest

from refusal_jax.core.io import load_arrays, read_json, save_arrays_atomic, write_json_atomic
from refusal_jax.study.runs import Cache, content_key


def test_content_key_depends_on_values_shapes_and_dtypes():
    a = np.arange(6, dtype=np.float32)
    k = content_key("laig", {"n": 10}, a)
    assert k == content_key("laig", {"n": 10}, a.copy())
    assert k != content_key("laig", {"n": 11}, a)
    assert k != content_key("laig", {"n": 10}, a.reshape(2, 3))
    assert k != content_key("laig", {"n": 10}, a.astype(np.float64))
    assert k != content_key("laig", {"n": 10}, a + 1e-6)
    assert content_key({"a": 1, "b": 2}) == content_key({"b": 2, "a": 1})


def test_cache_computes_once_and_reloads(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(4.0), "y": np.ones((2, 2), np.int32)}

    cache = Cache(tmp_path)
    first = cache.arrays("acts", "k1", compute)
    second = cache.arrays("acts", "k1", compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(first["x"], second["x"])
    assert second["y"].dtype == np.int32
    cache.arrays("acts", "k2", compute)
    assert len(calls) == 2
    assert cache.json("meta", "k1", lambda: {"a": np.float32(1.5)}) == {"a": 1.5}
    assert cache.json("meta", "k1", lambda: pytest.fail("recomputed")) == {"a": 1.5}
    assert Cache(None).arrays("acts", "k1", compute)["x"].shape == (4,)
    assert len(calls) == 3
    # No temporary files are left behind.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_atomic_writers_roundtrip(tmp_path):
    write_json_atomic(tmp_path / "r.json", {"v": np.arange(3), "s": "x"})
    assert read_json(tmp_path / "r.json") == {"v": [0, 1, 2], "s": "x"}
    save_arrays_atomic(tmp_path / "a.safetensors", {"w": np.eye(2, dtype=np.float32)})
    np.testing.assert_array_equal(load_arrays(tmp_path / "a.safetensors")["w"], np.eye(2))
