import os

# Determinism and modest thread use on the 2-core CI machines.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# ----------------------------------------------------------------------------- shared fixtures
# Session-scoped, so every test file reuses the same arrays (and, through equal static configs,
# the same compiled functions). The shapes are in tests/support/tiny.py.
import jax  # noqa: E402
import pytest  # noqa: E402

from refusal_jax.organism import load_organism  # noqa: E402
from tests.support import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_params():
    """Weights of :data:`tests.support.tiny.TINY` (3 layers)."""
    return tiny.tiny_params(tiny.TINY)


@pytest.fixture(scope="session")
def tiny4_params():
    """Weights of :data:`tests.support.tiny.TINY4` (4 layers)."""
    return tiny.tiny_params(tiny.TINY4)


@pytest.fixture(scope="session")
def tiny_saes():
    """JumpReLU SAEs (d_sae 96) at every layer of ``TINY``."""
    return tiny.jumprelu_saes(tiny.TINY, tiny.TINY_D_SAE)


@pytest.fixture(scope="session")
def organism():
    """The trained organism (refusal_jax/organism/artifacts) as (cfg, params, tokenizer),
    loaded once per session."""
    return load_organism()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module. XLA:CPU maps the code of every
    compiled program into memory and the caches keep them all: 52 tests held 9,647 memory
    mappings, and the whole suite in one process went past the kernel's vm.max_map_count
    (65,530), where the compiler crashed with a segmentation fault. Arrays (the session
    fixtures) are unaffected; a later module recompiles what it uses."""
    yield
    jax.clear_caches()
