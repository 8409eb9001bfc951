# Two commands on a fresh machine: `make demo` and `make test` (each sets up .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The shared copy of Fashion-MNIST beside this checkout, when there is one; otherwise
# cnnlab uses $CNNLAB_DATA or ~/.cache/cnnlab/fashion-mnist (downloading if needed).
ifneq ($(wildcard ../shared/data/fashion-mnist),)
export CNNLAB_DATA ?= $(abspath ../shared/data/fashion-mnist)
endif

.PHONY: setup demo test browser

$(BIN)/cnnlab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU wheel, so the resolver never reaches for a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/cnnlab

demo: setup
	$(BIN)/cnnlab reproduce --quick --out runs/demo

# The web page's end-to-end test drives Debian's chromium through its chromedriver.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	   apt-get install -y -qq chromium chromium-driver >/dev/null)

test: setup browser
	$(BIN)/ruff check src tests experiments
	$(BIN)/pytest -q
