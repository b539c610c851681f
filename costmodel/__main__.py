"""`python -m costmodel`: per-op costs of one layer, or (with --model) a whole training step."""

from __future__ import annotations

import sys

from costmodel.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
