"""Entry point of `make bench`: `.venv/bin/python bench/run.py [--quick] [--keep]`."""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script: the repository root (tether, tests, bench) is not on sys.path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.suite import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
