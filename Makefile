# Developer entry points. `make` alone lists them (from the `## ` comments below).
# Only python3 (3.11+) is needed up front: `venv` installs uv and the locked dependencies.

.DEFAULT_GOAL := help
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.ONESHELL:
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
RUN_ARGS ?=

FAILOVER_ARGS ?=

.PHONY: help venv run test rdp-test sso-test tasks-test triggers-test fuzz-test lint fmt migrate bench stop status clean failover-test failover-test-pg

help: ## List the targets
	@echo "Usage: make <target> [PYTEST_ARGS='-k jobs -x'] [RUN_ARGS='--skip coordinator']"
	awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-17s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

venv: ## Create or refresh .venv from uv.lock (pinned uv in .venv-tools/); instant when up to date
	@$(PYTHON) scripts/bootstrap_venv.py

run: venv ## Run the whole orchestrator (embedded PostgreSQL and NATS unless RPA_DB_URL/RPA_DB_HOST/RPA_NATS_URL are set)
	@$(PY) scripts/run.py $(RUN_ARGS)

test: venv ## Run the test suite on local servers (5432/3306/4222), else embedded ones; PYTEST_ARGS=... passed on
	@rc=0
	$(PY) scripts/test_env.py -- $(VENV)/bin/pytest $(PYTEST_ARGS) || rc=$$?
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): treated as a failure" >&2; fi
	exit $$rc

rdp-test: venv ## Real RDP sessions end to end (root; installs xrdp xorgxrdp freerdp2-x11 xvfb if missing); both databases
	@rc=0
	$(PY) scripts/test_env.py -- $(VENV)/bin/pytest tests/rdp -m rdp $(PYTEST_ARGS) || rc=$$?
	if [ $$rc -eq 5 ]; then echo "make rdp-test: pytest collected no tests (exit 5): treated as a failure" >&2; fi
	exit $$rc

sso-test: venv ## LDAP login against a real slapd, OpenID Connect login against a real oidc-provider (node), on loopback (root; installs slapd ldap-utils if missing); both databases
	@command -v slapd >/dev/null 2>&1 || [ -x /usr/sbin/slapd ] || { DEBIAN_FRONTEND=noninteractive apt-get install -y -q slapd ldap-utils >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slapd ldap-utils >/dev/null; }; } \
		|| echo "make sso-test: could not install slapd" >&2
	rc=0; $(PY) scripts/test_env.py -- $(VENV)/bin/pytest tests/sso -m sso -q $(PYTEST_ARGS) || rc=$$?
	if [ $$rc -eq 5 ]; then echo "make sso-test: pytest collected no tests (exit 5): treated as a failure" >&2; fi
	exit $$rc

tasks-test: venv ## 20 real robots on 10,000 queue tasks, each taken once, on both databases (about 3 min each)
	@E2E_TASKS=10000 $(PY) scripts/test_env.py -- $(VENV)/bin/pytest tests/e2e/test_tasks_robots.py -q $(PYTEST_ARGS)

triggers-test: venv ## Two real scheduler replicas, a per-second trigger for 3 minutes, one killed half-way; both databases
	@RPA_TRIGGER_REPLICAS_S=180 $(PY) scripts/test_env.py -- $(VENV)/bin/pytest tests/e2e/test_trigger_replicas.py -q $(PYTEST_ARGS)

fuzz-test: venv ## schemathesis on the live API: every check, 100 examples per operation, stateful links; PostgreSQL (13 min on a loaded 2-core machine)
	@$(PY) scripts/test_env.py -- $(VENV)/bin/pytest tests/api/test_fuzz.py -m fuzz -k postgresql -q $(PYTEST_ARGS)

failover-test: venv ## Failover layout on loopback (Galera, balancer, 3 NATS, 2 replicas each, robots), faults under load; root; FAILOVER_ARGS='--json PATH'
	@$(PY) -m tests.failover --db mariadb $(FAILOVER_ARGS)

failover-test-pg: venv ## The same on PostgreSQL (Patroni, etcd, HAProxy on Patroni's REST check)
	@$(PY) -m tests.failover --db postgresql $(FAILOVER_ARGS)

lint: venv ## ruff check, ruff format --check, mypy, bandit, pip-audit (all run; fails if any fails)
	@rc=0
	echo "== ruff check";          $(VENV)/bin/ruff check . || rc=1
	echo "== ruff format --check"; $(VENV)/bin/ruff format --check . || rc=1
	echo "== mypy";                $(VENV)/bin/mypy libs services robot sdk || rc=1
	$(PY) scripts/audit_deps.py || rc=1
	exit $$rc

fmt: venv ## Apply ruff's fixes (imports...) and format the code
	@$(VENV)/bin/ruff check --fix-only .
	$(VENV)/bin/ruff format .

migrate: venv ## alembic upgrade head (on RPA_DB_URL/RPA_DB_HOST, else the embedded PostgreSQL)
	@$(PY) scripts/run.py --migrate-only

bench: venv ## Run every bench/*.py, with the same servers as the tests (RPA_TEST_*_URL)
	@shopt -s nullglob
	files=(bench/*.py)
	if [ $${#files[@]} -eq 0 ]; then echo "no bench/*.py to run"; exit 0; fi
	$(PY) scripts/test_env.py -- bash -euo pipefail -c \
		'for f in "$$@"; do echo "== $$f"; $(PY) "$$f"; done' bench "$${files[@]}"

stop: ## Stop the embedded PostgreSQL and NATS (data stays in .data/)
	@if [ -x $(PY) ]; then $(PY) scripts/devstack.py stop; fi

status: ## Show whether the embedded PostgreSQL and NATS run
	@if [ -x $(PY) ]; then $(PY) scripts/devstack.py status; else echo "no .venv yet"; fi

clean: stop ## Remove .data (embedded databases included) and caches; keeps .venv
	@rm -rf .data .pytest_cache .mypy_cache .ruff_cache bench/results
	find . -path ./.venv -prune -o -path ./.venv-tools -prune -o -path ./.git -prune \
		-o -type d -name __pycache__ -exec rm -rf {} +
