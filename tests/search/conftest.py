"""Fixtures of the search tests: the session's trained base model, kept off the home cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amc.context import ContextConfig
from tests.search.helpers import shared_cache_dir

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def amc_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_cache_dir(tmp_path_factory)


@pytest.fixture
def cache_env(amc_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything that falls back to ``$AMC_CACHE_DIR`` finds the session cache, never ``~/.cache``.

    Opt-in (``pytestmark = pytest.mark.usefixtures("cache_env")``) so other modules here keep their own caches.
    """
    monkeypatch.setenv("AMC_CACHE_DIR", str(amc_cache))


@pytest.fixture
def context_config(amc_cache: Path) -> ContextConfig:
    return ContextConfig(cache_dir=str(amc_cache))
