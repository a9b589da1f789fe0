"""The code's style is checked, not argued: ruff's rules as pyproject.toml configures them (pyflakes,
pycodestyle, import order, absolute imports only) find nothing in the package, tests, benchmarks or spec."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "d3codec", "tests", "benchmarks",
                           "spec"], cwd=ROOT, capture_output=True, text=True)
    assert "No module named ruff" not in done.stderr, "ruff is a test dependency: pip install -e '.[test]'"
    assert done.returncode == 0, done.stdout[-3000:]
