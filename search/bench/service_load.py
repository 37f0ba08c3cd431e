"""Service load benchmark (``scripts/bench.py service-load``): a queue burst, then open-loop status polling.

A real ``scripts/serve.py`` (uvicorn, loopback only, a temporary state folder, SQLite) gets
``searches`` tiny searches at once (digits cnn, ``evaluations`` each, no export; the base model is
cached before the server starts) with ``--max-concurrent``. While they drain, the search list is
sampled: never more running than ``--max-concurrent``, started in submission order, every one
finishes. Then ``seconds`` of ``GET /v1/searches/<id>`` at ``rate`` requests per second, each sent at
its own time whatever the earlier ones do (open loop), give the errors and latency percentiles.
The whole run is bounded by ``timeout``; the server is stopped through the process this started.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, TimeElapsedColumn

from search.bench.common import BenchError, machine
from search.bench.markdown import ResultTable, update_section

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
FINAL = ("succeeded", "failed", "cancelled", "interrupted")
LIVE = ("running", "cancelling")


@dataclass(frozen=True)
class LoadSettings:
    """One run of the benchmark (the defaults are issue 22's acceptance 7)."""

    searches: int = 50
    max_concurrent: int = 2
    evaluations: int = 2
    strategy: str = "random"
    seconds: float = 30.0  # of status polling
    rate: float = 200.0  # status requests per second
    timeout: float = 1800.0  # the whole run, server start to stop

    def __post_init__(self) -> None:
        if self.strategy not in ("random", "uniform"):
            raise BenchError(f"--strategy must be random or uniform (tiny searches), got {self.strategy!r}")
        if min(self.searches, self.max_concurrent, self.evaluations) < 1:
            raise BenchError("--searches, --max-concurrent and --evaluations must be at least 1")
        if min(self.seconds, self.rate, self.timeout) <= 0:
            raise BenchError("--poll-seconds, --rate and --timeout must be positive")


@dataclass(frozen=True)
class Polling:
    """The status-polling phase; latencies in milliseconds, from each request's send to its answer."""

    requests: int
    errors: int
    error_kinds: dict[str, int]
    p50: float
    p95: float
    p99: float
    max: float
    achieved_rate: float  # requests sent per second of the phase
    max_lag_ms: float  # latest send behind its schedule (the client keeping up)
    load_average: float  # the machine's 1-minute load average as the polling began (other jobs included)
    niceness: int  # of this process (and the server and searches it started)


@dataclass(frozen=True)
class LoadResult:
    settings: LoadSettings
    submit_errors: int
    burst_seconds: float  # the submissions, first sent to last answered
    drain_seconds: float  # first submission to the last search's end
    states: dict[str, int]  # final states
    samples: int  # looks at the search list while the queue drained
    max_running_sampled: int
    max_running_recorded: int  # from the searches' started_at / finished_at
    in_order: bool  # started in submission order
    polling: Polling

    def problems(self) -> list[str]:
        """What broke the benchmark's invariants (empty: all held)."""
        limit, out = self.settings.max_concurrent, []
        if self.submit_errors:
            out.append(f"{self.submit_errors} of {self.settings.searches} submissions failed")
        if self.states.get("succeeded", 0) != self.settings.searches:
            out.append(f"not every search succeeded: {self.states}")
        if max(self.max_running_sampled, self.max_running_recorded) > limit:
            out.append(f"more than --max-concurrent {limit} ran at once (seen {self.max_running_sampled}, "
                       f"recorded {self.max_running_recorded})")
        if not self.in_order:
            out.append("searches did not start in submission order")
        if self.polling.errors:
            out.append(f"{self.polling.errors} status requests failed: {self.polling.error_kinds}")
        return out


class ServeProcess:
    """``scripts/serve.py`` on a free loopback port with a known token; its output goes to ``state/serve.log``."""

    def __init__(self, state: Path, *, max_concurrent: int, max_evaluations: int) -> None:
        self.token = secrets.token_urlsafe(24)
        (state / "token.txt").write_text(self.token + "\n")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = state / "serve.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(REPO / "scripts" / "serve.py"), "--host", "127.0.0.1", "--port", str(self.port),
                 "--state-dir", str(state), "--token-file", str(state / "token.txt"), "--max-concurrent",
                 str(max_concurrent), "--max-evaluations", str(max_evaluations), "--poll-interval", "0.2",
                 "--log-level", "warning"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"serve.py exited ({self.proc.returncode}); its log ends: "
                             f"{self.log.read_text(errors='replace')[-800:]}")

    def stop(self) -> None:
        """Ctrl-C (the searches that still run become interrupted), then SIGKILL after 60 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def service_load(settings: LoadSettings, *, on_sample: Callable[[int, int], None] | None = None) -> LoadResult:
    """Runs the benchmark (see the module docstring); ``on_sample(finished, searches)`` follows the queue.

    Raises:
        BenchError: httpx2 is missing, the server does not start, or the run passes ``settings.timeout``.
    """
    try:
        import httpx2  # noqa: F401  (the test extra's client)
    except ImportError:
        raise BenchError("the service-load benchmark needs httpx2: pip install -c constraints.txt -e '.[service,test]'")
    from amc.context import ContextConfig, build_context

    build_context(ContextConfig(), progress=False)  # the searches' base model, cached once here
    with tempfile.TemporaryDirectory(prefix="amc-service-load-") as folder:
        server = ServeProcess(Path(folder), max_concurrent=settings.max_concurrent,
                              max_evaluations=settings.evaluations)
        try:
            return asyncio.run(asyncio.wait_for(_run(server, settings, on_sample), settings.timeout))
        except TimeoutError:
            raise BenchError(f"the run took longer than --timeout {settings.timeout:g} s (serve.py's log: "
                             f"{server.log.read_text(errors='replace')[-800:]})") from None
        finally:
            server.stop()


async def _run(server: ServeProcess, settings: LoadSettings,
               on_sample: Callable[[int, int], None] | None) -> LoadResult:
    import httpx2 as httpx

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"},
                                 timeout=30, limits=limits) as client:
        await _wait_up(client, server)
        began = time.perf_counter()
        # One body for all: --seed also seeds the base model, so another seed would train (and cache) another.
        body = {"strategy": settings.strategy, "evaluations": settings.evaluations, "budget": 0.5, "no_export": True}
        answers = await asyncio.gather(*(client.post("/v1/searches", json=body) for _ in range(settings.searches)),
                                       return_exceptions=True)
        burst = time.perf_counter() - began
        ids = [a.json()["id"] for a in answers if not isinstance(a, BaseException) and a.status_code == 201]
        samples, max_running, rows = 0, 0, []
        while True:
            server.check_alive()
            rows = (await client.get("/v1/searches", params={"limit": 1000})).json()["searches"]
            samples += 1
            max_running = max(max_running, sum(r["state"] in LIVE for r in rows))
            if on_sample is not None:
                on_sample(sum(r["state"] in FINAL for r in rows), len(rows))
            if all(r["state"] in FINAL for r in rows):
                break
            await asyncio.sleep(0.2)
        drain = time.perf_counter() - began
        log.info("%d searches finished in %.1f s; polling for %g s", len(rows), drain, settings.seconds)
        polling = await _poll(client, ids or ["0" * 16], rate=settings.rate, seconds=settings.seconds)
    states = {state: n for state in FINAL if (n := sum(r["state"] == state for r in rows))}
    starts = [r["started_at"] for r in rows if r["started_at"]]  # the list is in submission (queue) order
    return LoadResult(settings=settings, submit_errors=settings.searches - len(ids), burst_seconds=burst,
                      drain_seconds=drain, states=states, samples=samples, max_running_sampled=max_running,
                      max_running_recorded=_max_overlap(rows), in_order=starts == sorted(starts), polling=polling)


async def _wait_up(client: Any, server: ServeProcess, timeout: float = 120.0) -> None:
    import httpx2 as httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise BenchError(f"serve.py did not answer /healthz within {timeout:g} s (log: {server.log})")


def _max_overlap(rows: list[dict[str, Any]]) -> int:
    """Most searches between their started_at and finished_at at one moment (an end before a start at a tie)."""
    moments = []
    for row in rows:
        if row["started_at"]:
            moments.append((datetime.fromisoformat(row["started_at"]), 1))
        if row["started_at"] and row["finished_at"]:
            moments.append((datetime.fromisoformat(row["finished_at"]), -1))
    running = peak = 0
    for _, step in sorted(moments):
        running += step
        peak = max(peak, running)
    return peak


async def _poll(client: Any, ids: list[str], *, rate: float, seconds: float) -> Polling:
    import httpx2 as httpx

    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def one(search_id: str) -> None:
        sent = time.perf_counter()
        try:
            response = await client.get(f"/v1/searches/{search_id}")
            ok = response.status_code == 200 and response.json()["id"] == search_id
            kind = None if ok else f"HTTP {response.status_code}"
        except (httpx.HTTPError, ValueError, KeyError) as exc:  # transport errors, timeouts, a bad body
            kind = type(exc).__name__
        if kind is None:
            latencies.append(1e3 * (time.perf_counter() - sent))
        else:
            errors[kind] = errors.get(kind, 0) + 1

    total, tasks, lag, load = int(rate * seconds), [], 0.0, os.getloadavg()[0]
    start = loop.time()
    for i, search_id in zip(range(total), itertools.cycle(ids)):
        due = start + i / rate
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        lag = max(lag, loop.time() - due)
        tasks.append(asyncio.create_task(one(search_id)))
    sending = loop.time() - start
    await asyncio.gather(*tasks)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [0.0] * 99
    return Polling(requests=total, errors=sum(errors.values()), error_kinds=errors, p50=cuts[49], p95=cuts[94],
                   p99=cuts[98], max=max(latencies, default=0.0), achieved_rate=total / max(sending, 1e-9),
                   max_lag_ms=1e3 * lag, load_average=load, niceness=os.nice(0))


def service_load_report(settings: LoadSettings, *, command: str, markdown: Path, console: Console) -> LoadResult:
    """Runs :func:`service_load`, prints its tables and writes the ``service-load`` section of ``markdown``.

    Raises:
        BenchError: The run failed or broke an invariant (then nothing is written).
    """
    with Progress(*Progress.get_default_columns(), TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("searches finished", total=settings.searches)
        result = service_load(settings, on_sample=lambda done, total: bar.update(task, completed=done))
    s, p = settings, result.polling
    queue = ResultTable(f"{s.searches} searches submitted at once, --max-concurrent {s.max_concurrent}",
                        ("searches", "--max-concurrent", "submit errors", "burst s", "all finished s",
                         "final states", "most running (sampled / recorded)", "started in order"),
                        ((str(s.searches), str(s.max_concurrent), str(result.submit_errors),
                          f"{result.burst_seconds:.2f}", f"{result.drain_seconds:.1f}",
                          ", ".join(f"{k} {v}" for k, v in result.states.items()),
                          f"{result.max_running_sampled} / {result.max_running_recorded} ({result.samples} samples)",
                          "yes" if result.in_order else "no"),))
    polling = ResultTable(f"GET /v1/searches/<id> for {s.seconds:g} s at {s.rate:g}/s (open loop)",
                          ("requests", "errors", "achieved req/s", "p50 ms", "p95 ms", "p99 ms", "max ms",
                           "max send lag ms", "load average", "nice"),
                          ((str(p.requests), str(p.errors), f"{p.achieved_rate:.1f}", f"{p.p50:.1f}", f"{p.p95:.1f}",
                            f"{p.p99:.1f}", f"{p.max:.1f}", f"{p.max_lag_ms:.1f}", f"{p.load_average:.1f}",
                            str(p.niceness)),))
    console.print(queue.rich(), polling.rich())
    problems = result.problems()
    if problems:
        raise BenchError("; ".join(problems))
    setup = (f"A real `scripts/serve.py` (uvicorn on 127.0.0.1, SQLite in a temporary state folder, poll interval "
             f"0.2 s); each search is digits cnn, `{s.strategy}`, {s.evaluations} evaluation(s), `no_export`, its "
             "base model cached before the server starts. The queue is sampled every 0.2 s while it drains; "
             "\"recorded\" is the most searches whose `started_at`..`finished_at` overlap. Then status polling: "
             "each request sent at its scheduled time (open loop, an async httpx2 client, keep-alive), latency "
             "from its send to its answer; the load average (1 min, the whole machine) as it began. A send lag "
             "near the tail latencies means the client itself waited for a CPU (a shared machine: see the load "
             "average and nice columns): that tail is the machine's as much as the service's.")
    lines = [f"Command: `{command}`  ", f"Machine: {machine()}  ", setup, "", *queue.markdown(), "",
             *polling.markdown()]
    update_section(markdown, "service-load", "\n".join(lines) + "\n", title="Service load")
    return result
