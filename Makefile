# Two entry points (see README): `make demo` runs the main job, `make test` runs lint + tests.
# Each creates its own virtual environment on first use and installs what it needs.
PYTHON ?= python3.11
DEMO_VENV := .venv
TEST_VENV := .venv-test
PIP_FLAGS := -q --disable-pip-version-check -c constraints.txt

.PHONY: demo test test-fast lint clean

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

# pytest exits 5 when it collects no tests: that fails the make target, as it should.
test: lint
	$(TEST_VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-fast: lint
	$(TEST_VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(DEMO_VENV) $(TEST_VENV) .pytest_cache
