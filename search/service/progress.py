"""A running search's progress, read from the rows its ``history.csv`` gains (the runner flushes each one)."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any

from search.history import COLUMNS, LAYOUTS, Record, parse_row, rank

# The fields of a search's best record that the search shows (its ``best``, in the database and the API).
BEST_FIELDS = ("index", "step", "accuracy", "cost_ratio", "reward", "keep", "rung", "score")


class HistoryTail:
    """Reads the complete rows a ``history.csv`` gained since the last :meth:`read`, and keeps the best.

    The best is the runner's (:class:`search.problem.SearchProblem`): the highest reward, then the
    lowest cost, then the earliest step.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self.count = 0
        self.best: Record | None = None

    def read(self) -> list[Record]:
        """The complete rows written since the last read (:meth:`read_with_best` without the best of each)."""
        return [record for record, _ in self.read_with_best()]

    def read_with_best(self) -> list[tuple[Record, Record]]:
        """The complete rows written since the last read, each with the best up to and including it.

        The best of a row is never a later row's, however many rows one read finds (a service that
        polls a fast search finds several at once).
        """
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self.offset:  # rewritten from scratch: count again
            self.offset, self.count, self.best = 0, 0, None
        if size == self.offset:
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a row still being written waits for the next look
        self.offset += len(complete)
        rows = []
        for row in csv.reader(io.StringIO(complete.decode())):
            if not row or tuple(row) in LAYOUTS:
                continue
            record = _record(row)
            if record is None:
                continue
            self.count += 1
            if self.best is None or rank(record) > rank(self.best):
                self.best = record
            rows.append((record, self.best))
        return rows


def _record(row: list[str]) -> Record | None:
    try:
        return parse_row(dict(zip(COLUMNS, row)))
    except (KeyError, TypeError, ValueError):
        return None


def best_summary(record: Record | None) -> dict[str, Any] | None:
    """What a search's ``best`` shows: the :data:`BEST_FIELDS` of its best record."""
    if record is None:
        return None
    values = record_dict(record)
    return {name: values[name] for name in BEST_FIELDS}


def record_dict(record: Record) -> dict[str, Any]:
    """One ``history.csv`` row as JSON: every field of :class:`~search.history.Record`."""
    return {**dataclasses.asdict(record), "keep": list(record.keep)}
