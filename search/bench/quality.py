"""Quality benchmark (``scripts/bench.py quality``): strategies against each other at equal evaluations.

Every cell (budget, strategy, seed) is one run folder under ``<root>/quality/``; a finished cell
(its ``policy.json`` exists) is read back instead of run again, so the benchmark resumes.
"""

from __future__ import annotations

import logging
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from amc.context import ContextConfig, build_context
from amc.evaluation.evaluator import EvalConfig
from amc.pruning.policy import Policy
from search.bench.markdown import markdown_table, mean_std, update_section
from search.config import SearchConfig
from search.runner import run_search

log = logging.getLogger(__name__)

# (row label, strategy, sampler)
STRATEGY_ROWS = (("uniform", "uniform", "tpe"), ("sensitivity", "sensitivity", "tpe"), ("random", "random", "tpe"),
                 ("optuna-tpe", "optuna", "tpe"), ("ddpg", "ddpg", "tpe"))


@dataclass(frozen=True)
class Cell:
    budget: float
    label: str
    seed: int
    val_accuracy: float
    test_accuracy: float
    cost_ratio: float
    seconds: float


def run_cell(root: Path, *, budget: float, label: str, strategy: str, sampler: str, seed: int, evaluations: int,
             model: str, dataset: str, context=None) -> Cell:
    out = root / f"budget{budget:g}" / label / f"seed{seed}"
    if not (out / "policy.json").exists():
        if out.exists():  # an unfinished cell: start it again from scratch
            import shutil

            shutil.rmtree(out)
        run_search(SearchConfig(budget=budget, strategy=strategy, sampler=sampler, evaluations=evaluations,
                                out=str(out), progress=False, export=False,
                                context=ContextConfig(model=model, dataset=dataset, seed=seed,
                                                      eval=EvalConfig(seed=seed))),
                   context=context)
    policy = Policy.load(out / "policy.json")
    return Cell(budget, label, seed, policy.metrics["val_accuracy"], policy.metrics["test_accuracy"],
                policy.metrics["cost_ratio"], float(policy.meta["duration_s"]))


def quality(root: Path, *, budgets=(0.2, 0.3), seeds=(0, 1, 2), evaluations: int = 300, model: str = "cnn",
            dataset: str = "digits", on_cell=None) -> list[Cell]:
    cells = []
    for seed in seeds:
        context = build_context(ContextConfig(model=model, dataset=dataset, seed=seed, eval=EvalConfig(seed=seed)),
                                progress=False)
        for budget in budgets:
            for label, strategy, sampler in STRATEGY_ROWS:
                start = time.perf_counter()
                cell = run_cell(root, budget=budget, label=label, strategy=strategy, sampler=sampler, seed=seed,
                                evaluations=evaluations, model=model, dataset=dataset, context=context)
                cells.append(cell)
                if on_cell is not None:
                    on_cell(cell, time.perf_counter() - start)
    return cells


def quality_markdown(cells: list[Cell], *, evaluations: int, command: str) -> str:
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}.  ",
        f"cnn on digits (val 216, test 360 images), no fine-tuning, {evaluations} evaluations per strategy "
        "(uniform: 1; sensitivity: 1 policy from curves of 6 layers x 9 keep ratios = 55 unrecorded "
        "evaluations), accuracy after adaptive BN, mean ± std over seeds "
        f"{sorted({c.seed for c in cells})} (each seed: its own data split and base model).",
        "",
    ]
    rows, verdicts = [], []
    for budget in sorted({c.budget for c in cells}):
        means = {}
        for label, *_ in STRATEGY_ROWS:
            group = [c for c in cells if c.budget == budget and c.label == label]
            if not group:
                continue
            means[label] = statistics.mean(c.val_accuracy for c in group)
            rows.append((f"{budget:g}", label, mean_std([c.val_accuracy for c in group]),
                         mean_std([c.test_accuracy for c in group]),
                         f"{statistics.mean(c.cost_ratio for c in group):.3f}",
                         f"{statistics.mean(c.seconds for c in group):.0f}"))
        searched = {k: v for k, v in means.items() if k not in ("uniform", "sensitivity")}
        if searched and "uniform" in means:
            best = max(searched, key=searched.get)
            verdicts.append(f"- budget {budget:g}: best strategy **{best}** (val {100 * searched[best]:.2f}%), "
                            f"{100 * (searched[best] - means['uniform']):+.2f} points vs uniform, "
                            + (f"{100 * (searched[best] - means['random']):+.2f} vs random" if "random" in means and best != "random" else "")
                            + (f"; ddpg {100 * (means['ddpg'] - searched[best]):+.2f} vs the best" if "ddpg" in means and best != "ddpg" else ""))
    table = markdown_table(("budget (FLOPs)", "strategy", "val acc %", "test acc %", "cost ratio", "wall s"), rows)
    return "\n".join(lines + table + [""] + verdicts) + "\n"


def quality_report(root: Path, *, budgets: Sequence[float], seeds: Sequence[int], evaluations: int, threads: int,
                   command: str, markdown: Path, console: Console) -> None:
    """Runs (or reads back) every cell, prints each and the table, writes the ``quality`` section of ``markdown``."""
    torch.set_num_threads(threads)

    def on_cell(cell, seconds):
        console.print(f"budget {cell.budget:g} {cell.label:<11} seed {cell.seed}: val {cell.val_accuracy:.4f} "
                      f"test {cell.test_accuracy:.4f} ratio {cell.cost_ratio:.3f} ({seconds / 60:.1f} min)")

    cells = quality(root, budgets=tuple(budgets), seeds=tuple(seeds), evaluations=evaluations, on_cell=on_cell)
    body = quality_markdown(cells, evaluations=evaluations, command=command)
    console.print(body)
    update_section(markdown, "quality", body, title="Search quality: cnn / digits, no fine-tuning")
