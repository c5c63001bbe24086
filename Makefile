# The README's two commands: `make run` and `make test`. Everything else is a step they use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ADDR ?= 127.0.0.1:8000
# The browser test drives this Chromium (Debian's package); without it that test is skipped.
CHROMIUM ?= /usr/bin/chromium

.PHONY: run test install install-dev services lint check bench stub clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Stamps re-run pip only when a requirements file changed.
$(VENV)/.installed: $(PY) requirements.txt
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Serve the site on embedded defaults (SQLite file, local-memory cache) with a way into the admin.
run: install
	DEBUG=$${DEBUG:-true} $(PY) manage.py migrate --noinput
	DEBUG=$${DEBUG:-true} $(PY) manage.py ensure_admin --url http://$(ADDR)/admin/
	DEBUG=$${DEBUG:-true} $(PY) manage.py runserver $(ADDR)

# The whole suite against real Redis (started here if installed but not running).
test: install-dev services
	@if [ -x "$(CHROMIUM)" ]; then \
	  echo "Browser test: on (Chromium at $(CHROMIUM); screenshots in $${TEST_ARTIFACTS_DIR:-test-artifacts/})."; \
	else \
	  echo "Browser test: SKIPPED, no Chromium at $(CHROMIUM) (apt-get install chromium)."; \
	fi
	@# REDIS_URL configures a developer's site; the suite uses its own Redis (TEST_REDIS_URL).
	env -u REDIS_URL CHROMIUM_PATH=$(CHROMIUM) $(PY) -m pytest $(PYTEST_ARGS)

services:
	@bash scripts/ensure-services.sh

lint: install-dev
	$(VENV)/bin/ruff check .

check: install
	DEBUG=$${DEBUG:-true} $(PY) manage.py check

# A stub MemoryGate for a local demo: MEMORYGATE_URL=http://127.0.0.1:8765 make run
stub: install-dev
	$(PY) -m resilience.testing.stub_memorygate --host 127.0.0.1 --port 8765

bench: install-dev services
	$(PY) bench/ratelimit.py
	$(PY) bench/breaker.py
	$(PY) bench/drain.py

clean:
	rm -rf $(VENV) db.sqlite3* staticfiles .pytest_cache .ruff_cache test-artifacts
