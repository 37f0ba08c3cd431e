"""The ViT benchmark (``scripts/bench.py vit``): searched per-block heads and MLP widths vs uniform and Torch-Pruning.

The built-in ``vit`` (patch 4, 4 blocks of 64 wide, 4 heads, MLP 128) on fashion-mnist, trained once and
cached like any base model. Its decisions are the embedding width (``patch_embed``), and per block the
number of heads and the MLP hidden width. At one FLOPs budget, rows:

- ``optuna``: the Optuna (TPE) search with ``evaluations``, one per search seed.
- ``default``: the product as a user runs it, ``scripts/search.py --model vit --budget b`` with every
  default (strategy, evaluations, baselines, deploy rung; the settings' ``select*``, ``warm_start``,
  ``baselines`` and ``default_evaluations`` override them where set: :mod:`search.bench.searched`), one per
  search seed; its policy is the run's ``policy.json``.
- ``uniform``: the largest uniform keep ratio that meets the budget (deterministic: found once).
- ``tp-vit``: Torch-Pruning's own pruned model from its ViT recipe (its
  ``examples/transformers/prune_timm_vit.py``: whole heads, one ratio for the channels and the heads, the
  ratio bisected so the FLOPs just meet the budget; :func:`amc.pruning.global_pruning.global_pruning`;
  deterministic: found once).

Every pruned model gets the same evaluation: the validation subset the search saw, the full test split, a
FlopCounterMode count, and the same short fine-tuning (:func:`search.bench.headline.deployed_accuracy`), with
every seed (``finetune_every_seed``: a deterministic row's policy is fine-tuned with each seed, so every row's
deployed accuracy is a mean over the same fine-tune seeds). The ``default`` row is held to the better of
uniform and tp-vit (:func:`search.bench.verdicts.default_verdicts`).
Each finished cell is written at once to ``<root>/budget<b>/<row>/seed<s>/cell.json``; a rerun reads
finished cells back, and a search that was interrupted resumes from its ``history.csv``.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from search.bench.common import VAL_LIMIT, VAL_SIZE, machine
from search.bench.markdown import markdown_table, mean_std, update_section
from search.bench.searched import default_row_text, searched, write_cell
from search.bench.verdicts import DEFAULT_ROW, default_verdicts

if TYPE_CHECKING:  # imported where used: the benchmark CLI refuses bad arguments before torch loads
    from rich.console import Console
    from torch import nn
    from torch.utils.data import TensorDataset

    from amc.context import Context, ContextConfig

log = logging.getLogger(__name__)

BASE_EPOCHS = 10  # about 15-20 min on one core of the 2-core machine (see the section's base line)

# (row label, strategy or None for the Torch-Pruning row, deterministic)
ROWS = (("optuna", "optuna", False), (DEFAULT_ROW, DEFAULT_ROW, False), ("uniform", "uniform", True),
        ("tp-vit", None, True))
BASELINES = ("uniform", "tp-vit")


def fashion_vit(*, data_dir: str | None = None, epochs: int = BASE_EPOCHS, val_limit: int | None = VAL_LIMIT,
                **kwargs) -> ContextConfig:
    """The benchmark context: ``vit`` on fashion-mnist, its base model trained ``epochs`` (cached)."""
    from amc.context import ContextConfig
    from amc.data.datasets import DEFAULT_FASHION_MNIST_DIR
    from amc.evaluation.evaluator import EvalConfig
    from amc.train import TrainConfig

    return ContextConfig(model="vit", dataset="fashion-mnist", data_dir=data_dir or DEFAULT_FASHION_MNIST_DIR, seed=0,
                         val_size=VAL_SIZE, train=TrainConfig(epochs=epochs), eval=EvalConfig(val_limit=val_limit),
                         **kwargs)


@dataclass(frozen=True)
class VitSettings:
    """What one run holds fixed. Cells are keyed by budget, row and seed only: use a new ``root`` for other settings."""

    budget: float = 0.5
    seeds: tuple[int, ...] = (0, 1, 2)
    evaluations: int = 120
    workers: int = 1
    min_keep: float = 0.2
    finetune_epochs: int = 3
    finetune_samples: int = 20000
    finetune_lr: float = 0.01
    tp_iterations: int = 14  # bisection steps of the Torch-Pruning ratio
    finetune_every_seed: bool = True  # deterministic rows: found once, fine-tuned with every seed
    # The default row: scripts/search.py's defaults, but for these where set (None: the product's default; select
    # "none": no deploy rung; default_evaluations: its --evaluations). See search.bench.searched.
    default_evaluations: int | None = None
    select: str | None = None
    select_top_k: int | None = None
    select_samples: int | None = None
    select_lr: float | None = None
    warm_start: tuple[str, ...] | None = None
    baselines: bool | None = None


@dataclass(frozen=True)
class VitCell:
    budget: float
    row: str
    seed: int
    val_accuracy: float  # on the validation subset the search saw
    test_accuracy: float  # full test split, no fine-tuning
    finetuned_test_accuracy: float
    flops_ratio: float  # FlopCounterMode, pruned / base
    params_ratio: float
    search_seconds: float  # tp-vit: the bisection
    evaluations: int  # recorded evaluations (cache hits included); tp-vit: models pruned by the bisection
    seconds: float  # wall time of the whole cell
    widths: tuple[int, ...] = ()  # embedding width, then heads and MLP width per block
    chosen: str = ""  # history.csv origin of the search's policy (search, baseline:uniform, ...); "" for tp-vit


def widths(model: nn.Module) -> tuple[int, ...]:
    """The kept units of a ViT: the embedding width, then (heads, MLP hidden width) of each block."""
    from amc.graph.probe import attention_parts

    out = [model.patch_embed.out_channels]
    for block in model.blocks:
        out += [attention_parts(block.attn).num_heads, block.mlp.fc1.out_features]
    return tuple(out)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def run_cell(root: Path, ctx: Context, settings: VitSettings, *, row: str, seed: int,
             tune_set: TensorDataset) -> VitCell:
    """One (row, seed) cell at ``settings.budget``: read back when finished, else run and written at once."""
    from amc.evaluation.metrics import accuracy, validate
    from search.bench.headline import deployed_accuracy, flops, tp_pruned

    budget = settings.budget
    out = root / f"budget{budget:g}" / row / f"seed{seed}"
    cell_file = out / "cell.json"
    if cell_file.exists():
        data = json.loads(cell_file.read_text())
        return VitCell(**{**data, "widths": tuple(data.get("widths", ()))})
    start = time.perf_counter()
    strategy = {label: s for label, s, _ in ROWS}[row]
    deterministic = {label: d for label, _, d in ROWS}[row]
    search_seed = settings.seeds[0] if deterministic else seed  # a deterministic row's policy is found once
    chosen = ""
    if strategy is None:  # tp-vit: Torch-Pruning's own model
        result = tp_pruned(ctx, budget, min_keep=settings.min_keep, iterations=settings.tp_iterations)
        pruned, search_seconds, evaluations = result.model, time.perf_counter() - start, result.steps
        log.info("tp-vit at budget %g: FLOPs ratio %.4f at pruning ratio %.4f", budget, result.ratio,
                 result.pruning_ratio)
    else:
        found = searched(settings, ctx, run=root / f"budget{budget:g}" / row / f"seed{search_seed}" / "search",
                         strategy=strategy, budget=budget, seed=search_seed, evaluations=settings.evaluations)
        search_seconds, evaluations, chosen = found.search_seconds, found.evaluations, found.chosen
        pruned = ctx.evaluator.prune(found.policy)
    shape = ctx.graph.input_shape
    val, _ = validate(pruned, *ctx.evaluator.val_set)
    cell = VitCell(budget=budget, row=row, seed=seed, val_accuracy=val, test_accuracy=accuracy(pruned, ctx.data.test),
                   finetuned_test_accuracy=deployed_accuracy(ctx, pruned, tune_set, epochs=settings.finetune_epochs,
                                                             lr=settings.finetune_lr, seed=seed),
                   flops_ratio=flops(pruned, shape) / flops(ctx.model, shape),
                   params_ratio=_params(pruned) / _params(ctx.model), search_seconds=search_seconds,
                   evaluations=evaluations, seconds=time.perf_counter() - start, widths=widths(pruned), chosen=chosen)
    write_cell(cell_file, cell)
    return cell


def plan(settings: VitSettings) -> list[tuple[str, int]]:
    """The cells of a run, in order: (row, seed); every row for the first seed, then the other seeds (the
    searches', and the deterministic rows' fine-tunes with ``finetune_every_seed``), so an interrupted run
    already has one of each row."""
    first, *rest = settings.seeds
    return [(row, first) for row, *_ in ROWS] + [(row, seed) for seed in rest for row, _, deterministic in ROWS
                                                  if settings.finetune_every_seed or not deterministic]


def vit_bench(root: Path, settings: VitSettings = VitSettings(), *, context: Context,
              progress: bool = True, on_cell: Callable[[VitCell, bool], None] | None = None) -> list[VitCell]:
    """Runs (or reads back) every cell of the benchmark; ``on_cell(cell, cached)`` after each."""
    from amc.progress import progress_bar
    from search.bench.headline import finetune_set

    root.mkdir(parents=True, exist_ok=True)
    tune_set = finetune_set(context, settings.finetune_samples)
    todo = plan(settings)
    cells = []
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task("vit", total=len(todo), status="")
        for row, seed in todo:
            bar.update(task, status=f"{row} seed {seed}")
            cached = (root / f"budget{settings.budget:g}" / row / f"seed{seed}" / "cell.json").exists()
            cell = run_cell(root, context, settings, row=row, seed=seed, tune_set=tune_set)
            cells.append(cell)
            if on_cell is not None:
                on_cell(cell, cached)
            bar.advance(task)
    return cells


def vit_markdown(cells: list[VitCell], settings: VitSettings, *, command: str, machine: str, base_epochs: int,
                 base_test: float, base_widths: tuple[int, ...], base_seconds: float | None) -> str:
    trained = f"trained in {base_seconds / 60:.0f} min" if base_seconds is not None else "cached"
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {machine}  ",
        f"vit / fashion-mnist: patch 4, 4 blocks, embedding {base_widths[0]}, {base_widths[1]} heads, MLP "
        f"{base_widths[2]}; base model {base_epochs} epochs (SGD, one-cycle, lr 0.05) on 55,000 images ({trained}), "
        f"test accuracy **{100 * base_test:.2f}%**. Decisions: the embedding width, and per block the heads and the "
        f"MLP width; min_keep {settings.min_keep:g}, round_to 1. Budget {settings.budget:g} of the FLOPs. Search: "
        f"Optuna TPE, {settings.evaluations} evaluations, {settings.workers} worker(s) x 1 thread, candidates scored "
        f"on the first {VAL_LIMIT:,} of {VAL_SIZE:,} validation images; seeds {', '.join(map(str, settings.seeds))} are "
        "search seeds on the one base model (fine-tune seed = search seed). uniform and tp-vit are deterministic: "
        + ("found once and fine-tuned with each seed. " if settings.finetune_every_seed else
           f"run once (fine-tune seed {settings.seeds[0]}). ")
        + (default_row_text(settings) + " " if any(c.row == DEFAULT_ROW for c in cells) else "")
        + "tp-vit: Torch-Pruning's own model from its ViT recipe (whole heads, "
        "`prune_num_heads=True`, `prune_head_dims=False`, L1 magnitude, one ratio for channels and heads, "
        "classifier ignored), the ratio bisected to the budget. Test: the 10,000 test images. Fine-tuning: "
        f"{settings.finetune_epochs} epoch(s) of SGD (cosine, lr {settings.finetune_lr:g}) on "
        f"{settings.finetune_samples:,} training images, the same for every row. Widths: embedding, then "
        f"heads/MLP per block. Whole benchmark: {sum(c.seconds for c in cells) / 60:.0f} min of cell time.", "",
    ]
    rows = []
    for row, *_ in ROWS:
        group = [c for c in cells if c.row == row]
        if not group:
            continue
        shown = group[0].widths
        rows.append((row if len(group) > 1 else f"{row} (1 run)", mean_std([c.val_accuracy for c in group]),
                     mean_std([c.test_accuracy for c in group]), mean_std([c.finetuned_test_accuracy for c in group]),
                     mean_std([c.flops_ratio for c in group], scale=1, digits=3),
                     mean_std([c.params_ratio for c in group], scale=1, digits=3),
                     f"{statistics.mean(c.search_seconds for c in group):.0f}",
                     f"{shown[0]}; " + " ".join(f"{h}/{m}" for h, m in zip(shown[1::2], shown[2::2]))
                     + (f" (seed {group[0].seed})" if len(group) > 1 else "")))
    lines += markdown_table(("row", "val acc %", "test acc %", "test acc % after fine-tune", "FLOPs ratio",
                             "params ratio", "search s", "widths"), rows)
    found = default_verdicts(cells, settings.budget, baselines=BASELINES, gain_budgets=(settings.budget,))
    return "\n".join(lines + ([""] + found if found else [])) + "\n"


def vit_report(root: Path, settings: VitSettings, *, base_epochs: int, threads: int, data_dir: str | None,
               command: str, markdown: Path, console: Console) -> None:
    """Runs (or reads back) every cell, prints each and the table, writes the ``vit`` section of ``markdown``."""
    import torch

    from amc.context import build_context

    torch.set_num_threads(threads)
    ctx = build_context(fashion_vit(data_dir=data_dir, epochs=base_epochs), progress=True)
    base_test = ctx.base.test_accuracy if ctx.base is not None else None
    if base_test is None:
        from amc.evaluation.metrics import accuracy

        base_test = accuracy(ctx.model, ctx.data.test)
    console.print(f"base vit: test accuracy {100 * base_test:.2f}%"
                  + ("" if ctx.base is None or ctx.base.cached else f", trained in {ctx.base.seconds / 60:.1f} min"))

    def on_cell(cell: VitCell, cached: bool) -> None:
        where = "cached" if cached else f"{cell.seconds / 60:.1f} min"
        console.print(f"{cell.row:<8} seed {cell.seed}: val {100 * cell.val_accuracy:.2f} test "
                      f"{100 * cell.test_accuracy:.2f} fine-tuned {100 * cell.finetuned_test_accuracy:.2f} FLOPs "
                      f"{cell.flops_ratio:.3f} widths {cell.widths} ({where})")

    cells = vit_bench(root, settings, context=ctx, on_cell=on_cell)
    base_seconds = None if ctx.base is None or ctx.base.cached else ctx.base.seconds
    body = vit_markdown(cells, settings, command=command, machine=machine(), base_epochs=base_epochs,
                        base_test=base_test, base_widths=widths(ctx.model), base_seconds=base_seconds)
    console.print(body)
    update_section(markdown, "vit", body,
                   title=f"ViT: searched heads and MLP widths vs uniform and Torch-Pruning (vit / fashion-mnist, "
                         f"budget {settings.budget:g})")


__all__ = ["BASELINES", "ROWS", "VitCell", "VitSettings", "fashion_vit", "plan", "run_cell", "vit_bench",
           "vit_markdown", "vit_report", "widths"]
