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
# Feast (the feature store, modelyard[feast]) pins pandas<3 and prometheus-client<0.25, which
# would move every other test back to pandas 2: it is installed without its pins, then the rest
# of its requirements as usual (tests/integration/test_feast_features.py runs it on pandas 3);
# pytz too, which its file offline store imports and which only pandas 2 brought along.
FEAST      := feast==0.67.0
FEAST_DEPS := "dask[dataframe]>=2024.2.1" "dill>=0.3,<0.5" mmh3 "tenacity>=7,<9" "toml>=0.10,<1" \
	"tqdm>=4,<5" "typeguard>=4" "bigtree>=0.19.2" psutil "tabulate>=0.8,<1" \
	"colorama>=0.3.9,<1" "pygments>=2.12,<3" "pyjwt>=2.13" fastapi "uvicorn[standard]>=0.30.6" \
	uvicorn-worker gunicorn pytz

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing modelyard[all,dev] into $(VENV) (first time: a few minutes)"
	$(PIP) install -e ".[all,dev]" torch==2.13.0
	$(PIP) install --no-deps "$(FEAST)"
	$(PIP) install $(FEAST_DEPS)
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
