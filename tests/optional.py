"""Optional packages in tests: skipped where missing, unless the environment says they must be there.

``AMC_TEST_REQUIRE_<PACKAGE>`` (e.g. ``AMC_TEST_REQUIRE_TIMM=1``, set by ``make test-timm``;
``AMC_TEST_REQUIRE_TRANSFORMERS=1``, set by ``.ci/run``) turns the skip into a failure, so an install step
that went missing cannot pass as a green run of skipped tests.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def need(package: str) -> ModuleType:
    """``package``, imported; skips the test (module) where it is missing and not required."""
    if os.environ.get(f"AMC_TEST_REQUIRE_{package.upper()}"):
        return importlib.import_module(package)
    return pytest.importorskip(package)
