#!/usr/bin/env python
"""``python scripts/sensitivity.py``: runs :func:`search.cli.sensitivity.main` (installed as ``amc-sensitivity``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.cli.sensitivity import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
