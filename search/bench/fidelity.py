"""Score fidelity (``scripts/bench.py fidelity``): which candidate score predicts the deployed model's accuracy?

For each FLOPs budget, ``policies`` random feasible policies (EagleEye's sampling, :mod:`search.strategies.random_search`)
plus the uniform policy and Torch-Pruning global pruning's widths (:func:`search.bench.headline.tp_global_magnitude`,
its channel counts applied with our pruner) are each scored with every candidate score of :mod:`amc.evaluation.scores`
(its cost in seconds recorded), and then *deployed*: pruned, adaptive BN, and fine-tuned with the headline's
recipe (:func:`search.bench.headline.deployed_accuracy`) before the full test split is scored. The table gives
each score's Spearman and Kendall rank correlation with the deployed accuracy over the policies of a budget, with
bootstrap 95% intervals (policies resampled), and a scatter plot per budget.

Each (budget, policy) cell is written to ``<root>/budget<b>/<policy>/cell.json`` as soon as it is measured; a
rerun reads cells back and measures only what is missing (a score added later, say).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amc.context import Context
from amc.evaluation.evaluator import PolicyEvaluator
from search.bench.markdown import ResultTable

log = logging.getLogger(__name__)

SCORES = ("bn", "reconstruct", "finetune:10", "finetune:50", "finetune:50+kd")


@dataclass(frozen=True)
class FidelitySettings:
    budgets: tuple[float, ...] = (0.3, 0.5)
    policies: int = 30
    scores: tuple[str, ...] = SCORES
    seed: int = 0
    min_keep: float = 0.2
    finetune_epochs: int = 1  # the deployed accuracy: the headline's fine-tune recipe
    finetune_samples: int = 10000
    finetune_lr: float = 0.01
    bootstrap: int = 1000


@dataclass
class FidelityCell:
    budget: float
    policy: str  # "uniform", "tp-global" or "random-<i>"
    keep: list[float]
    cost_ratio: float
    scores: dict[str, float] = field(default_factory=dict)  # score -> validation accuracy
    seconds: dict[str, float] = field(default_factory=dict)  # score -> seconds of one evaluation
    deployed: float | None = None  # test accuracy after the fine-tune recipe
    deployed_seconds: float | None = None


def plan_policies(ctx: Context, budget: float, settings: FidelitySettings) -> list[tuple[str, list[float]]]:
    """(name, keep ratios) of every policy of a budget: uniform, tp-global's widths, then the random ones."""
    from amc.cost.analytic import FlopsCost
    from envs import BudgetProjector
    from search.strategies.random_search import random_keep
    from search.strategies.uniform import uniform_keep
    from search.bench.headline import tp_global_magnitude

    projector = BudgetProjector(FlopsCost(ctx.graph), budget, min_keep=settings.min_keep)
    holder = type("Problem", (), {"projector": projector, "blocks": ()})  # what the baselines read of a SearchProblem
    tp_model, _, _ = tp_global_magnitude(ctx.model, ctx.data.val.tensors[0][:2], budget,
                                         round_to=ctx.graph.round_to, min_keep=settings.min_keep)
    widths = [_width(tp_model.get_submodule(spec.name)) for spec in ctx.graph.layers]
    tp_keep = [n / spec.out_channels for n, spec in zip(widths, ctx.graph.layers)]
    rng = np.random.default_rng(settings.seed)
    randoms = [(f"random-{i}", random_keep(holder, rng)) for i in range(settings.policies)]
    return [("uniform", uniform_keep(holder)), ("tp-global", tp_keep), *randoms]


def _width(module) -> int:
    return module.out_features if hasattr(module, "out_features") else module.out_channels


def run_fidelity(root: Path, ctx: Context, settings: FidelitySettings = FidelitySettings(), *,
                 on_cell: Callable[[FidelityCell, bool], None] | None = None) -> list[FidelityCell]:
    """Every cell of every budget, read back when finished, else measured and written at once."""
    from amc.cost.analytic import FlopsCost
    from search.bench.headline import deployed_accuracy, finetune_set

    evaluators = {s: PolicyEvaluator(ctx.model, ctx.graph, ctx.data,
                                     dataclasses.replace(ctx.config.eval, score=s, cache=False))
                  for s in settings.scores}
    tune_set = finetune_set(ctx, settings.finetune_samples)
    flops = FlopsCost(ctx.graph)
    cells = []
    for budget in settings.budgets:
        for name, keep in plan_policies(ctx, budget, settings):
            path = root / f"budget{budget:g}" / name / "cell.json"
            cell = FidelityCell(**json.loads(path.read_text())) if path.exists() else \
                FidelityCell(budget=budget, policy=name, keep=list(keep), cost_ratio=flops.ratio(keep))
            missing = [s for s in settings.scores if s not in cell.scores]
            for score in missing:
                start = time.perf_counter()
                cell.scores[score] = evaluators[score].evaluate(cell.keep).accuracy
                cell.seconds[score] = time.perf_counter() - start
            fresh = bool(missing) or cell.deployed is None
            if cell.deployed is None:
                start = time.perf_counter()
                cell.deployed = deployed_accuracy(ctx, ctx.evaluator.prune(cell.keep), tune_set,
                                                  epochs=settings.finetune_epochs, lr=settings.finetune_lr,
                                                  seed=settings.seed)
                cell.deployed_seconds = time.perf_counter() - start
            if fresh:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.with_suffix(".tmp").write_text(json.dumps(dataclasses.asdict(cell), indent=1) + "\n")
                path.with_suffix(".tmp").replace(path)
            if on_cell is not None:
                on_cell(cell, not fresh)
            cells.append(cell)
    return cells


def rank_correlations(scores: Sequence[float], deployed: Sequence[float], *, bootstrap: int = 1000,
                      seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Spearman and Kendall tau of ``scores`` against ``deployed``: (value, low, high), a bootstrap 95% interval."""
    from scipy.stats import kendalltau, spearmanr

    x, y = np.asarray(scores, dtype=float), np.asarray(deployed, dtype=float)
    rng = np.random.default_rng(seed)
    out = {}
    for label, fn in (("spearman", spearmanr), ("kendall", kendalltau)):
        value = float(fn(x, y)[0])
        draws = []
        for _ in range(bootstrap):
            idx = rng.integers(0, len(x), len(x))
            if np.ptp(x[idx]) > 0 and np.ptp(y[idx]) > 0:  # a constant resample has no rank correlation
                draws.append(float(fn(x[idx], y[idx])[0]))
        low, high = np.percentile(draws, [2.5, 97.5]) if draws else (float("nan"), float("nan"))
        out[label] = (value, float(low), float(high))
    return out


def fidelity_table(cells: Sequence[FidelityCell], settings: FidelitySettings) -> ResultTable:
    """One row per (budget, score): rank correlations with the deployed accuracy and the score's cost."""
    rows = []
    for budget in settings.budgets:
        group = [c for c in cells if c.budget == budget and c.deployed is not None]
        for score in settings.scores:
            have = [c for c in group if score in c.scores]
            if len(have) < 3:
                continue
            r = rank_correlations([c.scores[score] for c in have], [c.deployed for c in have],
                                  bootstrap=settings.bootstrap, seed=settings.seed)
            seconds = float(np.median([c.seconds[score] for c in have]))
            rows.append((f"{budget:g}", score, str(len(have)), *(f"{v:.2f} [{lo:.2f}, {hi:.2f}]" for v, lo, hi in
                                                                  (r["spearman"], r["kendall"])), f"{seconds:.2f}"))
    return ResultTable(title="candidate score vs deployed accuracy (rank correlation, bootstrap 95% interval)",
                       headers=("budget", "score", "policies", "Spearman", "Kendall tau", "s per candidate"),
                       rows=tuple(rows))


def choose_default(table: ResultTable, budget: float = 0.3, within: float = 0.05) -> str | None:
    """The cheapest score whose Spearman at ``budget`` is within ``within`` of the best one's."""
    rows = [r for r in table.rows if r[0] == f"{budget:g}"]
    if not rows:
        return None
    spearman = {r[1]: float(r[3].split()[0]) for r in rows}
    cost = {r[1]: float(r[5]) for r in rows}
    best = max(spearman.values())
    return min((s for s in spearman if spearman[s] >= best - within), key=lambda s: cost[s])


def choose_default_everywhere(table: ResultTable, budgets: Sequence[float], within: float = 0.05) -> str | None:
    """The cheapest score whose Spearman is within ``within`` of the best one's at every budget of ``budgets``."""
    rows = {(r[0], r[1]): r for r in table.rows}
    scores = {r[1] for r in table.rows}
    cost: dict[str, float] = {}
    fit = []
    for score in sorted(scores):
        ok = True
        for budget in budgets:
            key = (f"{budget:g}", score)
            if key not in rows:
                ok = False
                break
            best = max(float(r[3].split()[0]) for r in table.rows if r[0] == f"{budget:g}")
            ok &= float(rows[key][3].split()[0]) >= best - within
            cost[score] = cost.get(score, 0.0) + float(rows[key][5])
        if ok:
            fit.append(score)
    return min(fit, key=lambda s: cost[s]) if fit else None


def scatter(cells: Sequence[FidelityCell], settings: FidelitySettings, path: Path) -> Path:
    """Per budget, each score's value against the deployed accuracy (uniform and tp-global marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(settings.budgets), len(settings.scores), squeeze=False,
                             figsize=(3.2 * len(settings.scores), 3.0 * len(settings.budgets)))
    for i, budget in enumerate(settings.budgets):
        group = [c for c in cells if c.budget == budget and c.deployed is not None]
        for j, score in enumerate(settings.scores):
            ax = axes[i][j]
            for c in group:
                if score in c.scores:
                    marker, colour = {"uniform": ("s", "tab:red"), "tp-global": ("^", "tab:green")}.get(
                        c.policy, ("o", "tab:blue"))
                    ax.scatter(100 * c.scores[score], 100 * c.deployed, marker=marker, color=colour, s=18)
            ax.set_title(f"budget {budget:g}: {score}", fontsize=9)
            ax.set_xlabel("score: val accuracy %", fontsize=8)
            ax.set_ylabel("deployed: test accuracy %", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def fidelity_markdown(cells: Sequence[FidelityCell], settings: FidelitySettings, *, command: str, machine: str,
                      plot: str) -> str:
    """The ``fidelity`` section: the table, the default it implies at each budget, the plot and the setting."""
    from search.bench.markdown import markdown_table

    table = fidelity_table(cells, settings)
    lines = [f"Command: `{command}`  ", f"Machine: {machine}  ",
             f"Per budget: {settings.policies} random feasible policies (EagleEye's sampling), the uniform policy and "
             "Torch-Pruning global pruning's widths. 'deployed': test accuracy after the headline's fine-tune "
             f"({settings.finetune_epochs} epoch on {settings.finetune_samples} training images, lr "
             f"{settings.finetune_lr:g}). Scores are validation accuracies on the search's validation subset. "
             f"Intervals: {settings.bootstrap} bootstrap resamples of the policies. 's per candidate': median seconds "
             "of one evaluation (prune, score, validate).", "", *markdown_table(table.headers, table.rows), ""]
    for budget in settings.budgets:
        chosen = choose_default(table, budget)
        if chosen is not None:
            lines.append(f"- Budget {budget:g}: the cheapest score within 0.05 of the best Spearman is **{chosen}**.")
    everywhere = choose_default_everywhere(table, settings.budgets)
    if everywhere is not None:
        lines.append(f"- At every budget: the cheapest score within 0.05 of the best Spearman is **{everywhere}**.")
    minutes = sum(sum(c.seconds.values()) + (c.deployed_seconds or 0.0) for c in cells) / 60
    lines += [f"- Cell time: {minutes:.0f} min (every score and deployed fine-tune of {len(cells)} cells).", "",
              f"![score vs deployed accuracy]({plot})", ""]
    return "\n".join(lines)


def fidelity_report(root: Path, settings: FidelitySettings, *, threads: int, data_dir: str | None, command: str,
                    markdown: Path, console) -> None:
    """Runs (or reads back) every cell, prints each, writes the plot and the ``fidelity`` section of ``markdown``."""
    import torch

    from amc.context import build_context
    from search.bench.common import fashion_resnet20, machine
    from search.bench.markdown import update_section

    torch.set_num_threads(threads)
    ctx = build_context(fashion_resnet20(data_dir=data_dir), progress=True)

    def on_cell(cell: FidelityCell, cached: bool) -> None:
        scores = " ".join(f"{s} {100 * v:.1f}" for s, v in cell.scores.items())
        console.print(f"budget {cell.budget:g} {cell.policy:<10} {scores} deployed {100 * cell.deployed:.2f}"
                      + (" (cached)" if cached else ""))

    cells = run_fidelity(root, ctx, settings, on_cell=on_cell)
    plot = scatter(cells, settings, markdown.parent / "docs" / "fidelity.png")
    body = fidelity_markdown(cells, settings, command=command, machine=machine(),
                             plot=str(plot.relative_to(markdown.parent)))
    console.print(fidelity_table(cells, settings).rich())
    update_section(markdown, "fidelity", body,
                   title="Score fidelity: which candidate score predicts the deployed accuracy (resnet20 / fashion-mnist)")
