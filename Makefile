# Two commands for a new user (see README.md):
#   make demo   set up .venv, generate a synthetic ADE20K-format set, train U-Net and SegFormer
#               locally to a small target mIoU, print the comparison table
#   make test   set up .venv and run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test clean

$(BIN)/.installed: requirements.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/python -m shared.demo $(DEMO_ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf demo_runs .pytest_cache
