# The template's two commands: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV ?= $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
export MLFLOW_DISABLE_TELEMETRY := true
export UV_PYTHON_DOWNLOADS := never

.PHONY: help venv demo test clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

venv: $(VENV)/.installed

$(VENV)/.installed: requirements-dev.txt
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@test -x $(PY) || $(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(UV) pip install --quiet --python $(PY) --compile-bytecode -r requirements-dev.txt
	@touch $@

demo: venv ## generate a project into build/demo/ and run its whole lifecycle locally
	$(PY) scripts/demo.py --out build/demo

# loadgroup: each deep test (a generated repo's own make bootstrap check test) is its own
# group, scheduled first on its own worker; the fast tests fill in around them.
test: venv ## run every template test (option matrix, generated repos, lifecycle)
	$(PY) -m pytest -n auto --dist loadgroup --durations=10 tests

clean: ## remove build outputs
	rm -rf build .pytest_cache
