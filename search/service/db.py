"""The service database: one row per search and an append-only event log (SQLAlchemy 2.x, any dialect).

SQLite (the default, a file in the state folder) and PostgreSQL run the same code. The event ids are
the server-sent events' ids, so a client that reconnects with ``Last-Event-ID`` misses nothing. The
tables are prefixed ``service_`` because each search's Optuna study lives in the same database.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Engine, ForeignKey, Integer, String, Text, create_engine
from sqlalchemy import Enum as SqlEnum
from sqlalchemy import event as sa_event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from amc.errors import ConfigError


class SearchState(StrEnum):
    """Where a search is; the value is what the API, the event log and the database hold."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def phrase(self) -> str:
        """The state in a sentence about a search: "search 3f9c... has succeeded"."""
        return _PHRASES[self]


_PHRASES = {SearchState.QUEUED: "is queued", SearchState.RUNNING: "is running",
            SearchState.CANCELLING: "is being cancelled", SearchState.SUCCEEDED: "has succeeded",
            SearchState.FAILED: "has failed", SearchState.CANCELLED: "was cancelled",
            SearchState.INTERRUPTED: "was interrupted"}

ACTIVE = (SearchState.QUEUED, SearchState.RUNNING, SearchState.CANCELLING)  # the service still owes these work
LIVE = (SearchState.RUNNING, SearchState.CANCELLING)  # these have a process (or Ray job)
# A failed search is not resumable: it stopped on an error (a setting the run refused, a crash) that a rerun of the
# same settings meets again; fix the cause and submit a new search.
RESUMABLE = (SearchState.INTERRUPTED, SearchState.CANCELLED)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class SearchRow(Base):
    """A search: its validated settings, where it is, and what it found so far."""

    __tablename__ = "service_searches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # VARCHAR(16) holding the value, as before the enum (no native enum type, no CHECK constraint).
    state: Mapped[SearchState] = mapped_column(
        SqlEnum(SearchState, native_enum=False, length=16, values_callable=lambda states: [s.value for s in states]),
        index=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)  # the request's settings (what the user gave)
    options: Mapped[dict[str, Any]] = mapped_column(JSON)  # resolved option values (defaults filled in)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    queue_seq: Mapped[int] = mapped_column(Integer, index=True)  # the queue's order
    run_dir: Mapped[str] = mapped_column(Text)
    evaluations_total: Mapped[int] = mapped_column(Integer)
    evaluations_done: Mapped[int] = mapped_column(Integer, default=0)
    best: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # launches so far
    handle: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)  # the executor's, of this attempt
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class EventRow(Base):
    """One entry of the event log (never updated; deleted only with its search)."""

    __tablename__ = "service_events"

    # BIGINT on PostgreSQL; SQLite's autoincrement needs INTEGER PRIMARY KEY.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    search_id: Mapped[str] = mapped_column(String(32), ForeignKey("service_searches.id", ondelete="CASCADE"),
                                           index=True)
    kind: Mapped[str] = mapped_column(String(32))  # "state" | "evaluation"
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def as_utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they were stored in UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL (readers never block the search processes' Optuna writes)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @sa_event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def open_database(url: str) -> sessionmaker[Session]:
    """Creates the tables that are missing and returns a session factory (:func:`close_database` ends it).

    Raises:
        ConfigError: ``url`` is not a database URL, its driver is missing, or the database cannot be reached.
    """
    try:
        engine = make_engine(url)
        Base.metadata.create_all(engine)
    except (ImportError, SQLAlchemyError) as exc:
        raise ConfigError(f"cannot open the service database --db {url!r}: {exc}; give an SQLAlchemy URL such "
                          "as sqlite:///service.db or postgresql://user@host/db (its driver installed)") from None
    return sessionmaker(engine, expire_on_commit=False)


def close_database(sessions: sessionmaker[Session]) -> None:
    """Closes the pooled connections of the engine behind ``sessions`` (when the service stops)."""
    with sessions() as session:
        engine = session.get_bind()
    engine.dispose()
