"""ruff and strict mypy, run as part of the suite with the environment's own tools."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}"


def test_ruff() -> None:
    paths = [name for name in ("tether", "tests", "demo", "bench") if (REPO_ROOT / name).is_dir()]
    _run("ruff", "check", *paths)


def test_mypy() -> None:
    _run("mypy", "--strict", "tether")
