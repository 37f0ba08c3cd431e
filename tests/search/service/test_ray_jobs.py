"""Searches as Ray jobs through the service (acceptance 3): a real Ray head with its job server.

The module starts its own head (``ray start --head --block``, its own temp dir and ports), submits
searches through the service's API with ``ray_address`` set, and stops the head through the process
it started (never ``ray stop``), checking that none of that head's processes is left.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from search.service.app import create_app
from search.service.executor import Exit, Launch
from search.service.ray_jobs import RayJobExecutor
from search.service.settings import ServiceConfig
from tests.search.service.helpers import AUTH, SMALL, TOKEN, wait_for

# A Ray instance of its own: with the other Ray modules on one xdist worker, one after another.
pytestmark = pytest.mark.xdist_group("ray")
RAY = str(Path(sys.executable).with_name("ray"))
PORTS = ("port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "node-manager-port",
         "object-manager-port", "runtime-env-agent-port", "metrics-export-port", "ray-client-server-port")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """State, parent pid and session id of process ``pid`` (Linux ``/proc``); None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name, in parentheses, may hold spaces
    return fields[0], int(fields[1]), int(fields[3])


def _processes_of(head: subprocess.Popen, temp_dir: str) -> set[int]:
    """Live pids in the head's process tree or session, or whose command line names its temp dir.

    Ray renames its workers (``ray::...``), so the tree and the session find those; the job drivers
    run in sessions of their own under a worker, so the tree finds them.
    """
    table: dict[int, tuple[str, int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            table[int(entry.name)] = stat
    ours = {pid for pid, (_, _, sid) in table.items() if sid == head.pid} | {head.pid}
    for pid in table:
        try:
            if temp_dir.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                ours.add(pid)
        except OSError:
            continue
    grew = True
    while grew:  # add the children of what is ours
        children = {pid for pid, (_, ppid, _) in table.items() if ppid in ours} - ours
        ours |= children
        grew = bool(children)
    return {pid for pid in ours if pid in table and table[pid][0] not in ("Z", "X") and pid != os.getpid()}


def _still_alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if (stat := _stat(pid)) is not None and stat[0] not in ("Z", "X")}


@pytest.fixture(scope="module")
def ray_head():
    """The job server's address of a head this module starts, with 2 CPUs; stopped through its own process."""
    temp_dir = tempfile.mkdtemp(prefix="amcrj", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    ports = {name: _free_port() for name in PORTS}
    command = [RAY, "start", "--head", "--block", "--temp-dir", temp_dir, "--num-cpus", "2",
               "--node-ip-address", "127.0.0.1", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
               "--object-store-memory", str(100 * 1024 ** 2), "--min-worker-port", "0", "--max-worker-port", "0",
               "--disable-usage-stats", *(word for name, port in ports.items() for word in (f"--{name}", str(port)))]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    log_path = Path(temp_dir) / "head.log"
    with log_path.open("wb") as out:
        head = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, f"the Ray head exited: {log_path.read_text()[-3000:]}"
            try:
                JobSubmissionClient(address)  # asks the job server for its version
                break
            except (OSError, RuntimeError):
                assert time.monotonic() < deadline, f"no job server at {address}: {log_path.read_text()[-3000:]}"
                time.sleep(0.3)
        yield address
    finally:
        procs = _processes_of(head, temp_dir)
        head.send_signal(signal.SIGTERM)  # 'ray start --block' stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        procs |= _processes_of(head, temp_dir)
        deadline = time.monotonic() + 20
        while (left := _still_alive(procs)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in left:
            os.kill(pid, signal.SIGKILL)  # ours: do not leave them to the rest of the session
        assert not left, f"Ray processes left after the head stopped: {sorted(left)}"
        shutil.rmtree(temp_dir, ignore_errors=True)  # kept when the test failed: its logs


@pytest.fixture()
def config(ray_head: str, tmp_path: Path, amc_cache: Path, monkeypatch: pytest.MonkeyPatch) -> ServiceConfig:
    """A service on the module's head (its searches: Ray jobs), state in a fresh folder."""
    monkeypatch.setenv("AMC_CACHE_DIR", str(amc_cache))  # forwarded to the jobs: they load the session's cnn
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return ServiceConfig(token=TOKEN, state_dir=str(tmp_path / "service"), max_concurrent=1, poll_interval=0.2,
                         ray_address=ray_head, cancel_timeout=30)


def _get(client: TestClient, search_id: str) -> dict:
    response = client.get(f"/v1/searches/{search_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def _artifact(client: TestClient, search_id: str, name: str):
    response = client.get(f"/v1/searches/{search_id}/artifacts/{name}", headers=AUTH)
    assert response.status_code == 200, (name, response.text)
    return response


def _job(ray_head: str, search_id: str, attempt: int = 1):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(ray_head).get_job_info(f"amc-search-{search_id}-{attempt}")


@pytest.mark.timeout(300)
def test_a_search_runs_as_a_ray_job_and_its_artifacts_come_back(config: ServiceConfig, ray_head: str,
                                                                 amc_cache: Path) -> None:
    body = {**SMALL, "evaluations": 4, "workers": 2}  # 2 workers: the job's evaluator actors join the head
    with TestClient(create_app(config)) as client:
        response = client.post("/v1/searches", json=body, headers=AUTH)
        assert response.status_code == 201, response.text
        search_id = response.json()["id"]
        done = wait_for(lambda: _get(client, search_id), lambda s: s["state"] not in ("queued", "running"),
                        timeout=240, what="the Ray job's end")
        assert (done["state"], done["evaluations_done"], done["progress"]) == ("succeeded", 4, 1.0), done
        rows = list(csv.DictReader(io.StringIO(_artifact(client, search_id, "history.csv").text)))
        policy = _artifact(client, search_id, "policy.json").json()
        run_log = _artifact(client, search_id, "run.log").text

    job = _job(ray_head, search_id)
    assert (str(job.status), job.driver_exit_code) == ("SUCCEEDED", 0)
    assert job.metadata["amc_search"] == search_id
    assert "search.service.worker" in job.entrypoint and "--ray-address=auto" in job.entrypoint
    assert sorted(int(r["index"]) for r in rows) == [0, 1, 2, 3]
    assert policy["meta"]["evaluations"] == 4 and not policy["meta"]["interrupted"]
    assert policy["metrics"]["cost_ratio"] <= SMALL["budget"] + 1e-9  # the search's budget holds
    assert policy["metrics"]["val_accuracy"] == done["best"]["accuracy"] == max(float(r["accuracy"]) for r in rows)
    assert "Ray pool ready: 2 workers" in run_log  # the job's actors, on the head's 2 CPUs
    assert f"loaded cached base model {amc_cache}" in run_log  # AMC_CACHE_DIR reached the job


@pytest.mark.timeout(300)
def test_a_ray_job_outlives_the_service_and_a_cancel_keeps_its_best(config: ServiceConfig, ray_head: str) -> None:
    total = 300
    with TestClient(create_app(config)) as first:
        search_id = first.post("/v1/searches", json={**SMALL, "evaluations": total}, headers=AUTH).json()["id"]
        wait_for(lambda: _get(first, search_id), lambda s: s["evaluations_done"] >= 1, timeout=180,
                 what="a first evaluation")
    # The service stopped; its Ray job did not.
    assert str(_job(ray_head, search_id).status) == "RUNNING"

    with TestClient(create_app(config)) as second:  # a restarted service on the same database follows it again
        seen = _get(second, search_id)
        assert seen["state"] == "running" and seen["attempt"] == 1
        wait_for(lambda: _get(second, search_id), lambda s: s["evaluations_done"] > seen["evaluations_done"],
                 timeout=60, what="progress seen by the restarted service")
        response = second.post(f"/v1/searches/{search_id}/cancel", headers=AUTH)
        assert response.status_code == 202 and response.json()["state"] == "cancelling"
        stopped = wait_for(lambda: _get(second, search_id), lambda s: s["state"] not in ("running", "cancelling"),
                           timeout=60, what="the cancel")
        policy = _artifact(second, search_id, "policy.json").json()
    assert stopped["state"] == "cancelled", stopped
    done = stopped["evaluations_done"]
    assert 1 <= done < total
    assert str(_job(ray_head, search_id).status) == "STOPPED"  # by stop_job's SIGTERM, before Ray's SIGKILL
    assert policy["meta"]["interrupted"] and policy["meta"]["evaluations"] == done
    assert policy["metrics"]["val_accuracy"] == stopped["best"]["accuracy"]


@pytest.mark.timeout(150)
def test_kill_reaches_a_job_that_ignores_sigterm(ray_head: str, tmp_path: Path) -> None:
    stubborn = tmp_path / "stubborn"  # stands in for the worker's interpreter: it ignores Ray's SIGTERM
    stubborn.write_text("#!/bin/sh\ntrap '' TERM\necho stubborn started\nexec sleep 120\n")
    stubborn.chmod(0o755)
    executor = RayJobExecutor(ray_head, python=str(stubborn), workdir=tmp_path, stop_wait=5)
    launch = Launch(search_id="feedfacefeedface", attempt=1, argv=("--budget=0.5",), run_dir=tmp_path / "run")
    handle = executor.start(launch)
    assert handle["submission_id"] == "amc-search-feedfacefeedface-1"
    wait_for(lambda: {"logs": executor.logs(handle)}, lambda r: "stubborn started" in r["logs"], timeout=60,
             what="the job's output")
    assert executor.poll(handle) is None
    assert executor.start(launch) == handle  # submitted before (a service that stopped in between): followed
    asked = time.monotonic()
    executor.kill(handle)
    ended = wait_for(lambda: {"exit": executor.poll(handle)}, lambda r: r["exit"] is not None, timeout=30,
                     what="the killed job's end")
    # Ray's SIGKILL, stop_wait after the stop (its own default wait is 3 s), long before the sleep's end.
    assert 5 <= time.monotonic() - asked < 30
    assert ended["exit"] == Exit(None)  # no exit record: interrupted (or cancelled), like a lost process
    assert str(_job(ray_head, "feedfacefeedface").status) == "STOPPED"


def test_an_unreachable_job_server_fails_the_search_with_the_fix(tmp_path: Path, monkeypatch) -> None:
    address = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    config = ServiceConfig(token=TOKEN, state_dir=str(tmp_path / "service"), poll_interval=0.1, ray_address=address)
    with TestClient(create_app(config)) as client:
        search_id = client.post("/v1/searches", json={**SMALL, "evaluations": 2}, headers=AUTH).json()["id"]
        failed = wait_for(lambda: _get(client, search_id), lambda s: s["state"] == "failed", timeout=30,
                          what="failed")
    assert f"cannot reach the Ray job server at --ray-address {address!r}" in failed["error"]
    assert "ray start --head" in failed["error"]
    executor = RayJobExecutor(address, python=sys.executable)  # and a job it cannot ask about still counts as running
    assert executor.poll({"kind": "ray", "submission_id": "amc-search-x-1", "attempt": 1,
                          "run_dir": str(tmp_path)}) is None


def test_ray_address_must_be_the_job_server_url() -> None:
    from amc.errors import ConfigError

    with pytest.raises(ConfigError, match="http://127.0.0.1:8265"):
        ServiceConfig(token=TOKEN, ray_address="127.0.0.1:6379")
