# Quick start: `make demo` runs the main job, `make test` runs the tests. Each sets up its own
# virtual environment first (Python 3.11+, from PyPI).
#   make demo PHOTOS=DIR   real photos (DIR/<person>/<photo>.jpg) with the default model; PHOTOS
#                          defaults to LFW where it lies beside the checkout (../shared/lfw)
#   make demo PHOTOS=      no photos: train a tiny model on generated faces and query it
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PHOTOS ?= $(wildcard ../shared/lfw/images_deepfunneled)

.PHONY: demo test test-all test-milvus lint clean

demo: $(VENV)/.installed
	$(BIN)/facesearch demo --workdir .demo $(if $(PHOTOS),--photos "$(PHOTOS)")

# The house rules first (import layers, style: seconds), then the tests.
test: lint
	$(BIN)/pytest

test-all: lint
	$(BIN)/pytest -m ""

# The Milvus gallery's tests also against a real server: make test-milvus MILVUS=milvus://host:19530/facesearch_test
# (token from $$FACESEARCH_MILVUS_TOKEN or $$FACESEARCH_MILVUS_TOKEN_FILE; each test makes and drops its own collections).
test-milvus: $(VENV)/.installed
	@test -n "$(MILVUS)" || { echo "usage: make test-milvus MILVUS=milvus://HOST[:PORT]/[DB/]COLLECTION"; exit 2; }
	FACESEARCH_TEST_MILVUS="$(MILVUS)" $(BIN)/pytest tests/index/test_milvus.py tests/index/test_search.py tests/cli/test_milvus_cli.py

lint: $(VENV)/.installed
	$(BIN)/lint-imports
	$(BIN)/ruff check .

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[train,dev]"
	touch $@

clean:
	rm -rf $(VENV) .demo
