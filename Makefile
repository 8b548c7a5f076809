# servicedesk: `make run` starts the whole desk on its embedded default; `make test` tests it;
# `make bench` measures it.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: run test bench install install-test install-bench system-packages lint format clean

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
		echo "Installing Debian's python3-venv (needed to create .venv)"; rm -rf $(VENV); \
		$(APT_GET) install -y --no-install-recommends python3-venv \
		|| { $(APT_GET) update && $(APT_GET) install -y --no-install-recommends python3-venv; }; \
		$(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test system-packages

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed-test
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@touch $@

install-bench: $(VENV)/.installed-bench system-packages

# Installs only what is missing; `apt-get update` first when the package lists are stale.
system-packages:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	{ test -x /usr/lib/dovecot/imap && test -x /usr/lib/dovecot/pop3; } || missing="$$missing dovecot-imapd dovecot-pop3d"; \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:$$missing"; \
		$(APT_GET) install -y --no-install-recommends $$missing \
		|| { $(APT_GET) update && $(APT_GET) install -y --no-install-recommends $$missing; }; \
	fi

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py create_first_admin
	@echo "Starting web ($$($(BIN)/python manage.py web_address)), worker, beat and mailidle. Ctrl-C stops all of them."
	PATH="$(BIN):$$PATH" $(BIN)/honcho --procfile Procfile start

# The import contracts first (pyproject.toml, [tool.importlinter]): a broken one fails the run.
test: install-test
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Benchmarks on real servers on loopback (Dovecot, aiosmtpd; PostgreSQL too when DATABASE_URL
# is set): one table, also written as JSON under bench/results/. BENCH_ARGS, e.g.
# `make bench BENCH_ARGS="--emails 500 --rows ingest"`; see `python -m bench --help`.
bench: install-bench
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var .pytest_cache
