"""The package type-checks: `mypy harness`, configured in pyproject.toml, exits 0.

CI runs the test suite only, so this test is what type-checks the package there. It fails (never
skips) when mypy is missing: the `test` extra installs it, and a check that silently stops running
is worse than none.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: A cold run (no .mypy_cache) takes about a minute on a loaded two-core machine.
TIMEOUT_S = 900


@pytest.mark.slow
def test_mypy_reports_no_errors() -> None:
    assert importlib.util.find_spec("mypy") is not None, (
        "mypy is not installed here; install the test extra: pip install -e '.[test]'"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "harness"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, (
        f"`mypy harness` exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    )
