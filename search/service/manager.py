"""What the HTTP routes do to searches: submit, read, cancel, resume, delete; states and the event log.

Every state change goes through :meth:`SearchManager.set_state`, which appends a ``state`` event in
the same transaction, so the event log always tells the whole story. One lock serialises the changes
of this service process (the scheduler thread and the request threads); one service per database.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from stat import S_ISREG
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from amc.errors import AmcError
from search.service.db import ACTIVE, LIVE, RESUMABLE, EventRow, SearchRow, SearchState, utcnow
from search.service.executor import Executor
from search.service.settings import ServiceConfig
from search.service.validation import Settings

log = logging.getLogger(__name__)
# name -> media type: what a client may fetch from a run folder (nothing else, whatever the name says).
ARTIFACTS = {
    "policy.json": "application/json", "history.csv": "text/csv", "report.html": "text/html",
    "report.png": "image/png", "pruned.pt2": "application/octet-stream", "pruned.onnx": "application/octet-stream",
    "config.json": "application/json", "pareto.json": "application/json",
    "run.log": "text/plain", "service.log": "text/plain",
    # a language-model search's sparse model (tiny-lm weights with their zeros) and its tokenizer
    "pruned.pt": "application/octet-stream", "tokenizer.json": "application/json",
}


class NotFoundError(AmcError):
    """No such search (or artifact): HTTP 404."""


class ConflictError(AmcError):
    """The search's state does not allow this: HTTP 409."""


class SearchManager:
    """The searches of one service.

    Args:
        config: The service's settings.
        sessions: Session factory of the service database.
        executor: Where the searches run (cancel reaches a running one through it).
    """

    def __init__(self, config: ServiceConfig, sessions: sessionmaker[Session], executor: Executor) -> None:
        self.config = config
        self.sessions = sessions
        self.executor = executor
        self.lock = threading.RLock()
        self.cancel_sent: dict[str, float] = {}  # search id -> time.monotonic() of its SIGINT (the scheduler's)

    @contextmanager
    def changing(self) -> Iterator[Session]:
        """A locked session that commits when the block ends without an error."""
        with self.lock, self.sessions.begin() as session:
            yield session

    def set_state(self, session: Session, row: SearchRow, state: SearchState, **data: Any) -> None:
        """Moves ``row`` to ``state`` and logs it (``data`` goes into the event)."""
        previous, row.state = row.state, state
        if state not in ACTIVE:
            row.finished_at = utcnow()
        self.append_event(session, row, "state", {"state": state, "previous": previous, "attempt": row.attempt,
                                                 **data})
        log.info("search %s: %s -> %s", row.id, previous, state)

    @staticmethod
    def append_event(session: Session, row: SearchRow, kind: str, data: dict[str, Any]) -> None:
        session.add(EventRow(search_id=row.id, kind=kind, data=data))

    def submit(self, settings: Settings, *, idempotency_key: str | None, request_hash: str) -> tuple[SearchRow, bool]:
        """Queues a search; with a known ``idempotency_key`` returns that search instead.

        Returns:
            The search and whether it was created now.

        Raises:
            ConflictError: The key was used before with other settings.
        """
        with self.changing() as session:
            if idempotency_key is not None:
                known = session.scalars(select(SearchRow).where(SearchRow.idempotency_key == idempotency_key)).first()
                if known is not None:
                    if known.request_hash != request_hash:
                        raise ConflictError(f"Idempotency-Key {idempotency_key!r} was used for search {known.id} "
                                            "with other settings; send a new key for a new search")
                    return known, False
            search_id = uuid.uuid4().hex[:16]
            row = SearchRow(id=search_id, state=SearchState.QUEUED, settings=settings.given, options=settings.options,
                            idempotency_key=idempotency_key, request_hash=request_hash,
                            queue_seq=self._next_seq(session), run_dir=str(self.config.runs_dir / search_id),
                            evaluations_total=settings.evaluations, evaluations_done=0, attempt=0,
                            cancel_requested=False, created_at=utcnow())
            session.add(row)
            session.flush()
            self.append_event(session, row, "state", {"state": SearchState.QUEUED, "previous": None, "attempt": 0})
            return row, True

    @staticmethod
    def _next_seq(session: Session) -> int:
        return (session.scalar(select(func.max(SearchRow.queue_seq))) or 0) + 1

    def get(self, search_id: str) -> SearchRow:
        with self.sessions() as session:
            row = session.get(SearchRow, search_id)
            if row is None:
                raise NotFoundError(f"no search {search_id!r}; GET /v1/searches lists them")
            return row

    def list(self, *, state: SearchState | None = None, limit: int = 100, offset: int = 0) -> list[SearchRow]:
        query = select(SearchRow).order_by(SearchRow.queue_seq, SearchRow.created_at)
        if state is not None:
            query = query.where(SearchRow.state == state)
        with self.sessions() as session:
            return list(session.scalars(query.offset(offset).limit(limit)))

    def events(self, search_id: str, *, after: int = 0, limit: int = 1000) -> list[EventRow]:
        with self.sessions() as session:
            return list(session.scalars(select(EventRow).where(EventRow.search_id == search_id, EventRow.id > after)
                                        .order_by(EventRow.id).limit(limit)))

    def cancel(self, search_id: str) -> SearchRow:
        """A queued or interrupted search is cancelled at once; a running one stops after writing its best policy."""
        with self.changing() as session:
            row = self._locked(session, search_id)
            if row.state in (SearchState.QUEUED, SearchState.INTERRUPTED):
                self.set_state(session, row, SearchState.CANCELLED)
            elif row.state == SearchState.RUNNING:
                row.cancel_requested = True
                self.set_state(session, row, SearchState.CANCELLING)
                self.executor.cancel(row.handle)
                self.cancel_sent[row.id] = time.monotonic()
            elif row.state != SearchState.CANCELLING:
                raise ConflictError(f"search {search_id} {row.state.phrase}: only queued, running or interrupted "
                                    "searches can be cancelled")
            return row

    def resume(self, search_id: str) -> SearchRow:
        """Queues an interrupted or cancelled search again; it continues its run folder."""
        with self.changing() as session:
            row = self._locked(session, search_id)
            if row.state == SearchState.FAILED:
                raise ConflictError(f"search {search_id} has failed ({row.error or 'see its service.log'}): a resume "
                                    "would fail the same way; fix the cause and submit a new search")
            if row.state not in RESUMABLE:
                raise ConflictError(f"search {search_id} {row.state.phrase}: only {' or '.join(RESUMABLE)} searches "
                                    "can be resumed")
            row.queue_seq = self._next_seq(session)
            row.cancel_requested = False
            row.error = None
            row.finished_at = None
            self.set_state(session, row, SearchState.QUEUED, resumed=True)
            return row

    def delete(self, search_id: str) -> None:
        """Forgets a finished search: its row, events, run folder and Optuna study."""
        with self.changing() as session:
            row = self._locked(session, search_id)
            if row.state in ACTIVE:
                raise ConflictError(f"search {search_id} {row.state.phrase}: cancel it first, then delete it")
            session.execute(delete(EventRow).where(EventRow.search_id == search_id))
            session.delete(row)
        shutil.rmtree(row.run_dir, ignore_errors=True)
        if row.options.get("strategy") == "optuna":
            self._delete_study(search_id)

    def _delete_study(self, search_id: str) -> None:
        import optuna

        try:
            optuna.delete_study(study_name=f"amc-search/{search_id}", storage=self.config.database_url)
        except KeyError:
            pass  # it never got to its first trial

    def artifact(self, search_id: str, name: str) -> tuple[Path, str]:
        """The path and media type of a run-folder file a client may fetch.

        Raises:
            NotFoundError: No such search, a name outside :data:`ARTIFACTS`, or no such file (yet).
        """
        row = self.get(search_id)
        run_dir = Path(row.run_dir).resolve()
        # The name is checked before it touches the file system (a NUL byte in it made resolve() raise: a 500).
        path = (run_dir / name).resolve() if name in ARTIFACTS else None
        if path is None or path.parent != run_dir or not path.is_file():
            raise NotFoundError(f"search {search_id} has no artifact {name!r}; the artifacts are "
                                f"{', '.join(ARTIFACTS)} (once written)")
        return path, ARTIFACTS[name]

    def artifacts(self, search_id: str) -> list[tuple[str, int]]:
        """The :data:`ARTIFACTS` the run folder holds now, with their sizes in bytes, in :data:`ARTIFACTS` order."""
        run_dir = Path(self.get(search_id).run_dir)
        found = []
        for name in ARTIFACTS:
            try:
                stat = (run_dir / name).stat()
            except OSError:
                continue
            if S_ISREG(stat.st_mode):
                found.append((name, stat.st_size))
        return found

    @staticmethod
    def _locked(session: Session, search_id: str) -> SearchRow:
        row = session.get(SearchRow, search_id)
        if row is None:
            raise NotFoundError(f"no search {search_id!r}; GET /v1/searches lists them")
        return row

    def live_count(self, session: Session) -> int:
        return session.scalar(select(func.count()).select_from(SearchRow).where(SearchRow.state.in_(LIVE))) or 0
