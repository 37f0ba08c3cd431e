"""Faults (acceptance 2): the service and a search are SIGKILLed; the restarted service reconciles.

``scripts/serve.py`` runs as a real process. Two searches run; the service dies with one of them. The
restarted service marks the dead one ``interrupted`` and follows the survivor again; the dead one
resumes to exactly its evaluations, with every row of before the kill kept and none evaluated twice.
The survivor is then stopped by a graceful stop (Ctrl-C) of the second service: it keeps its best policy.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import pytest
from sqlalchemy import select

from search.service.db import EventRow, SearchRow, open_database
from search.service.executor import process_start_time
from tests import forkserver
from tests.search.helpers import REPO, subprocess_env
from tests.search.service.helpers import SMALL, parse_sse, wait_for

pytestmark = pytest.mark.xdist_group("service")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``scripts/serve.py`` on a free port; its output goes to ``<state>/serve-<n>.log``."""

    def __init__(self, state: Path, cache: Path, n: int) -> None:
        self.port = _free_port()
        self.log = state / f"serve-{n}.log"
        with self.log.open("w") as out:
            self.proc = forkserver.Process(  # a real process, forked from the worker's server (no imports)
                [sys.executable, str(REPO / "scripts" / "serve.py"), "--port", str(self.port), "--state-dir",
                 str(state), "--poll-interval", "0.1", "--max-concurrent", "2", "--log-level", "warning"],
                cwd=REPO, env=subprocess_env(cache), stdout=out, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(self._health, lambda ok: ok, timeout=60, what=f"the server up (log: {self.log})")

    def _health(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=120)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _search_pids(state: Path) -> dict[str, dict]:
    sessions = open_database(f"sqlite:///{state / 'service.db'}")
    with sessions() as session:
        return {row.id: row.handle for row in session.scalars(select(SearchRow)) if row.handle}


@pytest.fixture
def state(tmp_path: Path):
    yield tmp_path
    for handle in _search_pids(tmp_path).values():  # whatever a failed test left running
        if process_start_time(handle["pid"]) == handle["start_time"]:
            os.killpg(handle["pid"], signal.SIGKILL)


@pytest.mark.timeout(300)
def test_killed_search_is_interrupted_after_restart_and_resumes_exactly(state: Path, amc_cache: Path) -> None:
    first = Server(state, amc_cache, 1)
    try:
        assert "generated the bearer token" in first.log.read_text()
        token_file = state / "token"
        assert token_file.stat().st_mode & 0o077 == 0  # readable by its owner only
        token = token_file.read_text().strip()
        with first.client(token) as api:
            killed = api.post("/v1/searches", json={**SMALL, "evaluations": 30}).json()["id"]
            wait_for(lambda: api.get(f"/v1/searches/{killed}").json(), lambda s: s["evaluations_done"] >= 3,
                     timeout=90, what="three evaluations")
            # Started only now (it runs until the second service stops it, a core's worth of evaluations).
            survivor = api.post("/v1/searches", json={**SMALL, "evaluations": 400, "budget": 0.4}).json()["id"]
            wait_for(lambda: api.get(f"/v1/searches/{survivor}").json(), lambda s: s["state"] == "running",
                     timeout=30, what="the survivor running")
    finally:
        first.stop()  # SIGKILL: no shutdown, the searches go on
    handle = _search_pids(state)[killed]
    os.killpg(handle["pid"], signal.SIGKILL)
    # The survivor is paused until the end: only its being alive matters to the second service meanwhile, and
    # its evaluations would take a core from the rest of the suite.
    paused = _search_pids(state)[survivor]["pid"]
    os.killpg(paused, signal.SIGSTOP)
    wait_for(lambda: process_start_time(handle["pid"]), lambda t: t != handle["start_time"], timeout=10,
             what="the search process gone")
    history = state / "runs" / killed / "history.csv"
    before = history.read_text()
    kept = before[: before.rfind("\n") + 1]  # the complete rows

    second = Server(state, amc_cache, 2)
    try:
        assert "bearer token in" in second.log.read_text()
        with second.client(token) as api:
            assert api.get(f"/v1/searches/{killed}").json()["state"] == "interrupted"
            assert api.get(f"/v1/searches/{survivor}").json()["state"] == "running"  # followed again
            assert api.post(f"/v1/searches/{killed}/resume").status_code == 202
            resumed = wait_for(lambda: api.get(f"/v1/searches/{killed}").json(),
                               lambda s: s["state"] not in ("queued", "running"), timeout=150, what="the end")
            assert (resumed["state"], resumed["evaluations_done"], resumed["attempt"]) == ("succeeded", 30, 2)
            events = parse_sse(api.get(f"/v1/searches/{killed}/events").text)
            assert api.get(f"/v1/searches/{survivor}").json()["state"] == "running"
            os.killpg(paused, signal.SIGCONT)
            wait_for(lambda: api.get(f"/v1/searches/{survivor}").json(), lambda s: s["evaluations_done"] >= 3,
                     timeout=60, what="the survivor's first three evaluations")
        second.proc.send_signal(signal.SIGINT)  # a graceful stop: the running search stops with its best so far
        assert second.proc.wait(40) == 0
    finally:
        second.stop()

    text = history.read_text()
    assert text.startswith(kept)  # nothing evaluated before the kill was lost or rewritten
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["index"]) for r in rows] == list(range(30))
    assert sorted(int(r["step"]) for r in rows) == list(range(30))  # none evaluated twice
    assert [e["data"]["count"] for e in events if e["event"] == "evaluation"] == list(range(1, 31))
    states = [e["data"]["state"] for e in events if e["event"] == "state"]
    assert states == ["queued", "running", "interrupted", "queued", "running", "succeeded"]

    # The survivor, started by the first service, was stopped by the second, which learned how it ended
    # from its exit file (it is not that process's child): interrupted, best policy so far written.
    with open_database(f"sqlite:///{state / 'service.db'}")() as session:
        last = session.get(SearchRow, survivor)
        assert (last.state, last.cancel_requested) == ("interrupted", False)
        done = last.evaluations_done
        final = session.scalars(select(EventRow).where(EventRow.search_id == survivor)
                                .order_by(EventRow.id.desc())).first()
        counts = list(session.scalars(select(EventRow.data["count"].as_integer())
                                      .where(EventRow.search_id == survivor, EventRow.kind == "evaluation")
                                      .order_by(EventRow.id)))
    # 130: an interrupted search.py exits as shells do, after writing its best policy (issue 32, point 5).
    assert final.data == {"state": "interrupted", "previous": "running", "attempt": 1, "exit_code": 130}
    assert 3 <= done < 400 and counts == list(range(1, done + 1))
    policy = json.loads((state / "runs" / survivor / "policy.json").read_text())
    assert policy["meta"]["interrupted"] and policy["meta"]["evaluations"] == done
