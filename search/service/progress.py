"""A running search's progress, read from the rows its ``history.csv`` gains (the runner flushes each one)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from search.history import COLUMNS, OLD_COLUMNS, Record, parse_row, rank


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
        records = []
        for row in csv.reader(io.StringIO(complete.decode())):
            if not row or tuple(row) in (COLUMNS, OLD_COLUMNS):
                continue
            record = _record(row)
            if record is None:
                continue
            records.append(record)
            self.count += 1
            if self.best is None or rank(record) > rank(self.best):
                self.best = record
        return records


def _record(row: list[str]) -> Record | None:
    try:
        return parse_row(dict(zip(COLUMNS, row)))
    except (KeyError, TypeError, ValueError):
        return None


def best_summary(record: Record | None) -> dict[str, Any] | None:
    """What a search's ``best`` shows."""
    if record is None:
        return None
    return {"index": record.index, "accuracy": record.accuracy, "cost_ratio": record.cost_ratio,
            "reward": record.reward, "keep": list(record.keep), "rung": record.rung, "score": record.score}


def record_dict(record: Record) -> dict[str, Any]:
    """One ``history.csv`` row as JSON."""
    return {"index": record.index, "strategy": record.strategy, "step": record.step, "accuracy": record.accuracy,
            "loss": record.loss, "cost": record.cost, "cost_ratio": record.cost_ratio, "reward": record.reward,
            "cached": record.cached, "seconds": record.seconds, "wall_time": record.wall_time,
            "keep": list(record.keep), "rung": record.rung, "score": record.score}
