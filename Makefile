# Inside nn.Module: set-up, lab, tests and the instructor's nbgrader steps.
# `make lab` and `make test` each build .venv first when it is missing or stale.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
JUPYTER_PORT ?= 8888
PYTEST_ARGS ?=
# pytest workers for make test: one more than the cores, since many tests wait (timeouts, kernels starting).
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
# nbgrader runs some tools (alembic) by name, so the venv's bin/ goes first on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)
# Jupyter refuses to run as root (containers, CI machines) unless told so.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: help lab test test-fast test-browser test-cuda exercises validate autograde autograde-parallel feedback benchmark student-kit clean
.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[$$()A-Za-z.-]+:.*## ' $(MAKEFILE_LIST) | sed 's/^$$(VENV)/$(VENV)/' | \
		awk -F':.*## ' '{printf "  make %-19s %s\n", $$1, $$2}'

# nbgrader's wheel enables its own server extensions (formgrader, assignment list, validate).
$(VENV): pyproject.toml ## create the virtual environment (only set-up)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/jupyter labextension enable @jupyter/nbgrader >/dev/null
	@# Grading runs student code in a bubblewrap sandbox: install it when we can, else say how.
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get install -y -q bubblewrap >/dev/null || { apt-get update -q && apt-get install -y -q bubblewrap >/dev/null; }; }; } || \
		echo "Grading needs bubblewrap, which is not installed: sudo apt-get install bubblewrap"
	touch $(VENV)

# news_url=None: no "news" notification from JupyterLab on a course machine.
lab: $(VENV) ## open JupyterLab on the course, with nbgrader's extensions (honours JUPYTER_PORT)
	$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" --port=$(JUPYTER_PORT) --ServerApp.port_retries=0 \
		--LabApp.news_url=None $(ROOT_FLAG)

test: $(VENV) ## run everything CI runs
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25 $(PYTEST_ARGS)

test-fast: $(VENV) ## grader unit tests only, no notebooks
	$(BIN)/python -m pytest -m "not notebooks and not slow" $(PYTEST_ARGS)

test-browser: $(VENV) ## only the browser tests (JupyterLab in headless Chromium; make test runs them too)
	$(BIN)/python -m pytest -m browser $(PYTEST_ARGS)

test-cuda: $(VENV) ## device-matrix tests and solution notebooks on cpu and cuda (needs a GPU)
	GRADER_DEVICES=cpu,cuda $(BIN)/python -m pytest -m "device or notebooks" $(PYTEST_ARGS)

# Without FORCE, nbgrader skips a unit whose release exists: a unit students already have is never rewritten.
exercises: $(VENV) ## generate exercises/ from solutions/ (ASSIGNMENT=NN_topic, or all; FORCE=1 rewrites a release)
	$(BIN)/nbgrader generate_assignment "$(or $(ASSIGNMENT),*)" $(if $(FORCE),--force)

validate: $(VENV) ## nbgrader validate: solutions must pass, exercises must fail
	$(BIN)/nbgrader validate solutions/*/*.ipynb
	$(BIN)/nbgrader validate --invert exercises/*/*.ipynb

autograde: $(VENV) ## autograde every submission of ASSIGNMENT (stock nbgrader)
	@test -n "$(ASSIGNMENT)" || { echo "usage: make autograde ASSIGNMENT=01_registration"; exit 2; }
	$(BIN)/nbgrader autograde "$(ASSIGNMENT)"

autograde-parallel: $(VENV) ## autograde every submission of ASSIGNMENT in parallel (python -m grader autograde)
	@test -n "$(ASSIGNMENT)" || { echo "usage: make autograde-parallel ASSIGNMENT=01_registration [WORKERS=4]"; exit 2; }
	$(BIN)/python -m grader autograde "$(ASSIGNMENT)" $(if $(WORKERS),--workers $(WORKERS))

benchmark: $(VENV) ## stock nbgrader autograde against the parallel one, on the same synthetic students
	$(BIN)/python benchmarks/autograde.py $(BENCH_ARGS)

feedback: $(VENV) ## generate feedback for every graded submission of ASSIGNMENT
	@test -n "$(ASSIGNMENT)" || { echo "usage: make feedback ASSIGNMENT=01_registration"; exit 2; }
	$(BIN)/nbgrader generate_feedback "$(ASSIGNMENT)"

student-kit: $(VENV) ## build build/student-kit/ and build/student-kit.zip: lessons, exercises, the grader, no solutions
	$(BIN)/python -m grader student-kit

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
