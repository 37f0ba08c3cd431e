"""Fixtures of the service tests: a PostgreSQL server for the session (:mod:`tests.search.service.postgres`)."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.search.service.postgres import PostgresUnavailable, start_postgres

REQUIRE = "AMC_TEST_REQUIRE_POSTGRES"  # .ci/run sets it: there, no PostgreSQL is a failure, not a skip


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server owned by this test session; skips (fails under ``$AMC_TEST_REQUIRE_POSTGRES``)
    when PostgreSQL is not installed or does not start."""
    try:
        server, root = start_postgres()
    except PostgresUnavailable as exc:
        message = f"PostgreSQL tests not run: {exc}"
        if os.environ.get(REQUIRE):
            pytest.fail(f"{message} (${REQUIRE} is set)")
        pytest.skip(message)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)
