# Two set-up commands: `make demo` and `make test`. Each bootstraps .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= .demo

.PHONY: demo test test-torchserve test-bentoml lint bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/quickstart.py --workdir $(DEMO_DIR)

lint: $(STAMP)
	$(VENV)/bin/ruff check mlflow_archive_plugin tests examples benchmarks

# The main suite, then the compatibility suites, each in its own tox env: TorchServe (real
# torch-model-archiver + torchserve + CPU torch; Java 17), then BentoML (real bentoml).
# Any failing fails `make test`; tox passes pytest's exit code through, so a run that
# collects nothing (5) fails too.
# Two workers (`-n 2`), one test file each at a time (`--dist loadfile`): each worker starts its
# own mlflow servers, and a file's module-scoped fixtures stay in one process.
PYTEST_WORKERS ?= 2

test: lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile
	$(MAKE) test-torchserve
	$(MAKE) test-bentoml

test-torchserve: $(STAMP)
	$(VENV)/bin/tox -e torchserve

test-bentoml: $(STAMP)
	$(VENV)/bin/tox -e bentoml

bench: $(STAMP)
	-$(VENV)/bin/tox -e torchserve --notest
	$(PY) benchmarks/bench_suite.py --size-mib $(or $(BENCH_MIB),1024) --repeat $(or $(BENCH_REPEAT),3) --migration-models $(or $(BENCH_MODELS),50) --torchserve-python .tox/torchserve/bin/python $(BENCH_ARGS)
	$(PY) benchmarks/bench_bounded.py --repeat $(or $(BENCH_REPEAT),3)
	$(VENV)/bin/tox -e bentoml --notest && $(PY) benchmarks/bench_bentoml.py --size-mib $(or $(BENCH_BENTOML_MIB),256) --repeat $(or $(BENCH_REPEAT),3) --bentoml-python .tox/bentoml/bin/python

clean:
	rm -rf $(VENV) .tox $(DEMO_DIR) build dist *.egg-info
