"""ruff's lint and format checks over every Python file of the project."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATHS = ["lightningd_py", "plugins", "tests", "bench", "scripts", "examples"]


def ruff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *PATHS], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_ruff_check() -> None:
    result = ruff("check", "--no-fix")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = ruff("format", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
