"""Quality benchmark (``scripts/bench.py quality``): strategies against each other at equal evaluations.

Every cell (budget, strategy, seed) is one run folder under ``<root>/quality/``; a finished cell
(its ``policy.json`` exists) is read back instead of run again, so the benchmark resumes.
"""

from __future__ import annotations

import logging
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from amc.context import ContextConfig, build_context
from amc.evaluate import EvalConfig
from amc.policy import Policy
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


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


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
        "| budget (FLOPs) | strategy | val acc % | test acc % | cost ratio | wall s |",
        "|---|---|---|---|---|---|",
    ]
    verdicts = []
    for budget in sorted({c.budget for c in cells}):
        rows = {}
        for label, *_ in STRATEGY_ROWS:
            group = [c for c in cells if c.budget == budget and c.label == label]
            if not group:
                continue
            rows[label] = statistics.mean(c.val_accuracy for c in group)
            lines.append(f"| {budget:g} | {label} | {_mean_std([c.val_accuracy for c in group])} | "
                         f"{_mean_std([c.test_accuracy for c in group])} | "
                         f"{statistics.mean(c.cost_ratio for c in group):.3f} | "
                         f"{statistics.mean(c.seconds for c in group):.0f} |")
        searched = {k: v for k, v in rows.items() if k not in ("uniform", "sensitivity")}
        if searched and "uniform" in rows:
            best = max(searched, key=searched.get)
            verdicts.append(f"- budget {budget:g}: best strategy **{best}** (val {100 * searched[best]:.2f}%), "
                            f"{100 * (searched[best] - rows['uniform']):+.2f} points vs uniform, "
                            + (f"{100 * (searched[best] - rows['random']):+.2f} vs random" if "random" in rows and best != "random" else "")
                            + (f"; ddpg {100 * (rows['ddpg'] - searched[best]):+.2f} vs the best" if "ddpg" in rows and best != "ddpg" else ""))
    return "\n".join(lines + [""] + verdicts) + "\n"


def update_section(path: Path, name: str, body: str, *, title: str) -> None:
    """Replaces (or appends) the section between ``<!-- bench:name -->`` markers in ``path``."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n## {title}\n\n{body}{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nGenerated by `scripts/bench.py`; each section is rewritten by its benchmark.\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
