"""``history.csv``: every evaluated policy, appended and flushed as it is evaluated.

A crash or Ctrl-C loses nothing that was evaluated: each row is on disk before the next evaluation
starts, and :func:`read_history` restores them for ``--resume``.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from amc.errors import ConfigError

COLUMNS = ("index", "strategy", "step", "accuracy", "loss", "cost", "cost_ratio", "reward", "cached",
           "seconds", "wall_time", "keep")


@dataclass(frozen=True)
class Record:
    """One evaluated policy."""

    index: int
    strategy: str
    step: int  # strategy-specific: episode, trial number or sample index
    accuracy: float
    loss: float
    cost: float
    cost_ratio: float
    reward: float
    cached: bool
    seconds: float
    wall_time: float  # seconds since the run started
    keep: tuple[float, ...]

    def row(self) -> list[str]:
        return [str(self.index), self.strategy, str(self.step), repr(self.accuracy), repr(self.loss),
                repr(self.cost), repr(self.cost_ratio), repr(self.reward), str(int(self.cached)),
                f"{self.seconds:.4f}", f"{self.wall_time:.3f}", json.dumps(list(self.keep))]


class HistoryWriter:
    """Appends records to ``path`` (writing the header when the file is new)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        drop_partial_row(self.path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = self.path.open("a", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(COLUMNS)
            self._file.flush()

    def append(self, record: Record) -> None:
        self._writer.writerow(record.row())
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def drop_partial_row(path: Path) -> None:
    """Cuts a last line that a crash left without its newline, so the next row starts on its own line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def read_history(path: str | os.PathLike) -> list[Record]:
    """Records of an existing ``history.csv`` (empty list when there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is not None and tuple(reader.fieldnames) != COLUMNS:
            raise ConfigError(f"{str(path)!r} is not a history.csv of this tool (columns {reader.fieldnames})")
        for row in reader:
            try:
                records.append(Record(
                    index=int(row["index"]), strategy=row["strategy"], step=int(row["step"]),
                    accuracy=float(row["accuracy"]), loss=float(row["loss"]), cost=float(row["cost"]),
                    cost_ratio=float(row["cost_ratio"]), reward=float(row["reward"]), cached=row["cached"] == "1",
                    seconds=float(row["seconds"]), wall_time=float(row["wall_time"]),
                    keep=tuple(json.loads(row["keep"])),
                ))
            except (TypeError, ValueError, KeyError):
                break  # a row cut short by a crash: everything before it is intact
    return records
