"""Where a search runs: the :class:`Executor` contract and the local one (a process per search).

An executor starts the search worker (:mod:`search.service.worker`) with ``scripts/search.py``'s
arguments and returns a *handle*: a small JSON object the service keeps in its database, so a
restarted service can still find, stop or give up on the search. The Ray-job executor
(:mod:`search.service.ray_jobs`: submit, status, logs, stop through ``JobSubmissionClient``) fits the
same contract.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psutil

log = logging.getLogger(__name__)
EXIT_FILE = "service-exit.json"
CANCEL_FILE = "service-cancel.json"  # a cancel of an attempt, written before its SIGINT (see worker.py)
LOG_FILE = "service.log"


@dataclass(frozen=True)
class Launch:
    """One attempt of a search: what to run and where.

    Attributes:
        search_id: The service's id of the search.
        attempt: 1 for the first launch, +1 for each resume.
        argv: ``scripts/search.py`` arguments (``--out`` and ``--storage`` included).
        run_dir: The run folder (``--out``).
    """

    search_id: str
    attempt: int
    argv: tuple[str, ...]
    run_dir: Path


@dataclass(frozen=True)
class Exit:
    """How an attempt ended: ``code`` is the worker's exit status, negative for a signal, None when unknown
    (its process vanished without a word: killed, or its machine lost)."""

    code: int | None


class Executor(Protocol):
    """Starts, watches and stops search attempts. Handles are JSON objects (stored in the database)."""

    kind: str
    outlives_service: bool  # True: the attempts go on when the service stops, and a restarted one follows them

    def start(self, launch: Launch) -> dict[str, Any]:
        """Starts ``launch`` and returns its handle."""

    def poll(self, handle: dict[str, Any]) -> Exit | None:
        """None while the attempt runs, else how it ended."""

    def cancel(self, handle: dict[str, Any]) -> None:
        """Asks the attempt to stop; it writes its best policy so far, then exits."""

    def kill(self, handle: dict[str, Any]) -> None:
        """Stops the attempt now (its history rows stay)."""

    def logs(self, handle: dict[str, Any]) -> str:
        """The attempt's output so far (may be cut to its end)."""


def worker_command(python: str, launch: Launch) -> list[str]:
    """The worker's command line (the exit file lets a restarted service learn how a lost child ended)."""
    return [python, "-m", "search.service.worker", "--exit-file", str(launch.run_dir / EXIT_FILE),
            "--attempt", str(launch.attempt), "--", *launch.argv]


def write_cancel(run_dir: Path, attempt: int) -> None:
    """Records that ``attempt`` was cancelled. A worker reads it once it handles SIGINT, so a signal that
    came before (while the interpreter started, when SIGINT is still ignored) is not lost."""
    path = run_dir / CANCEL_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"attempt": attempt}) + "\n")
    os.replace(tmp, path)


def cancel_requested(run_dir: Path, attempt: int) -> bool:
    """Whether :func:`write_cancel` recorded a cancel of ``attempt`` (an earlier attempt's does not count)."""
    try:
        return json.loads((run_dir / CANCEL_FILE).read_text()).get("attempt") == attempt
    except (OSError, ValueError, AttributeError):
        return False


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (psutil's ``create_time()``, seconds since the epoch); None if it is gone or a
    zombie.

    A pid is reused after its process ends: the pair (pid, start time) names one process for good.
    """
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                return None
            return process.create_time()
    except psutil.Error:  # NoSuchProcess, ZombieProcess, AccessDenied
        return None


def _alive(pid: int, start_time: float | None) -> bool:
    return start_time is not None and process_start_time(pid) == start_time


class LocalProcessExecutor:
    """Each attempt is its own process (and process group) on this machine.

    ``--workers N`` in a search's settings starts a local Ray pool inside that process, as the CLI does.
    The processes outlive the service; a restarted service finds them again by pid and start time.

    Args:
        python: The interpreter to run the worker with.
        workdir: The processes' working folder.
        env: Extra environment variables of the processes.
        spawn: Starts a worker process: ``spawn(argv, cwd=, env=, stdout=)`` returns an object with ``pid`` and
            ``poll()``, like the default, ``subprocess.Popen`` in a session of its own (stdin ``/dev/null``,
            stderr into stdout). The tests pass one that forks the worker from a process that has imported it.
    """

    kind = "local"
    outlives_service = False  # a stopping service stops its searches (they become interrupted)

    def __init__(self, python: str, *, workdir: str | os.PathLike = ".", env: dict[str, str] | None = None,
                 spawn: Callable[..., Any] | None = None) -> None:
        self.python = python
        self.workdir = Path(workdir)
        self.env = dict(env or {})
        self._spawn = spawn or _popen
        self._children: dict[int, Any] = {}

    def start(self, launch: Launch) -> dict[str, Any]:
        launch.run_dir.mkdir(parents=True, exist_ok=True)
        (launch.run_dir / EXIT_FILE).unlink(missing_ok=True)
        (launch.run_dir / CANCEL_FILE).unlink(missing_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **self.env}
        with (launch.run_dir / LOG_FILE).open("ab") as out:
            proc = self._spawn(worker_command(self.python, launch), cwd=self.workdir, env=env, stdout=out)
        self._children[proc.pid] = proc
        log.info("search %s attempt %d: pid %d", launch.search_id, launch.attempt, proc.pid)
        return {"kind": self.kind, "pid": proc.pid, "start_time": process_start_time(proc.pid),
                "attempt": launch.attempt, "run_dir": str(launch.run_dir)}

    def poll(self, handle: dict[str, Any]) -> Exit | None:
        pid = handle["pid"]
        child = self._children.get(pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return None
            del self._children[pid]
            return Exit(code)
        if _alive(pid, handle.get("start_time")):
            return None  # started by an earlier service process: it still runs
        return Exit(read_exit_code(Path(handle["run_dir"]) / EXIT_FILE, handle["attempt"]))

    def cancel(self, handle: dict[str, Any]) -> None:
        # SIGINT is Ctrl-C: the runner stops, writes the best policy so far, and exits. The record comes
        # first: a worker that is still starting reads it as soon as it can handle the signal.
        if "run_dir" in handle and "attempt" in handle and Path(handle["run_dir"]).is_dir():
            write_cancel(Path(handle["run_dir"]), handle["attempt"])
        self._signal(handle, signal.SIGINT, group=False)

    def kill(self, handle: dict[str, Any]) -> None:
        self._signal(handle, signal.SIGKILL, group=True)  # with any Ray processes it started

    def logs(self, handle: dict[str, Any], limit: int = 64 * 1024) -> str:
        path = Path(handle["run_dir"]) / LOG_FILE
        try:
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - limit))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _signal(self, handle: dict[str, Any], sig: signal.Signals, *, group: bool) -> None:
        pid = handle["pid"]
        child = self._children.get(pid)
        if (child.poll() is not None) if child is not None else not _alive(pid, handle.get("start_time")):
            return  # never signal a pid that may now be another process
        try:
            os.killpg(pid, sig) if group else os.kill(pid, sig)
        except ProcessLookupError:
            pass  # it ended in between


def _popen(argv: list[str], *, cwd: Path, env: dict[str, str], stdout) -> subprocess.Popen:
    # A session of its own: a Ctrl-C meant for the service does not reach the search.
    return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
                            start_new_session=True)


def read_exit_code(path: Path, attempt: int) -> int | None:
    """The exit status the worker recorded in ``path`` for ``attempt``; None without such a record."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data.get("exit_code") if data.get("attempt") == attempt else None
