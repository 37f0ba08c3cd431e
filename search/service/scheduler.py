"""The background loop: start queued searches in order, follow running ones, settle the ones that ended.

At start it reconciles: a search the database calls running whose process (or job) is gone becomes
``interrupted`` (or ``cancelled`` if a cancel was under way), one that still runs is followed again.
Each new ``history.csv`` row becomes an ``evaluation`` event; each exit a final state:

| exit | state |
|---|---|
| 0, search complete | succeeded |
| cancel requested (any exit) | cancelled (the best policy so far is written) |
| 0 but stopped early, 130, a signal, or vanished | interrupted (resumable) |
| 2 (a setting the search rejected) or another code | failed (the log's last error line) |
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from amc.errors import ConfigError
from search.service.db import LIVE, SearchRow, SearchState, utcnow
from search.service.executor import LOG_FILE, Exit, Launch
from search.service.manager import SearchManager
from search.service.progress import HistoryTail, best_summary
from search.service.validation import settings_argv

log = logging.getLogger(__name__)


class Scheduler:
    """Runs :meth:`tick` every ``poll_interval`` seconds in a daemon thread."""

    def __init__(self, manager: SearchManager) -> None:
        self.manager = manager
        self.config = manager.config
        self.executor = manager.executor
        self._tails: dict[str, HistoryTail] = {}
        self._optuna_schema = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.reconcile()
        self._thread = threading.Thread(target=self._loop, name="search-scheduler", daemon=True)
        self._thread.start()

    def stop(self, *, interrupt: bool = True) -> None:
        """Stops the loop; with ``interrupt`` the running searches are stopped too (they become interrupted)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not interrupt:
            return
        with self.manager.sessions() as session:
            live = list(session.scalars(select(SearchRow).where(SearchRow.state.in_(LIVE))))
        for row in live:
            self.executor.cancel(row.handle)
        deadline = time.monotonic() + self.config.shutdown_grace
        while live and time.monotonic() < deadline:
            time.sleep(0.1)
            live = [row for row in live if not self._settle_if_ended(row.id)]
        for row in live:
            self.executor.kill(row.handle)
            self._settle_if_ended(row.id, wait=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.config.poll_interval):
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed; trying again in %.1f s", self.config.poll_interval)

    def reconcile(self) -> None:
        """Settles the searches whose process ended while no service watched it."""
        with self.manager.sessions() as session:
            ids = list(session.scalars(select(SearchRow.id).where(SearchRow.state.in_(LIVE))))
        for search_id in ids:
            if not self._settle_if_ended(search_id):
                log.info("search %s still runs: following it again", search_id)
                row = self.manager.get(search_id)
                if row.state == SearchState.CANCELLING:
                    self.executor.cancel(row.handle)
                    self.manager.cancel_sent[search_id] = time.monotonic()

    def tick(self) -> None:
        with self.manager.sessions() as session:
            ids = list(session.scalars(select(SearchRow.id).where(SearchRow.state.in_(LIVE))))
        for search_id in ids:
            if not self._settle_if_ended(search_id):
                self._enforce_cancel_timeout(search_id)
        self._start_queued()

    def _settle_if_ended(self, search_id: str, *, wait: bool = False) -> bool:
        """Records new rows and, if the attempt ended, its final state. True when it is no longer live."""
        with self.manager.changing() as session:
            row = session.get(SearchRow, search_id)
            if row is None or row.state not in LIVE:
                return True
            self._record_progress(session, row)
            ended = self.executor.poll(row.handle) if row.handle else Exit(None)
            if ended is None and wait:
                time.sleep(0.5)  # a killed process is gone at once; give the kernel a moment
                ended = self.executor.poll(row.handle)
            if ended is None:
                return False
            self._record_progress(session, row)  # the rows it wrote on its way out
            state, error = self._final_state(row, ended)
            row.error = error
            self.manager.set_state(session, row, state, exit_code=ended.code, **({"error": error} if error else {}))
            self.manager.cancel_sent.pop(search_id, None)
            self._tails.pop(search_id, None)  # a resumed attempt reads the file afresh
            return True

    def _record_progress(self, session: Session, row: SearchRow) -> None:
        tail = self._tails.get(row.id)
        if tail is None:
            tail = self._tails[row.id] = HistoryTail(Path(row.run_dir) / "history.csv")
        for record, best in tail.read_with_best():  # each row with the best up to it, not the batch's best
            if record.index < row.evaluations_done:
                continue  # told before this service restarted
            row.evaluations_done = record.index + 1
            row.best = best_summary(best)
            self.manager.append_event(session, row, "evaluation", {
                "index": record.index, "count": row.evaluations_done, "total": row.evaluations_total,
                "accuracy": record.accuracy, "cost_ratio": record.cost_ratio, "reward": record.reward,
                "best_accuracy": best.accuracy, "best_cost_ratio": best.cost_ratio, "best_index": best.index})
        if tail.best is not None:  # also a ladder's re-score (a row of a candidate told before) can be the best
            row.best = best_summary(tail.best)

    def _final_state(self, row: SearchRow, ended: Exit) -> tuple[SearchState, str | None]:
        complete = ended.code == 0 and not _stopped_early(Path(row.run_dir))
        if complete:
            return SearchState.SUCCEEDED, None
        if row.cancel_requested:
            return SearchState.CANCELLED, None
        if ended.code in (0, 130) or ended.code is None or ended.code < 0:
            return SearchState.INTERRUPTED, None
        return SearchState.FAILED, _last_error(self.executor.logs(row.handle))

    def _enforce_cancel_timeout(self, search_id: str) -> None:
        sent = self.manager.cancel_sent.get(search_id)
        if sent is not None and time.monotonic() - sent > self.config.cancel_timeout:
            log.warning("search %s did not stop %.0f s after its cancel: killing it", search_id,
                        self.config.cancel_timeout)
            self.executor.kill(self.manager.get(search_id).handle)
            self.manager.cancel_sent.pop(search_id, None)

    def _start_queued(self) -> None:
        with self.manager.changing() as session:
            free = self.config.max_concurrent - self.manager.live_count(session)
            if free <= 0:
                return
            queued = session.scalars(select(SearchRow).where(SearchRow.state == SearchState.QUEUED)
                                     .order_by(SearchRow.queue_seq).limit(free))
            for row in queued:
                self._launch(session, row)

    def _launch(self, session: Session, row: SearchRow) -> None:
        run_dir = Path(row.run_dir)
        resume = (run_dir / "config.json").exists() or (run_dir / "history.csv").exists()
        argv = settings_argv(row.settings) + [f"--out={run_dir}", f"--storage={self.config.database_url}",
                                              "--quiet"] + (["--resume"] if resume else [])
        row.attempt += 1
        try:
            if row.options.get("strategy") == "optuna":
                self._create_optuna_schema()
            row.handle = self.executor.start(Launch(search_id=row.id, attempt=row.attempt, argv=tuple(argv),
                                                    run_dir=run_dir))
        except (OSError, ConfigError) as exc:
            row.error = f"cannot start the search: {exc}"
            self.manager.set_state(session, row, SearchState.FAILED, error=row.error)
            return
        row.started_at = row.started_at or utcnow()
        self.manager.set_state(session, row, SearchState.RUNNING, resumed=resume)

    def _create_optuna_schema(self) -> None:
        """Optuna's tables, made once here: two first searches creating them at once could collide."""
        if self._optuna_schema:
            return
        import optuna

        try:
            optuna.storages.RDBStorage(self.config.database_url)
        except Exception as exc:  # SQLAlchemy's and Optuna's errors: the search cannot keep its study
            raise ConfigError(f"cannot create the Optuna tables in the service database: {exc}") from exc
        self._optuna_schema = True


def _stopped_early(run_dir: Path) -> bool:
    """The attempt wrote its outputs after an interrupt (``policy.json`` says so)."""
    try:
        meta = json.loads((run_dir / "policy.json").read_text()).get("meta", {})
    except (OSError, ValueError):
        return True  # exit 0 always writes policy.json: without one the run did not finish
    return bool(meta.get("interrupted"))


def _last_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "error:" in line or "Error" in line:
            return line[-2000:]
    return lines[-1][-2000:] if lines else f"the search failed without a message (see {LOG_FILE})"
