# Every target installs what it needs on a fresh machine: its own venv, the package, dev tools.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed-stamp
DEMO_DATA ?= ./demo-data
PORT ?= 8000

.PHONY: install test test-slow demo clean bench browser frontend lint-js

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $(INSTALLED)

install: $(INSTALLED) frontend

# The slide viewer's OpenSeadragon comes from the npm registry (pinned in web/frontend/package-lock.json)
# and is copied into web/static/vendor/ (git-ignored; served by the app, never from a CDN).
OSD_SRC := web/frontend/node_modules/openseadragon/build/openseadragon
OSD_DIR := web/static/vendor/openseadragon
OSD_JS := $(OSD_DIR)/openseadragon.min.js

$(OSD_JS): web/frontend/package.json web/frontend/package-lock.json
	@if ! command -v npm >/dev/null 2>&1 && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null || true; fi
	@if command -v npm >/dev/null 2>&1; then \
		cd web/frontend && npm ci --no-audit --no-fund --loglevel=error && cd ../.. \
		&& rm -rf $(OSD_DIR) && mkdir -p $(OSD_DIR)/images \
		&& cp $(OSD_SRC)/openseadragon.min.js web/frontend/node_modules/openseadragon/LICENSE.txt $(OSD_DIR)/ \
		&& cp $(OSD_SRC)/images/*.png $(OSD_DIR)/images/ && echo "OpenSeadragon installed in $(OSD_DIR)"; \
	else echo "warning: npm is missing (apt-get install npm): the slide viewer and its browser test are unavailable"; fi

# Chart.js (the Cohorts map, the Probes curves) comes from the same `npm ci`, copied the same way.
CHART_DIR := web/static/vendor/chartjs
CHART_JS := $(CHART_DIR)/chart.umd.min.js

$(CHART_JS): $(OSD_JS)
	@if [ ! -f web/frontend/node_modules/chart.js/dist/chart.umd.min.js ] && command -v npm >/dev/null 2>&1; then \
		cd web/frontend && npm ci --no-audit --no-fund --loglevel=error; fi
	@if [ -f web/frontend/node_modules/chart.js/dist/chart.umd.min.js ]; then \
		rm -rf $(CHART_DIR) && mkdir -p $(CHART_DIR) \
		&& cp web/frontend/node_modules/chart.js/dist/chart.umd.min.js web/frontend/node_modules/chart.js/LICENSE.md $(CHART_DIR)/ \
		&& echo "Chart.js installed in $(CHART_DIR)"; \
	else echo "warning: npm is missing (apt-get install npm): the cohort map and the probe curves are unavailable"; fi

frontend: $(OSD_JS) $(CHART_JS)

# ESLint (from the same package.json's devDependencies) over our own scripts, web/static/js; part of `make test`.
ESLINT := web/frontend/node_modules/.bin/eslint
lint-js: frontend
	@if [ -x $(ESLINT) ]; then $(ESLINT) --config web/frontend/eslint.config.mjs web/static/js && echo "eslint: web/static/js is clean"; \
	else echo "warning: npm is missing (apt-get install npm): the JavaScript linter did not run"; fi

# The browser tests drive Debian's chromium (never a downloaded browser build); skipped without it.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" != "0" ]; then echo "warning: /usr/bin/chromium is missing and this is not root: browser tests will be skipped (apt-get install chromium)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then echo "warning: no apt-get to install chromium: browser tests will be skipped"; \
	else apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
		|| echo "warning: installing chromium failed: browser tests will be skipped"; fi

# `make test`: everything but the real-size (2.5 GB of random weights) tests; CI also runs those (test-slow).
# Test modules run in parallel on pytest-xdist workers, each module whole on one worker (tests/conftest.py
# schedules them); TEST_WORKERS=0 runs them in this process, one after another.
TEST_WORKERS ?= auto
test: install browser lint-js
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

test-slow: install
	$(PY) -m pytest -q -m slow

demo: install
	$(VENV)/bin/eagle-index demo --data-dir $(DEMO_DATA) --port $(PORT)

bench: install
	$(PY) benchmarks/search_bench.py --sizes 10000,100000
	$(PY) benchmarks/tiling_bench.py
	$(PY) benchmarks/viewer_bench.py
	OMP_WAIT_POLICY=PASSIVE $(PY) benchmarks/tile_search_bench.py --patients 4000 --queries 100

clean:
	rm -rf $(VENV) $(DEMO_DATA) .pytest_cache web/frontend/node_modules web/static/vendor
