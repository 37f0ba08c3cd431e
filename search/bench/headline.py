"""The headline benchmark (``scripts/bench.py headline``): searched policies against what users pick instead.

resnet20 on fashion-mnist (the cached 15-epoch base model of :mod:`search.bench.common`), FLOPs budgets,
several search seeds on the one base model. Rows:

- ``uniform``: the largest uniform keep ratio that meets the budget (deterministic: one run).
- ``tp-global``: Torch-Pruning's own pruned model from its global magnitude pruning, stepped until the FLOPs
  meet the budget (:func:`amc.pruning.global_pruning.global_pruning`; deterministic: one run): what a user of
  Torch-Pruning gets.
- ``default``: the product as a user runs it, ``scripts/search.py --budget b`` with every default
  (strategy, evaluations, baselines, deploy rung; the settings' ``select*``, ``warm_start``, ``baselines``
  and ``default_evaluations`` override them where set: :mod:`search.bench.searched`); its policy is the
  run's ``policy.json``. Its deployed accuracy is held to the better baseline's (:mod:`search.bench.verdicts`).
- ``random``, ``optuna-tpe``, ``ddpg``: searches with the same number of evaluations.
- ``sensitivity``: greedy allocation from per-layer sensitivity curves (deterministic: one run).
- ``oracle``: the best policy of a random search ``oracle_factor`` times longer (seed 0; its first
  ``evaluations`` samples are those of the seed-0 random row). Random search, not TPE: in this coarse
  space (round_to 8) TPE settles early, and a long random search finds better policies.

Every pruned model gets the same adaptive-BN recalibration, the same validation subset (the one the
searches saw), the full test split, the same short fine-tuning, a FLOPs count (``FlopCounterMode``) and an
interleaved CPU latency measurement against the base model. Each finished cell is written at once to
``<root>/budget<b>/<row>/seed<s>/cell.json``; a rerun reads finished cells back, and a search that was
interrupted resumes from its ``history.csv``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from amc.context import Context, build_context
from amc.errors import ConfigError
from amc.evaluation.evaluator import recalibrate_bn
from amc.evaluation.metrics import accuracy, validate
from amc.cost.timing import compare_latency
from amc.pruning.global_pruning import global_pruning
from amc.progress import progress_bar
from amc.train import TrainConfig, train
from search.bench import HEADLINE_ROWS
from search.bench.common import BASE_EPOCHS, VAL_LIMIT, fashion_resnet20, machine
from search.bench.markdown import markdown_table, mean_std, update_section
from search.bench.searched import default_row_text, search_config, searched, write_cell
from search.bench.verdicts import DEFAULT_ROW, default_verdicts, deployed_verdicts, verdicts

log = logging.getLogger(__name__)

# (row label, strategy or None for a row that is not a search, deterministic)
ROWS = (("uniform", "uniform", True), ("tp-global", None, True), (DEFAULT_ROW, DEFAULT_ROW, False),
        ("random", "random", False), ("sensitivity", "sensitivity", True), ("optuna-tpe", "optuna", False),
        ("ddpg", "ddpg", False), ("oracle", "random", True))
assert tuple(label for label, *_ in ROWS) == HEADLINE_ROWS, "search.bench.HEADLINE_ROWS lists the rows for the CLI"
ORACLE_STRATEGY = "random search"  # the strongest strategy at 100 evaluations (BENCHMARKS.md)


@dataclass(frozen=True)
class HeadlineSettings:
    """What one headline run holds fixed. Changing any of it invalidates no cell: cells are keyed by
    budget, row and seed only, so use a new ``root`` for other settings."""

    budgets: tuple[float, ...] = (0.3, 0.5)
    seeds: tuple[int, ...] = (0, 1, 2)
    evaluations: int = 100
    oracle_factor: int = 10
    workers: int = 2
    min_keep: float = 0.2
    round_to: int = 8
    finetune_epochs: int = 1
    finetune_samples: int = 10000
    finetune_lr: float = 0.01
    latency_batch: int = 64
    latency_repeats: int = 5
    latency_run_time: float = 0.2  # seconds of timing per model in each repeat
    score: str = "bn"  # the searches' candidate score (amc.evaluation.scores); the table's val column is adaptive BN for all
    ladder: tuple[str, ...] = ()  # costlier scores re-ranking each search's best candidates (search.ladder)
    rows: tuple[str, ...] = HEADLINE_ROWS
    # Deterministic rows (uniform, tp-global, sensitivity, oracle) are fine-tuned with every seed too, their
    # policy found once: the deployed accuracy's seed-to-seed spread is then measured for every row.
    finetune_every_seed: bool = False
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
class HeadlineCell:
    budget: float
    row: str
    seed: int
    val_accuracy: float  # on the validation subset the searches saw, after adaptive BN
    test_accuracy: float  # full test split, no fine-tuning
    finetuned_test_accuracy: float
    flops_ratio: float  # FlopCounterMode, pruned / base
    latency_ratio: float  # interleaved CPU timing, median of repeats, pruned / base
    search_seconds: float
    evaluations: int  # recorded evaluations (cache hits included); tp-global: 0
    distinct: int  # evaluations that ran a forward pass (not cache hits)
    seconds: float  # wall time of the whole cell (search, evaluation, timing, fine-tuning)
    channels: tuple[int, ...] = ()
    chosen: str = ""  # history.csv origin of the search's policy (search, baseline:uniform, ...); "" for tp-global

    @property
    def evals_per_second(self) -> float:
        return self.evaluations / self.search_seconds if self.search_seconds > 0 else float("nan")


def flops(module: nn.Module, shape: Sequence[int]) -> int:
    """Multiply-accumulate work of one forward pass of ``module`` on one input, as FlopCounterMode counts it."""
    was_training = module.training
    module.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.zeros(1, *shape))
    module.train(was_training)
    return counter.get_total_flops()


def tp_global_magnitude(model: nn.Module, example: torch.Tensor, budget: float, *, round_to: int | None = 8,
                        min_keep: float = 0.2, p: int = 2, steps: int = 200) -> tuple[nn.Module, float, int]:
    """Torch-Pruning's global magnitude pruning of ``model`` to a FLOPs ``budget``, on a layer graph discovered
    here (:func:`amc.pruning.global_pruning.global_pruning`, which holds the recipe).

    Returns: (Torch-Pruning's pruned copy, its FLOPs ratio, steps taken).

    Raises:
        ValueError: Torch-Pruning gives no model (the budget is out of reach with ``min_keep``, or the model is
            one it cannot prune; the logged warning says which).
    """
    from amc.cost.analytic import FlopsCost
    from amc.graph.discover import discover

    graph = discover(model, example[:1], round_to=round_to or 1)
    result = global_pruning(model, graph, example, budget=budget, ratio_of=FlopsCost(graph).ratio,
                            min_keep=min_keep, p=p, steps=steps)
    if result is None:
        raise ValueError(f"Torch-Pruning global pruning cannot reach FLOPs budget {budget} with min_keep "
                         f"{min_keep:g} (see the warning); use a larger budget")
    return result.model, result.ratio, result.steps


def tp_pruned(ctx: Context, budget: float, *, min_keep: float, **kwargs):
    """Torch-Pruning's own pruned model at ``budget`` of the context's resource (the headline's: FLOPs), by global
    magnitude or its head recipe for attention models, on the context's graph; ``kwargs`` go to
    :func:`~amc.pruning.global_pruning.global_pruning`.

    Raises:
        ConfigError: Torch-Pruning gives no model here (one line; the logged warning says why).
    """
    result = global_pruning(ctx.model, ctx.graph, ctx.example(2), budget=budget,
                            ratio_of=ctx.cost_model().ratio, min_keep=min_keep, **kwargs)
    if result is None:
        raise ConfigError(f"Torch-Pruning's row at budget {budget:g}: it gives no pruned model (see the warning); "
                          "use a larger budget or a lower min_keep")
    return result


def finetune_set(ctx: Context, samples: int) -> TensorDataset:
    """The fine-tune recipe's training samples: the same seeded ``samples`` training images for every model."""
    x, y = ctx.data.train.tensors
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:samples]
    return TensorDataset(x[order], y[order])


def deployed_accuracy(ctx: Context, pruned: nn.Module, tune_set: TensorDataset, *, epochs: int, lr: float,
                      seed: int) -> float:
    """Test accuracy of a copy of ``pruned`` after the recipe every benchmark deploys with: ``epochs`` of SGD
    (cosine schedule, the base model's batch size and augmentation) on ``tune_set``."""
    tuned = copy.deepcopy(pruned)
    train(tuned, tune_set, TrainConfig(epochs=epochs, lr=lr, schedule="cosine", batch_size=ctx.config.train.batch_size,
                                       shift=ctx.config.train.shift), seed=seed, progress=False)
    return accuracy(tuned, ctx.data.test)


def _channels(model: nn.Module) -> tuple[int, ...]:
    return tuple(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def run_cell(root: Path, ctx: Context, settings: HeadlineSettings, *, budget: float, row: str, seed: int,
             tune_set: TensorDataset) -> HeadlineCell:
    """One (budget, row, seed) cell: read back when finished, else run and written at once."""
    out = root / f"budget{budget:g}" / row / f"seed{seed}"
    cell_file = out / "cell.json"
    if cell_file.exists():
        data = json.loads(cell_file.read_text())
        data["channels"] = tuple(data.get("channels", ()))
        return HeadlineCell(**data)
    start = time.perf_counter()
    strategy = {label: s for label, s, _ in ROWS}[row]
    deterministic = {label: d for label, _, d in ROWS}[row]
    search_seed = settings.seeds[0] if deterministic else seed  # a deterministic row's policy is found once
    shape = ctx.graph.input_shape
    chosen = ""
    if strategy is None:  # tp-global: Torch-Pruning's own model
        t = time.perf_counter()
        pruned = tp_pruned(ctx, budget, min_keep=settings.min_keep).model
        search_seconds, evaluations, distinct = time.perf_counter() - t, 0, 0
        recalibrate_bn(pruned, ctx.evaluator.bn_batches)  # the adaptive BN every searched policy gets
    else:
        found = searched(settings, ctx, run=root / f"budget{budget:g}" / row / f"seed{search_seed}" / "search",
                         strategy=strategy, budget=budget, seed=search_seed,
                         evaluations=settings.evaluations * (settings.oracle_factor if row == "oracle" else 1))
        search_seconds, evaluations, distinct, chosen = (found.search_seconds, found.evaluations, found.distinct,
                                                         found.chosen)
        pruned = ctx.evaluator.prune(found.policy)  # BN recalibrated on the evaluator's batches
    val, _ = validate(pruned, *ctx.evaluator.val_set)
    test = accuracy(pruned, ctx.data.test)
    flops_ratio = flops(pruned, shape) / flops(ctx.model, shape)
    ms = compare_latency({"base": ctx.model, "pruned": pruned}, shape, batch_size=settings.latency_batch, threads=1,
                         repeats=settings.latency_repeats, min_run_time=settings.latency_run_time)
    tuned = deployed_accuracy(ctx, pruned, tune_set, epochs=settings.finetune_epochs, lr=settings.finetune_lr,
                              seed=seed)
    cell = HeadlineCell(budget=budget, row=row, seed=seed, val_accuracy=val, test_accuracy=test,
                        finetuned_test_accuracy=tuned, flops_ratio=flops_ratio,
                        latency_ratio=ms["pruned"] / ms["base"], search_seconds=search_seconds,
                        evaluations=evaluations, distinct=distinct, seconds=time.perf_counter() - start,
                        channels=_channels(pruned), chosen=chosen)
    write_cell(cell_file, cell)
    return cell


def headline_context(settings: HeadlineSettings, *, data_dir: str | None = None):
    """The benchmark's context config, its candidate score set to the settings' (the base model is the same)."""
    config = fashion_resnet20(data_dir=data_dir, round_to=settings.round_to)
    return dataclasses.replace(config, eval=dataclasses.replace(config.eval, score=settings.score))


def plan(settings: HeadlineSettings) -> list[tuple[float, str, int]]:
    """The cells of a run, in order: (budget, row, seed); deterministic rows run for the first seed only
    (every seed with ``finetune_every_seed``: the seed is then the fine-tune's)."""
    cells = []
    for budget in settings.budgets:
        for row, _, deterministic in ROWS:
            if row not in settings.rows:
                continue
            for seed in settings.seeds[:1] if deterministic and not settings.finetune_every_seed else settings.seeds:
                cells.append((budget, row, seed))
    return cells


def headline(root: Path, settings: HeadlineSettings = HeadlineSettings(), *, data_dir: str | None = None,
             progress: bool = True, on_cell: Callable[[HeadlineCell, bool], None] | None = None,
             context: Context | None = None) -> list[HeadlineCell]:
    """Runs (or reads back) every cell of the benchmark; ``on_cell(cell, cached)`` after each."""
    root.mkdir(parents=True, exist_ok=True)
    ctx = context or build_context(headline_context(settings, data_dir=data_dir), progress=progress)
    tune_set = finetune_set(ctx, settings.finetune_samples)
    todo = plan(settings)
    cells = []
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task("headline", total=len(todo), status="")
        for budget, row, seed in todo:
            bar.update(task, status=f"budget {budget:g} {row} seed {seed}")
            cached = (root / f"budget{budget:g}" / row / f"seed{seed}" / "cell.json").exists()
            cell = run_cell(root, ctx, settings, budget=budget, row=row, seed=seed, tune_set=tune_set)
            cells.append(cell)
            if on_cell is not None:
                on_cell(cell, cached)
            bar.advance(task)
    return cells


def _mean(cells: list[HeadlineCell], field: str) -> float:
    return statistics.mean(getattr(c, field) for c in cells)


def headline_markdown(cells: list[HeadlineCell], settings: HeadlineSettings, *, command: str, machine: str,
                      total_seconds: float) -> str:
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {machine}  ",
        f"resnet20 / fashion-mnist, base model {BASE_EPOCHS} epochs on 55,000 images (cached; not counted), "
        f"round_to {settings.round_to}, min_keep {settings.min_keep:g}. Searches: {settings.evaluations} evaluations "
        f"each (oracle: {settings.oracle_factor * settings.evaluations}, {ORACLE_STRATEGY}, seed "
        f"{settings.seeds[0]}), {settings.workers} Ray workers x 1 thread, candidates scored with `{settings.score}`"
        + (f" then re-ranked by the ladder {', '.join(settings.ladder)}" if settings.ladder else "")
        + f" on the first {VAL_LIMIT:,} of 5,000 validation images (adaptive BN on 8 x 128 training images). Seeds "
        f"{', '.join(map(str, settings.seeds))} are search seeds on the one base model; uniform, tp-global, "
        + ("sensitivity and the oracle find their policy once and are fine-tuned with each seed (the seed-to-seed "
           "spread of a deterministic row is the fine-tune's). " if settings.finetune_every_seed else
           "sensitivity and the oracle are run once (the first three are deterministic). ")
        + (default_row_text(settings) + " " if any(c.row == DEFAULT_ROW for c in cells) else "")
        + "Test: the 10,000 test "
        f"images. Fine-tuning: {settings.finetune_epochs} epoch(s) of SGD (cosine, lr {settings.finetune_lr:g}) on "
        f"{settings.finetune_samples:,} training images, the same for every row. Latency: batch "
        f"{settings.latency_batch}, 1 thread, pruned and base timed interleaved, median of "
        f"{settings.latency_repeats}. Whole benchmark: {total_seconds / 60:.0f} min of cell time.", "",
    ]
    rows = []
    for budget in settings.budgets:
        for row, *_ in ROWS:
            group = [c for c in cells if c.budget == budget and c.row == row]
            if not group:
                continue
            speed = "-" if row == "tp-global" else (
                f"{statistics.mean(c.evals_per_second for c in group):.2f} ({_mean(group, 'distinct'):.0f} of "
                f"{_mean(group, 'evaluations'):.0f})")
            label = row if len(group) > 1 else f"{row} (1 run)"
            rows.append((f"{budget:g}", label, mean_std([c.finetuned_test_accuracy for c in group]),
                         mean_std([c.val_accuracy for c in group]), mean_std([c.test_accuracy for c in group]),
                         mean_std([c.flops_ratio for c in group], scale=1, digits=3),
                         mean_std([c.latency_ratio for c in group], scale=1, digits=3),
                         f"{_mean(group, 'search_seconds'):.0f}", speed))
    lines += markdown_table(("budget", "row", "deployed: test acc % after fine-tune", "val acc %", "test acc %",
                             "FLOPs ratio", "latency ratio", "search s", "evals/s (distinct)"), rows)
    lines.append("")
    for budget in settings.budgets:
        found = default_verdicts(cells, budget)
        if found:
            lines += found + [""]
    for budget in settings.budgets:
        found = deployed_verdicts(cells, budget)
        if found:
            lines += found + [""]
    for budget in settings.budgets:
        found = verdicts(cells, budget)
        if found:
            lines += found + [""]
    return "\n".join(lines)


def headline_report(root: Path, settings: HeadlineSettings, *, threads: int, data_dir: str | None, command: str,
                    markdown: Path, console: Console) -> None:
    """Runs (or reads back) every cell, prints each and the table, writes the ``headline`` section of ``markdown``."""
    torch.set_num_threads(threads)

    def on_cell(cell, cached):
        where = "cached" if cached else f"{cell.seconds / 60:.1f} min"
        console.print(f"budget {cell.budget:g} {cell.row:<11} seed {cell.seed}: val {100 * cell.val_accuracy:.2f} "
                      f"test {100 * cell.test_accuracy:.2f} fine-tuned {100 * cell.finetuned_test_accuracy:.2f} "
                      f"FLOPs {cell.flops_ratio:.3f} latency {cell.latency_ratio:.3f} ({where})")

    start = time.perf_counter()
    cells = headline(root, settings, data_dir=data_dir, on_cell=on_cell)
    console.print(f"wall time of this invocation: {(time.perf_counter() - start) / 60:.1f} min")
    body = headline_markdown(cells, settings, command=command, machine=machine(),
                             total_seconds=sum(c.seconds for c in cells))
    console.print(body)
    update_section(markdown, "headline", body,
                   title="Headline: searched policies vs what users pick instead (resnet20 / fashion-mnist)")


__all__ = ["HeadlineCell", "HeadlineSettings", "ROWS", "flops", "headline", "headline_markdown", "headline_report",
           "plan", "searched", "tp_global_magnitude", "tp_pruned", "verdicts", "deployed_verdicts", "default_verdicts",
           "headline_context", "search_config", "write_cell"]
