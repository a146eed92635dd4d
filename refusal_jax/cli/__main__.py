"""``python -m refusal_jax.cli <command> ...``: the same as ``refusal-jax``."""

import sys

from refusal_jax.cli import main

sys.exit(main())
