# Set-up and everyday tasks. Everything runs from .venv, created on first use.
#   make demo   train, gate, register and promote the three example models
#   make test   the whole test suite (what CI runs)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The install is redone whenever pyproject.toml changes. torch is pinned: the CPU build of
# 2.13.0 is what this project is tested with, and other versions pull in CUDA.
STAMP  := $(VENV)/.modelyard-installed
PIP    := $(PY) -m pip --disable-pip-version-check --quiet

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing modelyard[all,dev] into $(VENV) (first time: a few minutes)"
	$(PIP) install -e ".[all,dev]" torch==2.13.0
	@touch $(STAMP)

demo: venv
	$(VENV)/bin/modelyard demo

test: venv
	$(PY) -m pytest

lint: venv
	$(PY) -m ruff check src tests examples
	$(PY) -m mypy

bench: venv
	$(PIP) install -e ".[bench]"
	$(PY) bench/registry.py
	$(PY) bench/serve.py
	$(PY) bench/drift.py
	$(PY) bench/predlog.py
	$(PY) bench/cache_verify.py
	$(PY) bench/memory.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist
