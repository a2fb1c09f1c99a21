# The two commands of the README: `make demo` and `make test`.
# Each sets up what it needs on a fresh Debian 12: a venv installed from the lock
# file, and (for the tests) the Debian packages prometheus and prometheus-pushgateway.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export BATCHOBS_HOME ?= $(CURDIR)/.batchobs

.PHONY: demo test setup debian lock lint

demo: $(STAMP)
	$(BIN)/batchobs demo

test: $(STAMP) debian
	$(BIN)/pytest $(PYTEST_ARGS)

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv==0.13.8
	$(BIN)/uv pip sync -q --compile-bytecode --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	rm -rf batchobs.egg-info  # a second copy of the metadata: Airflow would see the plugin twice
	touch $@

debian:
	@command -v prometheus >/dev/null && command -v prometheus-pushgateway >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus prometheus-pushgateway; }

# Regenerate the lock after changing dependencies in pyproject.toml: every extra
# (`all` + `test` is what `make setup` installs; the others are subsets of `all`
# but for `airflow`, whose range `all`'s pin satisfies).
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --all-extras --universal --python-version 3.10 \
	  --generate-hashes --no-header -o requirements.lock

lint: $(STAMP)
	$(BIN)/ruff check listener ingest warehouse batchobs tests benchmarks
	$(BIN)/mypy
