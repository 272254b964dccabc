# The two entry points of the README.  Both set up a fresh Debian 12 machine first
# (scripts/bootstrap.sh: packages, a test user, .venv, the build); quick the second time.
.PHONY: demo test bootstrap bench

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	@bash scripts/demo.sh

test: bootstrap
	@.venv/bin/python -m pytest -q -p no:cacheprovider tests

bench: bootstrap
	@.venv/bin/python benchmarks/latency.py
