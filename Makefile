.PHONY: run test lint format bench help

help:  ## List the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

run:  ## Start web, worker and beat locally (first run installs everything)
	bin/run

test:  ## Run the whole test suite against real PostgreSQL and Redis
	bin/test

bench:  ## Measure the hot paths against same-run baselines (quick mode: make bench ARGS=--quick)
	bin/bench $(ARGS)

lint:  ## Check style with ruff, and the import contracts (pyproject.toml) with import-linter
	bin/bootstrap dev
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports

format:  ## Format the code with ruff
	bin/bootstrap dev
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .
