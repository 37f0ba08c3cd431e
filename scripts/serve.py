#!/usr/bin/env python
"""``python scripts/serve.py``: runs :func:`search.cli.serve.main` (installed as ``amc-serve``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.cli.serve import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
