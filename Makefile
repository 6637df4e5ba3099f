# The two commands of the README: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test lint demo replay clean

$(BIN)/.installed: pyproject.toml market_data/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

test: lint
	$(BIN)/pytest -q

demo: install
	$(BIN)/python -m flows.demo

replay: install
	PIPELINES_FILE=pipelines.replay.yaml $(BIN)/python -m bytewax.run flows.main

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
