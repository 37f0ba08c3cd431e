"""``history.csv``: every evaluated policy, appended and flushed as it is evaluated.

A crash or Ctrl-C loses nothing that was evaluated: each row is on disk before the next evaluation
starts, and :func:`read_history` restores them for ``--resume``.

With a multi-fidelity ladder (``--ladder``) a candidate has one row per score it got: ``rung`` 0 is the
search's own score (``--score``), rung ``r`` the ladder's ``r``-th; the rows of one candidate share its
``index`` and ``step``. The strategies see rung 0 only (one row per evaluation, as without a ladder).

With ``--depth`` the ``dropped`` column lists the blocks a policy replaces by the identity (a JSON list,
empty without depth); a file from before it reads as dropping none.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

from amc.errors import ConfigError
from amc.pruning.depth import DepthKeep, dropped_of

COLUMNS = ("index", "strategy", "step", "accuracy", "loss", "cost", "cost_ratio", "reward", "cached",
           "seconds", "wall_time", "keep", "dropped", "rung", "score", "origin", "repeat", "pid")
PID_COLUMNS = COLUMNS[:-1]  # before the measuring process's pid (rows read as pid 0: not recorded)
ORIGIN_COLUMNS = tuple(c for c in PID_COLUMNS if c != "dropped")  # before depth pruning (rows read as dropping none)
LADDER_COLUMNS = ORIGIN_COLUMNS[:-2]  # before origins (every row read as origin "search")
OLD_COLUMNS = ORIGIN_COLUMNS[:-4]  # before the ladder's rows (read as rung 0)
# Older layouts are read as they are and rewritten with the current header when a run resumes.
LAYOUTS = (COLUMNS, PID_COLUMNS, ORIGIN_COLUMNS, LADDER_COLUMNS, OLD_COLUMNS)
SEARCH = "search"  # origin of a strategy's own proposal
BASELINE_PREFIX = "baseline:"  # origin of a baseline candidate: baseline:uniform, baseline:tp-global
WARM_PREFIX = "warm:"  # origin of a policy transferred from an earlier run (--warm-start): warm:<source>


@dataclass(frozen=True)
class Record:
    """One evaluated policy.

    ``keep`` is a :class:`~amc.pruning.depth.DepthKeep` when the policy drops blocks: the keep vector names
    them (:attr:`dropped`), so whatever passes a record's ``keep`` on (the ladder, the deploy rung) keeps them.
    """

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
    rung: int = 0  # 0: the search's own score; r >= 1: the ladder's r-th score of the same candidate
    score: str = ""  # the candidate score this row measured (amc.evaluation.scores; "" in a file from before the ladder)
    origin: str = SEARCH  # search, baseline:<name> or warm:<source> (see the module docstring)
    repeat: int = 0  # 1: the same measurement again with another seed (the deploy rung's noise)
    pid: int = 0  # the process that measured a ladder's or the deploy rung's re-score (a Ray worker's); 0: not recorded

    @property
    def dropped(self) -> tuple[str, ...]:
        """The blocks this policy replaces by the identity (none without ``--depth``)."""
        return dropped_of(self.keep)

    @property
    def is_baseline(self) -> bool:
        return self.origin.startswith(BASELINE_PREFIX)

    def row(self) -> list[str]:
        return [str(self.index), self.strategy, str(self.step), repr(self.accuracy), repr(self.loss),
                repr(self.cost), repr(self.cost_ratio), repr(self.reward), str(int(self.cached)),
                f"{self.seconds:.4f}", f"{self.wall_time:.3f}", json.dumps(list(self.keep)),
                json.dumps(list(self.dropped)), str(self.rung), self.score, self.origin, str(self.repeat), str(self.pid)]


@dataclass(frozen=True)
class Start:
    """A candidate evaluated before the strategy's own proposals (:mod:`search.starts`).

    Attributes:
        origin: ``history.csv``'s ``origin``: ``baseline:<name>`` or ``warm:<source>``.
        keep: Its keep ratios (feasible at this run's budget).
        provenance: Where it came from (a warm start's file, budget, resource and evaluation), for
            ``policy.json``'s meta.
    """

    origin: str
    keep: tuple[float, ...]
    provenance: dict[str, Any] = field(default_factory=dict)


class HistoryWriter:
    """Appends records to ``path`` (writing the header when the file is new)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        drop_partial_row(self.path)
        _upgrade(self.path)
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


def _upgrade(path: Path) -> None:
    """Rewrites a history.csv of an older layout (no ``rung``, ``score``; no ``origin``, ``repeat``; no ``dropped``;
    no ``pid``) in this one: its rows as rung 0, origin ``search``, no dropped block, pid 0, where the columns were
    missing."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open(newline="") as f:
        header = next(csv.reader(f), None)
    if header is not None and tuple(header) in LAYOUTS[1:]:
        records = read_history(path)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            writer.writerows(r.row() for r in records)
        os.replace(tmp, path)


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
        if reader.fieldnames is not None and tuple(reader.fieldnames) not in LAYOUTS:
            raise ConfigError(f"{str(path)!r} is not a history.csv of this tool (columns {reader.fieldnames})")
        for row in reader:
            try:
                records.append(parse_row(row))
            except (TypeError, ValueError, KeyError):
                break  # a row cut short by a crash: everything before it is intact
    return records


def parse_row(row: Mapping[str, str | None]) -> Record:
    """The record of one row (column name -> text); raises KeyError, TypeError or ValueError for a bad one."""
    return Record(
        index=int(row["index"]), strategy=row["strategy"], step=int(row["step"]), accuracy=float(row["accuracy"]),
        loss=float(row["loss"]), cost=float(row["cost"]), cost_ratio=float(row["cost_ratio"]),
        reward=float(row["reward"]), cached=row["cached"] == "1", seconds=float(row["seconds"]),
        wall_time=float(row["wall_time"]), keep=_keep(row), rung=int(row.get("rung") or 0),
        score=row.get("score") or "", origin=row.get("origin") or SEARCH, repeat=int(row.get("repeat") or 0),
        pid=int(row.get("pid") or 0),
    )


def _keep(row: Mapping[str, str | None]) -> tuple[float, ...]:
    keep = tuple(json.loads(row["keep"]))
    dropped = json.loads(row.get("dropped") or "[]")
    if not isinstance(dropped, list) or not all(isinstance(n, str) for n in dropped):
        raise ValueError(f"dropped must be a JSON list of block names, got {row.get('dropped')!r}")
    return DepthKeep(keep, dropped) if dropped else keep


def rank(record: Record) -> tuple[bool, int, float, float, int]:
    """What makes a record the run's best: the highest rung reached (a ladder's or the deploy rung's verdict),
    then the reward; ties (common on small validation sets) go to the cheaper, then the earlier policy: no
    timing luck. A repeated measurement (``repeat`` 1, the deploy rung's noise) never wins."""
    return record.repeat == 0, record.rung, record.reward, -record.cost, -record.step
