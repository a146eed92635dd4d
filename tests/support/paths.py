"""Where the tests find the repository's scripts and the shared data folder."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "experiments"
# The shared datasets sit beside the repository (../shared/datasets), or where
# $REFUSAL_JAX_SHARED points; tests that need them skip with the path when absent.
SHARED = Path(os.environ.get("REFUSAL_JAX_SHARED", REPO.parent / "shared" / "datasets"))
