PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -c constraints.txt
PYTEST_ARGS ?= -n 2 --dist loadfile  # two workers (one thread each, see tests/conftest.py), a test file each

.PHONY: demo test docs install dev clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python
	$(PIP) -e .

dev: $(BIN)/python
	$(PIP) -e ".[dev]"

demo: install
	$(BIN)/cnnkit demo

test: dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the documentation site (docs/, mkdocs.yml) on this machine only, rebuilt as its pages change
docs: dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

clean:
	rm -rf runs .pytest_cache
