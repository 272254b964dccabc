# The two entry points of the README.  Both set up a fresh Debian 12 machine first
# (scripts/bootstrap.sh: packages, a test user, .venv, the build); quick the second time.
.PHONY: demo test lint bootstrap bench

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	@bash scripts/demo.sh

# lint and type checks (settings in pyproject.toml), then the tests (as root), then the
# unit tier again as `nobody` (it needs no root); each step stops the target on failure.
test: bootstrap lint
	@.venv/bin/python -m pytest -q -p no:cacheprovider tests
	@bash scripts/unit-as-nobody.sh

lint: bootstrap
	@.venv/bin/ruff check nvlaunch tests benchmarks bin/nvlaunch
	@.venv/bin/mypy

bench: bootstrap
	@.venv/bin/python benchmarks/latency.py
