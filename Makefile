# `make demo` and `make test` work on a fresh machine: each creates .venv, installs requirements.txt and
# the project itself (`pip install -e .`) first (once; again when requirements.txt or pyproject.toml change);
# `make test` adds the development tools (the `dev` extra: pytest, pytest-xdist, ruff).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-quick lint bench
install: $(VENV)/.installed
dev: $(VENV)/.dev

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[dev]"
	touch $@

demo: install
	$(BIN)/python tools/demo.py

# Both cores (pytest-xdist); the tests are timed by nothing, so a busy machine only makes them slower.
test: dev
	$(BIN)/python -m pytest -q -n auto tests

test-quick: dev  # no subprocess runs of main.py or torchrun (about three minutes on 2 cores)
	$(BIN)/python -m pytest -q -n auto -m "not slow" tests

lint: dev
	$(BIN)/ruff check .

bench: install
	$(BIN)/python bench/speed.py
