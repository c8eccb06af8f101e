# The two commands: `make demo` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv/bin
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: help setup services services-stop demo test lint unit integration molecule bench schemas lock clean

help:
	@echo "make demo      set up, start services, run a worker with real tasks and live progress"
	@echo "make test      set up and run the whole suite: lint, unit, integration, molecule"
	@echo "make setup     install everything (idempotent)"
	@echo "make services  start Redis on loopback and the Docker engine (idempotent); environment in .run/env"
	@echo "make services-stop   stop what make services started"
	@echo "make bench     benchmarks -> bench/results.json"

setup:
	@bash scripts/setup.sh

services: setup
	@bash scripts/services.sh start >/dev/null

services-stop:
	@bash scripts/services.sh stop

demo: setup
	@bash scripts/demo.sh

# The suite needs the Docker engine and the stand-in images (make services); it starts its own Redis.
test: services
	@$(MAKE) --no-print-directory lint unit integration molecule
	@echo "make test: all suites passed"

lint:
	ruff check orchestrator devservices tests bench scripts collections
	ruff format --check orchestrator devservices tests bench scripts collections
	mypy
	ansible-lint -q
	@$(VENV)/python -m orchestrator.cli schemas --out .cache/schemas-check >/dev/null && \
		diff -r schemas .cache/schemas-check >/dev/null || \
		{ echo "schemas/ is out of date: run make schemas"; exit 1; }

unit:
	pytest -q tests/unit

integration:
	pytest -q --durations=25 tests/integration tests/contract

molecule:
	bash scripts/molecule-all.sh

bench: services
	$(VENV)/python bench/run.py

schemas:
	$(VENV)/python -m orchestrator.cli schemas --out schemas

# Re-resolve the dependencies and export the lock (uv.lock itself is not committed: it names registry hosts).
lock:
	.tools/bin/uv lock --upgrade
	.tools/bin/uv export --format requirements-txt --no-emit-project --all-groups -q -o requirements.lock

clean:
	rm -rf .venv .tools .cache .run .ansible
