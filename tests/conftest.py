import atexit
import os
import shutil
import tempfile

# One on-disk compilation cache for the test session, its xdist workers and the CLI subprocesses
# they start (all inherit the variable): the suite compiles the same programs many times (every
# CLI test is a new process, and _release_compiled_programs below empties the in-memory cache
# after each module), and a cached program loads in a fraction of its compile time. The cache
# is keyed by the program and the compiler's flags and version, so results are the same; it
# starts empty and is removed when the session ends, so each run is measured from cold.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _JIT_CACHE = tempfile.mkdtemp(prefix="refusal_jax_test_jit_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _JIT_CACHE
    atexit.register(shutil.rmtree, _JIT_CACHE, True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Compile quickly: the suite's programs are mostly tiny models run a few times, where XLA:CPU
# spends far more time compiling than running (58% of the suite's time was compilation). The
# two settings below make XLA:CPU skip LLVM's expensive optimisation passes and emit fusions
# with its classic emitter instead of the MLIR fusion emitters. No fast-math: results change at
# most by float32 rounding where two differently fused programs are compared (the parity tests
# hold unchanged; the sweep test that compared a fused shard program with two separate calls
# bit for bit now allows rounding). Measured on tests/method/test_laig.py alone, cold cache:
# 98 -> 26 CPU-seconds. The cost: programs that run long execute slower. Tests marked
# ``optimized`` (below) switch LLVM's passes back on. Measured alone on 2026-12-03 (2-core
# Xeon): the SmolLM2 SAE-training + demo check, whose 135M-parameter programs no other test
# shares, 151 -> 104 CPU-s; tests/study/test_categories.py 135 -> 93 CPU-s with its script and
# full-protocol checks marked (the protocol loads the programs it shares with the script from
# the on-disk cache; marking the protocol alone gave 115 CPU-s). The jailbreak-analysis script
# check took longer marked (57 -> 77 CPU-s), the GCG script the same. Set XLA_FLAGS
# and JAX_DISABLE_MOST_OPTIMIZATIONS=0 to test with the library's default compiler.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true --xla_cpu_use_fusion_emitters=false"
)
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
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
    fixtures) are unaffected; a later module recompiles what it uses (from the on-disk cache
    above when the program is the same)."""
    yield
    jax.clear_caches()


@pytest.fixture(autouse=True)
def _optimizing_compiler(request, monkeypatch):
    """Tests marked ``optimized`` run programs long or often enough (a real 135M model, the
    categories protocol) that LLVM's optimisation pays for itself: for them the compiler
    optimises as the library does by default (in this process and the subprocesses it
    starts). Compiled programs are dropped before and after, since JAX's in-memory cache does
    not key on this setting; the on-disk cache does, so marked tests share their programs."""
    if request.node.get_closest_marker("optimized") is None:
        yield
        return
    before = jax.config.read("jax_disable_most_optimizations")
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0")
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
        jax.clear_caches()


def pytest_collection_modifyitems(config, items):
    """Test files with slow tests run first (the order is otherwise kept). pytest-xdist's
    ``--dist loadfile --no-loadscope-reorder`` (make test) hands whole files to the workers in
    collection order, so the long files start early instead of ending the run on one worker
    while the other has nothing left."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
