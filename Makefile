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

.PHONY: all setup sysdeps demo test lint bench clean

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

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check agent control tests bench
	$(BIN)/ruff format --check agent control tests bench
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache
