#!/usr/bin/env python
"""``python scripts/lottery.py``: runs :func:`search.cli.lottery.main` (installed as ``amc-lottery``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.cli.lottery import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
