"""Identity: full-content digests (cached by path, size, mtime), folder and pytree digests, the
Identity record and its diff, binding a folder, checksummed stored results."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from refusal_jax.core import identity as idn


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(idn.CACHE_ENV, str(tmp_path / "cache"))


def test_file_digest_is_full_content_and_cached_by_size_and_mtime(tmp_path, monkeypatch):
    f = tmp_path / "w.bin"
    data = bytearray(os.urandom(3 << 20))
    f.write_bytes(data)
    d = idn.file_digest(f)
    assert d == idn.file_digest(f, use_cache=False)
    db = json.loads((tmp_path / "cache" / "digests.json").read_text())
    assert db[str(f.resolve())]["sha256"] == d
    # a cached digest is not recomputed
    calls = []
    real = idn._sha256_file
    monkeypatch.setattr(idn, "_sha256_file", lambda p: calls.append(p) or real(p))
    assert idn.file_digest(f) == d and not calls
    # one byte in the middle changed (same size, new mtime): hashed anew, differs
    data[len(data) // 2] ^= 1
    st = f.stat()
    f.write_bytes(data)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    assert idn.file_digest(f) != d and len(calls) == 1
    # a damaged digest cache is ignored
    (tmp_path / "cache" / "digests.json").write_text("{not json")
    assert idn.file_digest(f) == idn.file_digest(f, use_cache=False)


def test_folder_and_tree_digests_see_every_byte(tmp_path):
    m = tmp_path / "m"
    (m / "sub").mkdir(parents=True)
    (m / "a.txt").write_text("a")
    (m / "sub" / "b.bin").write_bytes(b"b" * 100)
    (m / ".cache").mkdir()
    (m / ".cache" / "junk").write_text("ignored")
    d = idn.folder_digest(m)
    (m / ".cache" / "junk").write_text("still ignored")
    assert idn.folder_digest(m) == d
    (m / "sub" / "b.bin").write_bytes(b"b" * 50 + b"c" + b"b" * 49)
    assert idn.folder_digest(m) != d
    # pytree: an interior value the corner sampler never saw
    w = np.zeros((64, 64), np.float32)
    tree = {"layers": [w, w + 1], "norm": jnp.ones(8)}
    d = idn.tree_digest(tree)
    w2 = w.copy()
    w2[30, 30] = 1e-7
    assert idn.tree_digest({"layers": [w2, w + 1], "norm": jnp.ones(8)}) != d
    assert idn.tree_digest({"layers": [w, w + 1], "norm": jnp.ones(8, jnp.bfloat16)}) != d
    assert idn.tree_digest({"layers": [w, w + 1], "norm": jnp.ones(8)}) == d


def _ident(tmp_path, **kw):
    m = tmp_path / "model"
    m.mkdir(exist_ok=True)
    if not (m / "model.safetensors").exists():
        (m / "model.safetensors").write_bytes(b"weights")
    base = dict(
        model=idn.describe_input(m),
        saes=idn.describe_tree({"W": np.ones(3)}, "saes"),
        data=idn.describe_files("organism corpus", [__file__]),
        settings={"layers": [1, 2], "n_prompts": 8},
    )
    return idn.Identity(**(base | kw))


def test_identity_diff_names_what_differs(tmp_path):
    a = _ident(tmp_path)
    assert idn.diff(a, a) == []
    assert idn.Identity.from_json(json.loads(json.dumps(a.to_json()))) == a
    b = _ident(tmp_path, settings={"layers": [3], "n_prompts": 8})
    assert idn.diff(a, b) == ["settings.layers: [1, 2] vs [3]"]
    (tmp_path / "model" / "model.safetensors").write_bytes(b"weightz")
    c = _ident(tmp_path)
    (msg,) = idn.diff(a, c)
    assert msg.startswith("model weights differ: ") and "model.safetensors changed" in msg
    d = _ident(tmp_path, saes=idn.describe_tree({"W": np.zeros(3)}, "saes"), algorithm="0")
    assert any(m.startswith("SAEs differ") for m in idn.diff(c, d))
    assert f"algorithm version: {idn.ALGORITHM_VERSION} vs 0" in idn.diff(c, d)
    assert a.digest() != c.digest() and a.digest() == _ident(tmp_path, model=a.model).digest()


def test_bind_identity_refuses_or_forces(tmp_path):
    run = tmp_path / "run"
    a = _ident(tmp_path)
    assert idn.bind_identity(run, a)  # new: recorded
    assert not idn.bind_identity(run, a)  # same: reuse
    b = _ident(tmp_path, settings={"layers": [1, 2], "n_prompts": 9})
    with pytest.raises(idn.IdentityMismatch, match=r"settings.n_prompts: 8 vs 9"):
        idn.bind_identity(run, b)
    assert idn.bind_identity(run, b, force=True)
    assert idn.Identity.load(run) == b
    old = tmp_path / "old"
    old.mkdir()
    (old / "cache").mkdir()
    with pytest.raises(idn.IdentityMismatch, match="without an identity.json"):
        idn.bind_identity(old, a)


def test_checked_arrays_and_json_name_damage(tmp_path):
    p = tmp_path / "r.safetensors"
    idn.save_checked_arrays(p, {"x": np.arange(1000, dtype=np.float32)})
    np.testing.assert_array_equal(idn.load_checked_arrays(p)["x"], np.arange(1000))
    raw = bytearray(p.read_bytes())
    raw[-10] ^= 0xFF  # one flipped byte inside the tensor data
    p.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=r"r.safetensors: damaged.*checksum"):
        assert idn.load_checked_arrays(p) is None
    p.write_bytes(bytes(raw[: len(raw) // 2]))  # truncated
    with pytest.warns(UserWarning, match=r"r.safetensors: damaged.*unreadable"):
        assert idn.load_checked_arrays(p) is None
    j = tmp_path / "v.json"
    idn.write_checked_json(j, {"a": np.float32(1.5)})
    assert idn.read_checked_json(j) == (True, {"a": 1.5})
    j.write_text(j.read_text().replace("1.5", "2.5"))
    with pytest.warns(UserWarning, match=r"v.json: damaged"):
        assert idn.read_checked_json(j) == (False, None)
