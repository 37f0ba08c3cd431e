"""Helpers of the service tests: settings of a small real search, server-sent events, waiting for a state."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

TOKEN = "service-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# A real search on the session's digits cnn, a few seconds of evaluations; no pruned.pt2 (torch.export is slow).
# bn: the cheapest score; no baselines and no deploy rung: these tests count the strategy's own evaluations
# (test_api.py's test_a_default_search_counts_its_baselines: the baselines through the service).
SMALL = {"strategy": "random", "budget": 0.5, "no_export": True, "score": "bn", "no_baselines": True,
         "select": "none"}


def parse_sse(text: str) -> list[dict[str, Any]]:
    """The events of a server-sent-events body: ``{"id": int, "event": str, "data": object}`` each."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "data" in fields:
            events.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
    return events


def wait_for(get: Callable[[], dict[str, Any]], until: Callable[[dict[str, Any]], bool], *, timeout: float,
             what: str) -> dict[str, Any]:
    """Polls ``get()`` every 0.1 s until ``until(result)``; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = get()
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s; last: {result}")
        time.sleep(0.1)
