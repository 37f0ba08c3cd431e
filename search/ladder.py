"""Multi-fidelity re-ranking: the search's cheap score for every candidate, costlier scores for the best few.

After the search (every candidate scored with ``--score``), the ``top_k`` best distinct candidates are
scored again with the first rung's score, the better half of them with the next rung's, and so on
(successive halving). The winner of the last rung becomes the run's best policy. Every rung's result is
appended to ``ladder.csv`` (rung, score, the search record it re-scores, accuracy, loss, seconds, keep) as
soon as it is measured; ``--resume`` reads the file back and scores only what is missing, so a killed
ladder loses nothing and scores no candidate twice.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from amc.context import Context
from amc.evaluate import PolicyEvaluator
from search.history import Record, drop_partial_row
from search.problem import SearchProblem

log = logging.getLogger(__name__)
COLUMNS = ("rung", "score", "source", "accuracy", "loss", "seconds", "keep")


@dataclass(frozen=True)
class LadderRow:
    rung: int  # 1 for the first re-scoring (0 is the search itself)
    score: str
    source: int  # index of the search record (history.csv) this row re-scores
    accuracy: float
    loss: float
    seconds: float
    keep: tuple[float, ...]


def read_ladder(path: str | os.PathLike) -> list[LadderRow]:
    """The rows of ``ladder.csv`` (none when it does not exist); a row cut short by a kill is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open(newline="") as f:
        for raw in csv.DictReader(f):
            try:
                rows.append(LadderRow(int(raw["rung"]), raw["score"], int(raw["source"]), float(raw["accuracy"]),
                                      float(raw["loss"]), float(raw["seconds"]), tuple(json.loads(raw["keep"]))))
            except (TypeError, ValueError, KeyError):
                log.warning("ignoring an incomplete row of %s (written when the run was stopped)", path)
    return rows


def run_ladder(problem: SearchProblem, ctx: Context, scores: Sequence[str], *, top_k: int,
               path: str | os.PathLike) -> Record:
    """Re-ranks the search's best candidates with ``scores`` (cheap to expensive); returns the winner's record."""
    path = Path(path)
    done = {(r.rung, r.score, r.source): r for r in read_ladder(path)}
    candidates = _top_distinct(problem, top_k)
    drop_partial_row(path)  # a row a kill cut short: measured again below
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(COLUMNS)
        for rung, score in enumerate(scores, 1):
            evaluator = PolicyEvaluator(ctx.model, ctx.graph, ctx.data, dataclasses.replace(ctx.config.eval, score=score))
            scored = []
            for record in candidates:
                row = done.get((rung, score, record.index))
                if row is None:
                    result = evaluator.evaluate(problem.policy(record.keep))
                    row = LadderRow(rung, score, record.index, result.accuracy, result.loss, result.seconds,
                                    tuple(record.keep))
                    writer.writerow([row.rung, row.score, row.source, repr(row.accuracy), repr(row.loss),
                                     f"{row.seconds:.4f}", json.dumps(list(row.keep))])
                    f.flush()
                    os.fsync(f.fileno())
                scored.append((row, record))
            scored.sort(key=lambda pair: (-pair[0].accuracy, pair[1].cost, pair[1].index))
            log.info("ladder rung %d (%s): best %.4f of %d candidates (search record %d)", rung, score,
                     scored[0][0].accuracy, len(scored), scored[0][1].index)
            keep = len(scored) if rung == len(scores) else max(1, math.ceil(len(scored) / 2))
            candidates = [record for _, record in scored[:keep]]
    return candidates[0]


def _top_distinct(problem: SearchProblem, k: int) -> list[Record]:
    """The ``k`` best records of the search by reward, one per distinct policy (channel counts)."""
    seen, out = set(), []
    for record in sorted(problem.records, key=lambda r: (-r.reward, r.cost, r.index)):
        key = problem.graph.channels(list(record.keep)) if problem.granularity == "channel" else record.keep
        if key not in seen:
            seen.add(key)
            out.append(record)
        if len(out) == k:
            break
    return out
