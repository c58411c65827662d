# Everything installs into .venv from the project's own files; `make demo` and `make test`
# are the two commands a newcomer needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast lint protos golden bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: 2.13.0 is a local CPU wheel; a looser pin pulls GBs of CUDA.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

## demo: a local cluster (1 server, 2 workers, sync, mutual TLS) trains the digits MLP
demo: setup
	$(VENV)/bin/paramserver launch --servers 1 --workers 2 --mode sync --epochs 10 --tls

## test: the whole test suite (CPU; GPU tests skip without CUDA)
test: setup
	$(PY) -m pytest

## test-fast: unit and in-process tests only (no process-spawning end-to-end runs)
test-fast: setup
	$(PY) -m pytest -m "not slow" -q

## lint: ruff, mypy, and the complexity/module-size budgets of paramserver/ and workers/
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy paramserver workers benchmarks
	$(PY) tools/check_budgets.py

## protos: regenerate paramserver/proto/ from protos/ (commit the result)
protos: setup
	$(PY) tools/protoc.py

## golden: regenerate the codec golden vectors in tests/golden/ (commit the result)
golden: setup
	$(PY) tools/golden_vectors.py

## bench: the suite against the floor and the peers (~10 min; report + plot in runs/)
bench: setup
	$(VENV)/bin/paramserver bench

## bench-quick: a small subset of the suite in under a minute (report in runs/)
bench-quick: setup
	$(VENV)/bin/paramserver bench --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
