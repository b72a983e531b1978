# `make demo` and `make test` work on a fresh machine: each creates .venv and installs
# requirements.txt first (once; again when requirements.txt changes).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench
install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

demo: install
	$(BIN)/python scripts/demo.py

test: install
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python bench/speed.py
