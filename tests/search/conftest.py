"""Fixtures of the search tests (``amc_cache`` and ``cache_env`` come from ``tests/conftest.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from amc.context import ContextConfig


@pytest.fixture
def context_config(amc_cache: Path) -> ContextConfig:
    return ContextConfig(cache_dir=str(amc_cache))
