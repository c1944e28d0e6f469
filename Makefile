# Every target installs what it needs on a fresh machine: its own venv, the package, dev tools.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed-stamp
DEMO_DATA ?= ./demo-data

.PHONY: install test demo clean bench

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $(INSTALLED)

install: $(INSTALLED)

test: install
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/eagle-index demo --data-dir $(DEMO_DATA)

bench: install
	$(PY) benchmarks/search_bench.py --sizes 10000,100000
	$(PY) benchmarks/tiling_bench.py

clean:
	rm -rf $(VENV) $(DEMO_DATA) .pytest_cache
