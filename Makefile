PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: setup setup-dev demo test test-all

setup:
	$(PIP) install -q -r requirements.txt

setup-dev:
	$(PIP) install -q -r requirements-dev.txt
	$(PIP) install -q --no-deps -r requirements-nodeps.txt

# The built-in default job.
demo: setup
	$(PYTHON) train.py

# The test suite (slow tests excluded; `make test-all` runs them too).
test: setup-dev
	$(PYTHON) -m pytest -q -n 2 -m "not slow"

test-all: setup-dev
	$(PYTHON) -m pytest -q -n 2
