# Fresh machine: `make serve` or `make test` creates .venv, installs, and runs.
PYTHON ?= python3
VENV ?= .venv
# torch first, pinned, so that pip does not pull a multi-GB CUDA build; override for a GPU box,
# e.g. make TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128' install
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test test-all bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(BIN)/mlps serve

test: install
	$(BIN)/pytest

# The whole suite with a throwaway PostgreSQL server too (what CI runs).
test-all: install
	scripts/with-postgres $(BIN)/pytest

bench: install
	$(BIN)/python bench/run.py

lint: install
	$(BIN)/ruff check service tests migrations bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache
