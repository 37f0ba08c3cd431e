#!/usr/bin/env python
"""``python scripts/apply_policy.py``: runs :func:`search.cli.apply.main` (installed as ``amc-apply``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.cli.apply import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
