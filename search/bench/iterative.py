"""One-shot against iterative pruning (``scripts/bench.py iterative``): same policy, same fine-tuning epochs.

For each seed, the policy is the quality benchmark's Optuna TPE result (cnn / digits, that seed's base
model and split; searched here if the quality benchmark has not been run). It is applied one-shot
(prune, then ``epochs`` epochs of fine-tuning) and iteratively (``steps`` prune / fine-tune rounds that
share the same ``epochs``), with a linear and an AGP cubic schedule. Results are cached per cell.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from amc.apply import apply_policy
from search.bench.common import machine
from search.bench.markdown import markdown_table, mean_std, update_section
from search.bench.quality import run_cell

VARIANTS = (("one-shot", "oneshot", "linear"), ("iterative linear", "iterative", "linear"),
            ("iterative AGP", "iterative", "agp"))


@dataclass(frozen=True)
class IterativeCell:
    seed: int
    variant: str
    pruned_test: float  # one-shot, before fine-tuning
    test: float  # after fine-tuning
    val: float


def iterative_bench(root: Path, *, budget: float = 0.2, seeds=(0, 1, 2), epochs: int = 12, steps: int = 3,
                    evaluations: int = 300, on_cell: Callable[[IterativeCell], None] | None = None) -> list[IterativeCell]:
    cells = []
    for seed in seeds:
        run_cell(root, budget=budget, label="optuna-tpe", strategy="optuna", sampler="tpe", seed=seed,
                 evaluations=evaluations, model="cnn", dataset="digits")
        policy = root / f"budget{budget:g}" / "optuna-tpe" / f"seed{seed}" / "policy.json"
        for label, schedule, ramp in VARIANTS:
            path = root / "iterative" / f"budget{budget:g}-e{epochs}-k{steps}" / f"{label}-seed{seed}.json"
            if path.exists():
                data = json.loads(path.read_text())
            else:
                applied = apply_policy(policy, export=False, progress=False, finetune_epochs=epochs,
                                       schedule=schedule, steps=steps if schedule == "iterative" else 1, ramp=ramp)
                data = {"pruned_test": applied.test_accuracy, "test": applied.finetuned_test_accuracy,
                        "val": applied.finetuned_val_accuracy}
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(data))
            cell = IterativeCell(seed, label, data["pruned_test"], data["test"], data["val"])
            cells.append(cell)
            if on_cell:
                on_cell(cell)
    return cells


def iterative_markdown(cells: list[IterativeCell], *, budget: float, epochs: int, steps: int, command: str,
                       machine: str) -> str:
    seeds = sorted({c.seed for c in cells})
    lines = [f"Command: `{command}`  ", f"Machine: {machine}  ",
             f"cnn / digits, budget {budget:g} FLOPs, the Optuna TPE policy of each seed (seeds {seeds}: each its "
             f"own split and base model). {epochs} fine-tuning epochs in all (SGD, cosine, lr 0.01); iterative: "
             f"{steps} prune / fine-tune rounds of {epochs // steps} epochs. Test accuracy %, mean ± std over seeds.",
             ""]
    rows = []
    for label, *_ in VARIANTS:
        group = [c for c in cells if c.variant == label]
        if group:
            before = mean_std([c.pruned_test for c in group]) if label == "one-shot" else "-"
            rows.append((label, before, mean_std([c.test for c in group]), mean_std([c.val for c in group])))
    lines += markdown_table(("schedule", "test acc before fine-tuning", "test acc after", "val acc after"), rows)
    return "\n".join(lines) + "\n"


def iterative_report(root: Path, *, budget: float, seeds: Sequence[int], epochs: int, steps: int, threads: int,
                     command: str, markdown: Path, console: Console) -> None:
    """Runs (or reads back) every cell, prints each and the table, writes the ``iterative`` section of ``markdown``."""
    torch.set_num_threads(threads)
    cells = iterative_bench(root, budget=budget, seeds=tuple(seeds), epochs=epochs, steps=steps,
                            on_cell=lambda c: console.print(f"seed {c.seed} {c.variant}: test {c.test:.4f}"))
    body = iterative_markdown(cells, budget=budget, epochs=epochs, steps=steps, command=command, machine=machine())
    console.print(body)
    update_section(markdown, "iterative", body, title="One-shot vs iterative pruning: cnn / digits")
