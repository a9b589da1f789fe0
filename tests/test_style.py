"""The code's style and types are checked, not argued: ruff's rules and mypy as pyproject.toml configures them
(pyflakes, pycodestyle, import order, absolute imports only; mypy's default strictness on the package) find
nothing. ``.ci/run`` runs the same tools before the suite; these tests keep a local run honest too."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_tool(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)
    assert f"No module named {args[0]}" not in done.stderr, f"{args[0]} is a test dependency: pip install -e '.[test]'"
    return done


def test_ruff_finds_nothing():
    done = run_tool("ruff", "check", "--no-cache", "d3codec", "tests", "benchmarks", "spec")
    assert done.returncode == 0, done.stdout[-3000:]


def test_mypy_finds_nothing_in_the_package():
    done = run_tool("mypy", "--no-incremental")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
