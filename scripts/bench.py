#!/usr/bin/env python
"""``python scripts/bench.py``: runs :func:`search.cli.bench.main` (installed as ``amc-bench``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.cli.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
