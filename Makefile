# edgeloop: the two commands a user needs are `make demo` and `make test`.
# Each does all of its own set-up: system packages (apt, with sudo when not
# root), a private virtualenv and the Python dependencies pinned by uv.lock.

PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON := $(shell command -v $(PYTHON))
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: all setup sysdeps demo test lint bench clean deb

all: test

sysdeps:
	@packaging/install-system-deps.sh

$(UV): | sysdeps
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(BIN)/edgeloop: $(UV) uv.lock pyproject.toml agent/pyproject.toml control/pyproject.toml
	$(UV) sync --frozen --all-packages
	@touch $@

setup: sysdeps $(BIN)/edgeloop

demo: setup
	$(BIN)/edgeloop demo --report demo-output/report.html

# The suite on both cores (a module stays on one worker, so its module-scoped fixtures are
# built once); then, alone, the modules that assert wall-clock bounds (marker `serial`:
# a neighbour's load must not fail them) and the package tests (tests/system: containers
# under a real systemd, arm64 emulation; they share the build cache and boot containers).
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not serial" --ignore=tests/system
	$(BIN)/python -m pytest -q -m serial --ignore=tests/system
	$(BIN)/python -m pytest -q tests/system

lint: setup
	$(BIN)/ruff check agent control tests bench
	$(BIN)/ruff format --check agent control tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/run_all.py

# Debian packages of the agent and the control node for amd64 and arm64, in
# dist/deb/ (docs/packaging.md). Downloaded wheels are cached in
# /var/cache/edgeloop-tests (EDGELOOP_TEST_CACHE) between builds.
DEB_ARCHS ?= amd64 arm64
DEB_PACKAGES ?= edgeloop-agent edgeloop-control
deb: setup
	@for pkg in $(DEB_PACKAGES); do for arch in $(DEB_ARCHS); do \
	  packaging/build-deb.sh $$pkg $$arch dist/deb || exit 1; \
	done; done
	lintian --fail-on error,warning dist/deb/*.deb

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache
