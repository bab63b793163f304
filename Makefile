# One command each: `make up` runs the service, `make test` runs the tests.
# Both create .venv and install what is needed on first use (only Python 3.11+ required).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test lint schemas bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,embedded]'
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/fusion-ledger up

test: $(STAMP) lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check service tests ops
	$(BIN)/mypy

schemas: $(STAMP)
	$(BIN)/python -m service.domain.schemas --write

bench: $(STAMP)
	$(BIN)/python ops/bench/append_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
