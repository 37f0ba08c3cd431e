"""The benchmarks' acceptance targets, printed as met/missed lines under their tables.

- :func:`default_verdicts` (issue 31, headline and ViT): the product with its default settings (the
  ``default`` row) against the better of the free alternatives (uniform, Torch-Pruning), deployed accuracy
  (test after the fine-tune), mean over the fine-tune seeds: never more than 0.1 points below it, and at
  least +0.3 points above it where a gain is asked (budget 0.5, the ViT).
- :func:`deployed_verdicts` (issue 19): the best searched row after the fine-tune, against uniform and
  Torch-Pruning.
- :func:`verdicts`: the searches before fine-tuning, against uniform, Torch-Pruning and the oracle.

Torch-free: cells are any objects with the fields of :class:`search.bench.headline.HeadlineCell` it reads.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from search.bench import HEADLINE_ROWS
from search.bench.markdown import mean_std

SEARCHED = ("default", "random", "sensitivity", "optuna-tpe", "ddpg")  # "our strategies" in the verdicts
DEFAULT_ROW = "default"


def _mean(cells: Sequence[Any], field: str) -> float:
    return statistics.mean(getattr(c, field) for c in cells)


def _met(ok: bool) -> str:
    return f"**{'met' if ok else 'missed'}**"


def default_verdicts(cells: Sequence[Any], budget: float, *, baselines: Sequence[str] = ("uniform", "tp-global"),
                     floor: float = 0.1, gain: float = 0.3, gain_budgets: Sequence[float] = (0.5,)) -> list[str]:
    """Issue 31's targets at ``budget``: the ``default`` row's deployed accuracy (mean over seeds) at least the
    better baseline's - ``floor`` points, and + ``gain`` points at the budgets of ``gain_budgets``.

    The last line says where the default run's policy came from (``origin``: a baseline, a warm start or the
    search), per seed: the data behind a missed target.
    """
    at = [c for c in cells if math.isclose(c.budget, budget)]
    ours = [c for c in at if c.row == DEFAULT_ROW]
    groups = {b: [c.finetuned_test_accuracy for c in at if c.row == b] for b in baselines}
    if not ours or not all(groups.values()):
        return []
    tuned = [c.finetuned_test_accuracy for c in ours]
    best = max(groups, key=lambda b: statistics.mean(groups[b]))
    diff = 100 * (statistics.mean(tuned) - statistics.mean(groups[best]))
    lines = [f"Budget {budget:g}, deployed accuracy (test after the fine-tune, mean ± std over fine-tune seeds): "
             f"**{DEFAULT_ROW}** {mean_std(tuned)} ({len(tuned)} seed(s)); "
             + ", ".join(f"{b} {mean_std(v)} ({len(v)})" for b, v in groups.items()) + ".",
             f"- vs the better baseline ({best}, {100 * statistics.mean(groups[best]):.2f}%): {diff:+.2f} points; "
             f"target >= -{floor:g}: {_met(diff >= -floor - 1e-9)}"]
    if any(math.isclose(budget, b) for b in gain_budgets):
        lines.append(f"- gain over the better baseline at budget {budget:g}: {diff:+.2f} points; target >= +{gain:g}: "
                     f"{_met(diff >= gain - 1e-9)}")
    chosen = Counter(getattr(c, "chosen", "") or "unknown" for c in ours)
    lines.append(f"- the {DEFAULT_ROW} run's policy came from: "
                 + ", ".join(f"{origin} ({n} of {len(ours)})" for origin, n in chosen.most_common()))
    return lines


def deployed_verdicts(cells: Sequence[Any], budget: float, *, over_uniform: float = 0.5,
                      over_tp: float = 0.3) -> list[str]:
    """Issue 19's targets at ``budget``: the best searched row's deployed accuracy (mean over seeds) against
    uniform (>= +0.5 points) and Torch-Pruning global (>= +0.3 points)."""
    rows = {}
    for row in HEADLINE_ROWS:
        group = [c for c in cells if c.budget == budget and c.row == row]
        if group:
            rows[row] = (_mean(group, "finetuned_test_accuracy"), len(group))
    ours = {r: v for r, v in rows.items() if r in SEARCHED}
    if not ours or not {"uniform", "tp-global"} <= rows.keys():
        return []
    best = max(ours, key=lambda r: ours[r][0])
    lines = [(f"Budget {budget:g}, deployed accuracy (test after the fine-tune, mean of {ours[best][1]} seed(s)): "
              f"best searched row is **{best}** at {100 * ours[best][0]:.2f}%.")]
    for name, margin in (("uniform", over_uniform), ("tp-global", over_tp)):
        value, n = rows[name]
        diff = 100 * (ours[best][0] - value)
        lines.append(f"- vs {name} ({100 * value:.2f}%, {n} seed(s)): {diff:+.2f} points; target >= +{margin:g}: "
                     f"{_met(diff >= margin - 1e-9)}")
    return lines


def verdicts(cells: Sequence[Any], budget: float = 0.3) -> list[str]:
    """The acceptance targets at ``budget``, on test accuracy before fine-tuning (mean over seeds)."""
    rows = {}
    for row in HEADLINE_ROWS:
        group = [c for c in cells if c.budget == budget and c.row == row]
        if group:
            rows[row] = _mean(group, "test_accuracy")
    ours = {r: v for r, v in rows.items() if r in SEARCHED}
    if not ours or not {"uniform", "tp-global", "oracle"} <= rows.keys():
        return []
    best = max(ours, key=ours.get)
    lines = [f"Budget {budget:g}, test accuracy before fine-tuning (mean over seeds): best of our strategies is "
             f"**{best}** at {100 * ours[best]:.2f}%."]
    for name, margin in (("uniform", 2.0), ("tp-global", 1.0)):
        diff = 100 * (ours[best] - rows[name])
        lines.append(f"- vs {name} ({100 * rows[name]:.2f}%): {diff:+.2f} points; target >= +{margin:g}: "
                     f"{_met(diff >= margin - 1e-9)}")
    gap = 100 * (rows["oracle"] - ours[best])
    lines.append(f"- vs the oracle ({100 * rows['oracle']:.2f}%): {-gap:+.2f} points; target within 0.5: "
                 f"{_met(gap <= 0.5 + 1e-9)}")
    val = {r: _mean([c for c in cells if c.budget == budget and c.row == r], "val_accuracy") for r in rows}
    lines.append(f"- on the validation subset the searches saw: {best} {100 * val[best]:.2f}%, uniform "
                 f"{100 * val['uniform']:.2f}%, tp-global {100 * val['tp-global']:.2f}%, oracle "
                 f"{100 * val['oracle']:.2f}%")
    return lines


__all__ = ["DEFAULT_ROW", "SEARCHED", "default_verdicts", "deployed_verdicts", "verdicts"]
