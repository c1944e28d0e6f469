# Every target installs what it needs on a fresh machine: its own venv, the package, dev tools.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed-stamp
DEMO_DATA ?= ./demo-data
PORT ?= 8000

.PHONY: install test demo clean bench browser

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $(INSTALLED)

install: $(INSTALLED)

# The browser tests drive Debian's chromium (never a downloaded browser build); skipped without it.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" != "0" ]; then echo "warning: /usr/bin/chromium is missing and this is not root: browser tests will be skipped (apt-get install chromium)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then echo "warning: no apt-get to install chromium: browser tests will be skipped"; \
	else apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
		|| echo "warning: installing chromium failed: browser tests will be skipped"; fi

test: install browser
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/eagle-index demo --data-dir $(DEMO_DATA) --port $(PORT)

bench: install
	$(PY) benchmarks/search_bench.py --sizes 10000,100000
	$(PY) benchmarks/tiling_bench.py

clean:
	rm -rf $(VENV) $(DEMO_DATA) .pytest_cache
