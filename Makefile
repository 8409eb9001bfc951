# Two commands on a fresh machine: `make demo` and `make test` (each sets up .venv first);
# `make check` is the one-minute tier to run while working.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The shared copy of Fashion-MNIST beside this checkout, when there is one; otherwise
# cnnlab uses $CNNLAB_DATA or ~/.cache/cnnlab/fashion-mnist (downloading if needed).
ifneq ($(wildcard ../shared/data/fashion-mnist),)
export CNNLAB_DATA ?= $(abspath ../shared/data/fashion-mnist)
endif

.PHONY: setup demo check test browser docs docs-serve
# mkdocs-material's banner about MkDocs 2 says nothing about this site
export NO_MKDOCS_2_WARNING := 1

$(BIN)/cnnlab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU wheel, so the resolver never reaches for a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,docs]'
	touch $@

setup: $(BIN)/cnnlab

demo: setup
	$(BIN)/cnnlab reproduce --quick --out runs/demo

# The web page's end-to-end test drives Debian's chromium through its chromedriver.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	   apt-get install -y -qq chromium chromium-driver >/dev/null)

# The quick tier: ruff, then every test that needs no real data, PostgreSQL, browser, server
# or long run (the markers are in pyproject.toml); it trains only on small synthetic files.
QUICK_TIER := not real_data and not postgres and not browser and not server and not slow

check: setup
	$(BIN)/ruff check src tests experiments
	$(BIN)/pytest -q -m "$(QUICK_TIER)"

# The whole suite, then the documentation site built as CI builds it.
test: setup browser
	$(BIN)/ruff check src tests experiments
	$(BIN)/pytest -q
	$(BIN)/mkdocs build --strict --quiet

docs: setup
	$(BIN)/mkdocs build --strict

docs-serve: setup
	$(BIN)/mkdocs serve
