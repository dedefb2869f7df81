# Two set-up commands: `make demo` and `make test`. Each bootstraps .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= .demo

.PHONY: demo test lint bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/quickstart.py --workdir $(DEMO_DIR)

lint: $(STAMP)
	$(VENV)/bin/ruff check mlflow_archive_plugin tests examples benchmarks

test: lint
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/bench_export.py --size-mib $(or $(BENCH_MIB),1024) --repeat $(or $(BENCH_REPEAT),3)

clean:
	rm -rf $(VENV) $(DEMO_DIR) build dist *.egg-info
