# The template's two commands: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV ?= $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
export MLFLOW_DISABLE_TELEMETRY := true
export UV_PYTHON_DOWNLOADS := never

# The engine wheel every generated repository bootstraps against (offline: no mlrail on the
# package index yet), built once per change of engine/ and shared by the demo and the tests.
ENGINE_DIST := $(CURDIR)/build/engine-dist
ENGINE_VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' engine/pyproject.toml)
ENGINE_WHEEL := $(ENGINE_DIST)/mlrail-$(ENGINE_VERSION)-py3-none-any.whl
ENGINE_SOURCES := engine/pyproject.toml engine/README.md $(shell find engine/src -type f -not -name '*.pyc' -not -path '*.egg-info*' 2>/dev/null)
export ENGINE_WHEELS := $(ENGINE_DIST)

# Extra pytest arguments for both suites: make test PYTEST_ARGS="-k lifecycle -x"
PYTEST_ARGS ?=
WORKERS ?= auto

.PHONY: help venv engine demo test test-engine test-template bench clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

venv: $(VENV)/.installed

# The template's own tools, and the engine editable with its test extra (requirements-dev.txt).
$(VENV)/.installed: requirements-dev.txt engine/pyproject.toml
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@test -x $(PY) || $(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(UV) pip install --quiet --python $(PY) --compile-bytecode -r requirements-dev.txt
	@touch $@

engine: $(ENGINE_WHEEL) ## build the engine wheel into build/engine-dist/

$(ENGINE_WHEEL): $(ENGINE_SOURCES)
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@rm -f $(ENGINE_DIST)/mlrail-*.whl
	$(UV) build --quiet --wheel engine --out-dir $(ENGINE_DIST)
	@test -f $@ || { echo "error: uv build wrote no $@ (is engine/pyproject.toml's version $(ENGINE_VERSION)?)" >&2; exit 1; }

demo: venv engine ## generate a project per pattern into build/demo/ and run its whole lifecycle locally
	$(PY) scripts/demo.py --out build/demo

# Both suites always run; the verdict is theirs together. Exit 5 (nothing collected, e.g. a
# PYTEST_ARGS selection that only matches one suite) fails only when both collected nothing.
test: venv engine ## run the engine's tests, then every template test (option matrix, generated repos, lifecycle)
	@engine=0; template=0; \
	$(MAKE) --no-print-directory test-engine || engine=$$?; \
	$(MAKE) --no-print-directory test-template || template=$$?; \
	echo "make test: engine tests exited $$engine, template tests exited $$template (5: nothing collected)"; \
	if [ $$engine = 5 ] && [ $$template = 5 ]; then echo "error: no test was collected" >&2; exit 5; fi; \
	for code in $$engine $$template; do case $$code in 0|5) ;; *) exit 1;; esac; done

test-engine: venv ## the engine's tests (engine/tests) in the template venv
	cd engine && ../$(PY) -m pytest -n $(WORKERS) -q --durations=10 $(PYTEST_ARGS) tests

# loadgroup: each end-to-end test (a generated repo's own make bootstrap check test, act runs,
# the demo, the model swap) is its own group, scheduled first; the fast tests fill in around them.
test-template: venv engine ## the template tests (tests/): option matrix, generated repositories, end to end
	$(PY) -m pytest -n $(WORKERS) --dist loadgroup -q --durations=15 $(PYTEST_ARGS) tests

bench: venv engine ## generation, demo overhead and generated-repository size, as one table of ratios
	$(PY) benchmarks/run.py

clean: ## remove build outputs
	rm -rf build .pytest_cache
