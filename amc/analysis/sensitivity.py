"""Per-layer sensitivity analysis and a greedy allocation of keep ratios from it.

Each decision is pruned alone (every other layer kept whole) at a range of keep ratios, and the
validation accuracy after BatchNorm recalibration is recorded: one curve per layer (Han et al., 2015;
Li et al., 2017; Distiller's sensitivity analysis). :func:`greedy_allocation` then lowers, step by step,
the keep ratio of the layer whose curve loses the least accuracy per unit of cost saved, until the
budget is met: the classic hand-tuning recipe, automated, as a baseline next to the searches.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amc.errors import ConfigError
from amc.graph.discover import LayerGraph
from amc.progress import progress_bar

log = logging.getLogger(__name__)

DEFAULT_KEEPS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class SensitivityCurve:
    """Validation accuracy of the model with only ``layer`` pruned, at each keep ratio (ascending)."""

    layer: str
    keeps: tuple[float, ...]
    accuracy: tuple[float, ...]

    def at(self, keep: float | np.ndarray) -> float | np.ndarray:
        """Accuracy at ``keep``, linearly interpolated between measured ratios."""
        return np.interp(keep, self.keeps, self.accuracy)


def check_keeps(keeps: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(k) for k in keeps)
    if not values or any(math.isnan(k) or not 0 < k <= 1 for k in values):
        raise ConfigError(f"sensitivity keep ratios must be numbers in (0, 1], got {list(keeps)!r}")
    return tuple(sorted(set(values) | {1.0}))


def sensitivity_curves(evaluator, graph: LayerGraph, keeps: Sequence[float] = DEFAULT_KEEPS, *,
                       progress: bool = True, batch: int = 16, to_policy=None) -> list[SensitivityCurve]:
    """Prunes each decision alone at each of ``keeps`` and records validation accuracy.

    ``evaluator`` has ``evaluate_many(list of keep vectors)`` (a :class:`~amc.evaluation.evaluator.PolicyEvaluator`
    or a Ray pool; ``to_policy`` turns a keep vector into what it takes). ``len(graph) * (len(keeps) - 1) + 1``
    evaluations (keep 1.0 is the base model).
    """
    wrap = to_policy or (lambda keep: keep)
    keeps = check_keeps(keeps)
    n = len(graph)
    jobs = [(t, k) for t in range(n) for k in keeps if k < 1.0]
    vectors = [[k if i == t else 1.0 for i in range(n)] for t, k in jobs]
    results = []
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task("sensitivity", total=len(vectors) + 1, status="")
        base = evaluator.evaluate_many([wrap([1.0] * n)])[0].accuracy
        bar.advance(task)
        for first in range(0, len(vectors), batch):
            results += evaluator.evaluate_many([wrap(v) for v in vectors[first:first + batch]])
            bar.advance(task, len(vectors[first:first + batch]))
    by_layer: dict[int, dict[float, float]] = {t: {1.0: base} for t in range(n)}
    for (t, k), result in zip(jobs, results):
        by_layer[t][k] = result.accuracy
    return [SensitivityCurve(spec.name, tuple(sorted(by_layer[t])),
                             tuple(by_layer[t][k] for k in sorted(by_layer[t]))) for t, spec in enumerate(graph)]


def write_csv(curves: Sequence[SensitivityCurve], path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "keep", "val_accuracy"])
        for curve in curves:
            for k, acc in zip(curve.keeps, curve.accuracy):
                writer.writerow([curve.layer, f"{k:.6g}", f"{acc:.6f}"])
    return path


def read_csv(path: str | Path, graph: LayerGraph | None = None) -> list[SensitivityCurve]:
    """Curves from :func:`write_csv`; with ``graph``, refuses curves of another model's layers."""
    rows: dict[str, list[tuple[float, float]]] = {}
    try:
        with Path(path).open(newline="") as f:
            for row in csv.DictReader(f):
                rows.setdefault(row["layer"], []).append((float(row["keep"]), float(row["val_accuracy"])))
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read sensitivity curves {str(path)!r}: {exc}; delete it to measure again") \
            from None
    if graph is not None and list(rows) != list(graph.names):
        raise ConfigError(f"sensitivity curves {str(path)!r} are for layers {list(rows)}, not this model's "
                          f"{list(graph.names)}; delete the file to measure again")
    return [SensitivityCurve(layer, tuple(k for k, _ in sorted(points)), tuple(a for _, a in sorted(points)))
            for layer, points in rows.items()]


def plot_curves(curves: Sequence[SensitivityCurve], path: str | Path, *, title: str = "") -> Path:
    """One curve per layer: validation accuracy against the layer's keep ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    cmap = plt.get_cmap("viridis")
    for i, curve in enumerate(curves):
        ax.plot(curve.keeps, curve.accuracy, marker="o", markersize=3, label=curve.layer,
                color=cmap(i / max(1, len(curves) - 1)))
    ax.set_xlabel("keep ratio of the layer (all others kept whole)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title or "per-layer sensitivity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(curves) > 12 else 1, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def greedy_allocation(curves: Sequence[SensitivityCurve], cost_model, projector, *, step: float = 0.05) -> list[float]:
    """Keep ratios that meet ``projector``'s budget, lowered greedily where the curves lose least.

    From every layer at ``max_keep``, each step lowers one layer by ``step`` or, where rounding makes
    that no change, to its next smaller channel count (never below ``min_keep``): the one with the
    smallest interpolated accuracy loss per unit of cost saved. When the
    budget is met, the result is passed through the projector (a no-op unless rounding left it a hair
    over).
    """
    n = len(curves)
    if n != projector.n_layers:
        raise ConfigError(f"{n} sensitivity curves for a model with {projector.n_layers} decisions")
    keep = np.full(n, projector.max_keep)
    cost = cost_model.cost_of(keep)
    while cost > projector.target:
        best, best_score, best_cost = -1, math.inf, cost
        for t, curve in enumerate(curves):
            lower = _next_lower(projector, t, keep[t], step)
            if lower is None:
                continue
            trial = keep.copy()
            trial[t] = lower
            new_cost = cost_model.cost_of(trial)
            saved = cost - new_cost
            loss = max(0.0, float(curve.at(keep[t]) - curve.at(lower)))
            score = loss / saved if saved > 0 else math.inf
            if score < best_score or (score == best_score and new_cost < best_cost):
                best, best_score, best_cost = t, score, new_cost
        if best < 0:
            break  # every layer at min_keep: the projector below reports nothing reachable beyond it
        keep[best] = _next_lower(projector, best, keep[best], step)
        cost = cost_model.cost_of(keep)
    return projector.project(keep.tolist())


def _next_lower(projector, t: int, keep: float, step: float) -> float | None:
    """The largest keep ratio layer ``t`` can take at most ``keep - step`` (or, if rounding leaves none in
    that range, the next smaller channel count); None at ``min_keep``."""
    candidates = projector._candidates[t]  # keep ratios of the reachable channel counts, ascending
    below = candidates[candidates < keep - 1e-12]
    if not len(below):
        return None
    stepped = below[below <= keep - step + 1e-12]
    return float(stepped[-1] if len(stepped) else below[-1])


__all__ = ["DEFAULT_KEEPS", "SensitivityCurve", "check_keeps", "greedy_allocation", "plot_curves", "read_csv",
           "sensitivity_curves", "write_csv"]
