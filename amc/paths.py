"""Where the project keeps what it computes once and reuses: trained base models and latency tables."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$AMC_CACHE_DIR`` or ``~/.cache/amc-search``."""
    return Path(os.environ.get("AMC_CACHE_DIR") or Path.home() / ".cache" / "amc-search")


__all__ = ["default_cache_dir"]
