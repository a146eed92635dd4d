"""Peak host memory of loading a ~1B-parameter HF folder: main's loader ("before") vs this
checkout's ("after"), each in a fresh process, against the bytes on disk.

Writes a random Llama-shaped model (1.07B parameters: d 2048, 16 layers, 16/8 heads of 128, MLP
8192, vocab 32000, tied) as sharded safetensors (4 layers per file + index.json, as HF saves big
models) in ``--dtype`` (bfloat16 by default: 2.1 GB; float32: 4.3 GB), loads it with
``ports.hf.load_hf(folder, dtype=<same dtype>)`` in a subprocess whose ``PYTHONPATH`` is the
checkout under test, and reports peak RSS (``ru_maxrss``) minus the RSS (VmRSS) after importing jax
and starting its CPU backend, divided by the bytes on disk. Deletes the model afterwards unless
``--keep``::

    python experiments/benchmarks/bench_load.py --old-root /work/main --dir /tmp/bench_load
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from benchutil import machine_info  # noqa: E402

from ports.hf import hf_config_dict, layer_key_map  # noqa: E402
from ports.safetensors_io import save_file  # noqa: E402
from refusal_jax.core.config import ModelConfig  # noqa: E402

CFG = ModelConfig(
    family="llama",
    vocab_size=32000,
    d_model=2048,
    n_layers=16,
    n_heads=16,
    n_kv_heads=8,
    head_dim=128,
    d_mlp=8192,
    tie_embeddings=True,
)
LAYERS_PER_FILE = 4

CHILD = r"""
import json, resource, sys, time
import jax, jax.numpy as jnp
jnp.zeros(1).block_until_ready()
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
base = rss_mb()
base_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
from ports.hf import load_hf
import ports.hf
t0 = time.perf_counter()
cfg, params = load_hf(sys.argv[1], dtype=jnp.dtype(sys.argv[2]))
jax.block_until_ready(params)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
nbytes = sum(x.nbytes for x in jax.tree.leaves(params))
print(json.dumps(dict(base_mb=base, base_max_mb=base_max, peak_mb=peak, rss_after_mb=rss_mb(),
                      seconds=dt, param_bytes=nbytes, module=ports.hf.__file__)))
"""


def write_model(folder: Path, dtype) -> int:
    """Random weights (normal, std 0.02; norms 1) as sharded safetensors; returns bytes on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shapes = {
        "q": (CFG.d_model, CFG.n_heads * CFG.head_dim),
        "k": (CFG.d_model, CFG.n_kv_heads * CFG.head_dim),
        "v": (CFG.d_model, CFG.n_kv_heads * CFG.head_dim),
        "o": (CFG.n_heads * CFG.head_dim, CFG.d_model),
        "gate": (CFG.d_model, CFG.d_mlp),
        "up": (CFG.d_model, CFG.d_mlp),
        "down": (CFG.d_mlp, CFG.d_model),
    }

    def rand(shape):
        return (rng.standard_normal(shape, np.float32) * 0.02).astype(dtype)

    weight_map, n_files = {}, CFG.n_layers // LAYERS_PER_FILE + 1
    files = [f"model-{i + 1:05d}-of-{n_files:05d}.safetensors" for i in range(n_files)]
    for f in range(n_files - 1):
        tensors = {}
        for i in range(f * LAYERS_PER_FILE, (f + 1) * LAYERS_PER_FILE):
            for key, (hf, transpose) in layer_key_map(CFG).items():
                shape = shapes.get(key, (CFG.d_model,))
                t = rand(shape) if key in shapes else np.ones(shape, dtype)
                tensors[f"model.layers.{i}." + hf] = np.ascontiguousarray(t.T if transpose else t)
        save_file(tensors, folder / files[f], metadata={"format": "pt"})
        weight_map.update({name: files[f] for name in tensors})
        del tensors
    last = {
        "model.embed_tokens.weight": rand((CFG.vocab_size, CFG.d_model)),
        "model.norm.weight": np.ones(CFG.d_model, dtype),
    }
    save_file(last, folder / files[-1], metadata={"format": "pt"})
    weight_map.update({name: files[-1] for name in last})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(hf_config_dict(CFG)))
    return sum((folder / f).stat().st_size for f in files)


def measure(root: Path, folder: Path, dtype: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), dtype],
        env=env,
        capture_output=True,
        text=True,
        cwd=str(root),
    )
    if out.returncode:
        raise RuntimeError(f"loading with {root} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dir", default="/tmp/bench_load_1b", help="where to write the model")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--old-root", default=None, help="checkout with the 'before' loader (main)")
    p.add_argument("--rounds", type=int, default=1, help="measurements per side")
    p.add_argument("--keep", action="store_true", help="keep the model folder")
    args = p.parse_args(argv)

    import ml_dtypes

    dtype = ml_dtypes.bfloat16 if args.dtype == "bfloat16" else np.float32
    folder = Path(args.dir)
    try:
        disk = write_model(folder, dtype)
        sides = [("after", ROOT)] + ([("before", Path(args.old_root))] if args.old_root else [])
        results = {name: [] for name, _ in sides}
        for _ in range(args.rounds):
            for name, root in sides:
                results[name].append(measure(root, folder, args.dtype))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(machine_info())
    gb = disk / 2**30
    print(
        f"\nmodel: {CFG.n_layers} layers, d {CFG.d_model}, MLP {CFG.d_mlp}, vocab "
        f"{CFG.vocab_size}; {args.dtype} on disk and loaded; {disk / 1e9:.2f} GB on disk "
        f"({gb:.2f} GiB) in {CFG.n_layers // LAYERS_PER_FILE + 1} files\n"
    )
    print(
        "| loader | peak RSS - baseline (MB) | / bytes on disk | RSS after - baseline (MB) | "
        "baseline RSS (peak so far) (MB) | load time (s) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, _ in sides:
        for r in results[name]:
            extra = (r["peak_mb"] - r["base_mb"]) * 2**20
            print(
                f"| {name} | {extra / 2**20:.0f} | {extra / disk:.2f}x | "
                f"{r['rss_after_mb'] - r['base_mb']:.0f} | {r['base_mb']:.0f} "
                f"({r['base_max_mb']:.0f}) | {r['seconds']:.1f} |"
            )
    first = results["after"][0]
    print(
        f"\nparameter bytes loaded: {first['param_bytes'] / 1e9:.2f} GB "
        f"({first['param_bytes'] / (2 if args.dtype == 'bfloat16' else 4) / 1e9:.2f}B "
        f"parameters); modules: " + ", ".join(results[n][0]["module"] for n, _ in sides)
    )


if __name__ == "__main__":
    main()
