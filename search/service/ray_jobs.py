"""Searches as Ray jobs (``serve.py --ray-address http://HEAD:8265``): the :class:`RayJobExecutor`.

Each attempt is one job submitted to the cluster's job server (``ray.job_submission.JobSubmissionClient``)
with the same worker the local executor runs (``python -m search.service.worker ... -- <search.py args>``).
The job's submission id, ``amc-search-<id>-<attempt>``, is the handle: a restarted service asks Ray
for that job and follows it again while it runs. The jobs outlive the service; stopping the service
leaves them running.

| Ray job status | exit the scheduler sees |
|---|---|
| PENDING, RUNNING (or the job server unreachable) | still running |
| SUCCEEDED, FAILED, STOPPED | the worker's exit record (``service-exit.json``), else Ray's driver exit code |
| FAILED before the worker ran (runtime env, lost supervisor) | 1: failed, with Ray's message in the log |
| STOPPED without an exit record (killed) | unknown: interrupted (cancelled if asked) |
| unknown to the job server (the head restarted) | unknown: interrupted |

What the job needs from the machine it runs on (its driver runs on the head node): this project and
its interpreter at the paths the service uses (the project goes on ``PYTHONPATH``), and the run folder
on storage the service reads too (it follows ``history.csv`` and serves the artifacts from there).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amc.errors import ConfigError
from search.service.executor import (
    EXIT_FILE,
    Exit,
    Launch,
    read_exit_code,
    worker_command,
)

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]  # the folder holding the search and amc packages
RUNNING = ("PENDING", "RUNNING")


class _Unreachable(Exception):
    """The job server did not answer (the scheduler tries again at its next look)."""


class RayJobExecutor:
    """Each attempt is a Ray job on the cluster whose job server (dashboard) is at ``address``.

    A search with ``workers`` > 1 joins the cluster from inside its job (``--ray-address auto``): its
    evaluator actors run on the cluster's CPUs. ``cancel`` and ``kill`` are ``stop_job``: Ray sends
    SIGTERM (the worker stops like on Ctrl-C and writes its best policy), then SIGKILL after
    ``stop_wait`` seconds (Ray's ``RAY_JOB_STOP_WAIT_TIME_S``, set in each job's environment).

    Args:
        address: The job server, e.g. ``http://127.0.0.1:8265``.
        python: The interpreter of the job's worker, as a path on the head node.
        workdir: The job's working folder (relative ``checkpoint``/``data_dir`` start here).
        env: Extra environment variables of the jobs. Besides these, each job gets the service's
            ``AMC_*`` variables and ``OMP_NUM_THREADS`` (1 unless set), as local searches do.
        stop_wait: Seconds a stopped job may take to write its best policy before Ray kills it.
    """

    kind = "ray"
    outlives_service = True

    def __init__(self, address: str, *, python: str, workdir: str | os.PathLike = ".",
                 env: dict[str, str] | None = None, stop_wait: float = 60.0) -> None:
        self.address = address
        self.python = python
        self.workdir = Path(workdir).resolve()
        self.env = dict(env or {})
        self.stop_wait = stop_wait
        self._client: JobSubmissionClient | None = None
        self._unreachable = False

    def start(self, launch: Launch) -> dict[str, Any]:
        launch.run_dir.mkdir(parents=True, exist_ok=True)
        (launch.run_dir / EXIT_FILE).unlink(missing_ok=True)
        submission_id = f"amc-search-{launch.search_id}-{launch.attempt}"
        handle = {"kind": self.kind, "submission_id": submission_id, "address": self.address,
                  "attempt": launch.attempt, "run_dir": str(launch.run_dir)}
        try:
            client = self._connect()
            client.submit_job(entrypoint=self.entrypoint(launch), submission_id=submission_id,
                              runtime_env={"env_vars": self.job_env()},
                              metadata={"amc_search": launch.search_id, "attempt": str(launch.attempt)})
        except _Unreachable as exc:
            raise ConfigError(str(exc)) from None
        except OSError as exc:
            raise ConfigError(self._unreachable_message(exc)) from None
        except _refusals() as exc:  # an HTTP error, or the cluster wants a token (Ray's AuthenticationError)
            if "already exists" not in str(exc):
                raise ConfigError(f"the Ray job server at --ray-address {self.address!r} refused the job: "
                                  f"{_first_line(exc)}") from None
            # Submitted before the service could record it (it stopped in between): follow that job.
            log.warning("search %s attempt %d: Ray job %s exists already; following it", launch.search_id,
                        launch.attempt, submission_id)
        log.info("search %s attempt %d: Ray job %s at %s", launch.search_id, launch.attempt, submission_id,
                 self.address)
        return handle

    def entrypoint(self, launch: Launch) -> str:
        """The job's shell command: the worker, from ``workdir`` (``exec``: Ray's SIGTERM reaches it)."""
        argv = list(launch.argv)
        if _workers(argv) > 1:
            argv.append("--ray-address=auto")  # the job's own cluster (Ray sets RAY_ADDRESS for its driver)
        command = worker_command(self.python, dataclasses.replace(launch, argv=tuple(argv)))
        return f"cd {shlex.quote(str(self.workdir))} && exec {shlex.join(command)}"

    def job_env(self) -> dict[str, str]:
        """The environment variables every job gets (they reach its evaluator actors too)."""
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        forwarded = {k: v for k, v in os.environ.items() if k.startswith("AMC_")}
        return {"PYTHONPATH": path, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **forwarded,
                "RAY_JOB_STOP_WAIT_TIME_S": str(max(1, math.ceil(self.stop_wait))), **self.env}

    def poll(self, handle: dict[str, Any]) -> Exit | None:
        if handle.get("kind") != self.kind:
            log.warning("search attempt %s was not started as a Ray job (handle %s); it counts as ended",
                        handle.get("attempt"), handle)
            return Exit(None)
        try:
            info = self._info(handle["submission_id"])
        except _Unreachable:
            return None  # it may still run: look again later
        if info is None:
            log.warning("Ray job %s is unknown to the job server at %s (the head restarted?)",
                        handle["submission_id"], self.address)
            return Exit(None)
        status = str(info.status)
        if status in RUNNING:
            return None
        code = read_exit_code(Path(handle["run_dir"]) / EXIT_FILE, handle["attempt"])
        if code is None:
            code = info.driver_exit_code
        if code is None:
            code = {"SUCCEEDED": 0, "FAILED": 1}.get(status)  # FAILED without a driver: it never ran
        return Exit(code)

    def cancel(self, handle: dict[str, Any]) -> None:
        self._stop(handle)

    def kill(self, handle: dict[str, Any]) -> None:
        # The job server has no immediate kill: a stopped job gets SIGKILL after stop_wait seconds.
        self._stop(handle)

    def logs(self, handle: dict[str, Any], limit: int = 64 * 1024) -> str:
        if handle.get("kind") != self.kind:
            return ""
        submission_id = handle["submission_id"]
        try:
            client = self._connect()
            text = client.get_job_logs(submission_id)
            info = client.get_job_info(submission_id)
        except (_Unreachable, OSError, *_refusals()) as exc:
            log.warning("cannot read the logs of Ray job %s: %s", submission_id, _first_line(exc))
            return ""
        if str(info.status) == "FAILED" and info.driver_exit_code is None and info.message:
            text += f"\nRay job {submission_id} failed: {info.message.strip()}\n"
        return text[-limit:]

    def _stop(self, handle: dict[str, Any]) -> None:
        if handle.get("kind") != self.kind:
            return
        try:
            self._connect().stop_job(handle["submission_id"])  # False when it had ended already
        except (_Unreachable, OSError, *_refusals()) as exc:
            log.warning("cannot stop Ray job %s: %s", handle["submission_id"], _first_line(exc))

    def _connect(self) -> JobSubmissionClient:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            try:
                self._client = JobSubmissionClient(self.address)  # it asks the server for its version
            except OSError as exc:  # ConnectionError and requests' errors
                raise _Unreachable(self._unreachable_message(exc)) from None
        return self._client

    def _info(self, submission_id: str) -> JobDetails | None:
        """The job's details; None when the job server does not know it. Raises _Unreachable."""
        try:
            client = self._connect()
            try:
                info = client.get_job_info(submission_id)
            except RuntimeError:  # 404 (or another refusal): is the job gone?
                if any(job.submission_id == submission_id for job in client.list_jobs()):
                    raise
                info = None
        except (_Unreachable, OSError, *_refusals()) as exc:
            if not self._unreachable:
                log.warning("%s; following the Ray jobs again once it answers", _first_line(exc))
            self._unreachable = True
            raise _Unreachable(str(exc)) from None
        if self._unreachable:
            log.info("the Ray job server at %s answers again", self.address)
            self._unreachable = False
        return info

    def _unreachable_message(self, exc: BaseException) -> str:
        return (f"cannot reach the Ray job server at --ray-address {self.address!r} ({_first_line(exc)}); start "
                "the head with 'ray start --head --dashboard-host 127.0.0.1' (its job server is on port 8265) "
                "or leave --ray-address out to run searches as local processes")


def _refusals() -> tuple[type[Exception], ...]:
    """What the job client raises when the server answers with an error."""
    from ray.exceptions import RayError

    return RuntimeError, RayError


def _workers(argv: list[str]) -> int:
    """The search's ``--workers`` (1 when not given: a search without Ray)."""
    for arg in argv:
        if arg.startswith("--workers="):
            return int(arg.partition("=")[2])
    return 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
