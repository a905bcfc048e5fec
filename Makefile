# Two commands for a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fdistill-installed
DEMO_ARGS ?=

.PHONY: demo test install lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,video]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m ruff check fdistill pipelines training kernels scripts tests
	$(PY) -m pytest -q -p no:cacheprovider tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose"; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(PY) -m ruff check fdistill pipelines training kernels scripts tests
