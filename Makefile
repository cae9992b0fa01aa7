# Quick start: `make demo` runs the main job, `make test` runs the tests. Each sets up its own
# virtual environment first (Python 3.11+, from PyPI).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all clean

demo: $(VENV)/.installed
	$(BIN)/facesearch demo --workdir .demo

test: $(VENV)/.installed
	$(BIN)/pytest

test-all: $(VENV)/.installed
	$(BIN)/pytest -m ""

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[train,dev]"
	touch $@

clean:
	rm -rf $(VENV) .demo
