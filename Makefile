# The two commands of the README: `make demo` and `make test`. Both create .venv first if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=
# Two test processes, each taking whole files (their module fixtures are built once): the suite's time
# is mostly TensorFlow and Beam starting up and small trainings, which overlap on 2 cores.
PYTEST_WORKERS ?= 2

.PHONY: demo test lint venv clean

venv: $(VENV)/.installed

# Re-install when the pins or the package metadata change; the stamp makes a second `make` instant.
$(VENV)/.installed: setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.0.1"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

demo: venv
	$(BIN)/mdr demo --output $(DEMO_DIR)

# The one-way imports first (.importlinter): a wrong import fails in seconds, naming both modules.
test: lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: venv
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache .import_linter_cache
