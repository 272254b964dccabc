"""The source checks of `make test` (ruff, mypy), as tests: a developer who runs pytest
alone sees lint and type errors too.  Settings are pyproject.toml's; both run from the
repository root over what `make test` checks.  A tool that is not installed skips its
test (scripts/bootstrap.sh installs both into .venv); any finding fails it.

Nothing is written into the tree: ruff runs without its cache and mypy with its cache
off, so the checks also work on a read-only copy (scripts/unit-as-nobody.sh)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUFF_TARGETS = ("nvlaunch", "tests", "benchmarks", "bin/nvlaunch")


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)


def _report(tool: str, r: subprocess.CompletedProcess) -> str:
    return f"{tool} found problems (exit {r.returncode}):\n{r.stdout}{r.stderr}"


def test_ruff():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (scripts/bootstrap.sh installs it into .venv)")
    r = _run([sys.executable, "-m", "ruff", "check", "--no-cache", *RUFF_TARGETS])
    assert r.returncode == 0, _report("ruff", r)


def test_mypy():
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (scripts/bootstrap.sh installs it into .venv)")
    # /dev/null: mypy's documented way to keep no cache (a full check takes a few seconds)
    r = _run([sys.executable, "-m", "mypy", "--cache-dir=/dev/null"])
    assert r.returncode == 0, _report("mypy", r)
