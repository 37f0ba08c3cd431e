#!/usr/bin/env python
"""``python scripts/search.py``: runs :func:`search.cli.search.main` (installed as ``amc-search``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.cli.search import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
