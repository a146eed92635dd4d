"""Where the tests find the repository's scripts and the shared data folder."""

import importlib.util
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "experiments"
# The shared datasets sit beside the repository (../shared/datasets), or where
# $REFUSAL_JAX_SHARED points; tests that need them skip with the path when absent.
SHARED = Path(os.environ.get("REFUSAL_JAX_SHARED", REPO.parent / "shared" / "datasets"))


def load_script(name: str):
    """experiments/<name>.py as a fresh module (its ``main(argv)`` returns the results)."""
    spec = importlib.util.spec_from_file_location(f"exp_{name}", EXPERIMENTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
