"""Where the allocation pays (``scripts/bench.py compare``): one protocol over models, budgets, rows and seeds.

Cells are (model, budget, row, seed). Models: the built-ins on fashion-mnist, each base trained once and
cached (:data:`BASE_EPOCHS`). Budgets: fractions of the FLOPs, plus an optional measured-latency budget
(batch 1, this CPU: the context's ``resource="latency"``). Rows: ``uniform``, ``tp-global`` (Torch-Pruning's
global magnitude pruning; for attention models its head recipe), ``random``, ``default`` (the product with
its defaults: baselines first, deploy rung; :mod:`search.bench.searched`) and ``ddpg`` (on
:data:`DDPG_MODELS`), the searches with the same evaluation count. Every row gets the same fine-tune with
every seed (a baseline's policy is found once); on one budget per model each cell is fine-tuned a second
time, ``long_finetune_factor`` times longer, to show whether the ranking holds.

A cell is the headline benchmark's (:func:`search.bench.headline.run_cell`: search, adaptive BN,
validation, test, FLOPs count, batch-1 latency, fine-tune; written to ``cell.json``), plus what this
benchmark adds (params ratio, the longer fine-tune) in ``compare.json`` beside it:
``<root>/<model>[/latency]/budget<b>/<row>/seed<s>/``. A rerun reads finished cells back; a cell killed
after its headline part only adds the rest; an interrupted search resumes from its ``history.csv``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.bench.compare_summary import (
    BASELINES,
    GAIN_TARGETS,
    HEADERS,
    TARGET_BUDGET,
    heatmap,
    long_lines,
    table_rows,
    verdict_lines,
)
from search.bench.markdown import markdown_table, update_section
from search.bench.verdicts import DEFAULT_ROW

if TYPE_CHECKING:  # imported where used: the benchmark CLI refuses bad arguments before torch loads
    from rich.console import Console
    from torch import nn
    from torch.utils.data import TensorDataset

    from amc.context import Context, ContextConfig
    from search.bench.headline import HeadlineCell, HeadlineSettings

log = logging.getLogger(__name__)

MODELS = ("resnet20", "mobilenetv2", "vit")
# Epochs of each cached base model: the costliest part of a first run, so the cheapest base that is
# well trained, shared with the other benchmarks where one already trains it.
BASE_EPOCHS = {
    "resnet20": 15,  # the headline's base (search.bench.common.BASE_EPOCHS, 94.1% test): the same cached model
    "mobilenetv2": 3,  # 6-7x slower per image than resnet20 (BENCHMARKS, overhead); 3 epochs reached 92.5% (issue 37)
    "vit": 10,  # the ViT benchmark's base (search.bench.vit.BASE_EPOCHS, 86.8% test): the same cached model
}
ROWS = ("uniform", "tp-global", "random", DEFAULT_ROW, "ddpg")
DDPG_MODELS = ("resnet20", "mobilenetv2")


@dataclass(frozen=True)
class CompareSettings:
    """What one comparison holds fixed. Cells are keyed by model, budget, row and seed only: use a new
    ``root`` for other settings."""

    models: tuple[str, ...] = MODELS
    budgets: tuple[float, ...] = (0.15, 0.3, 0.5)
    latency_budget: float | None = None  # measured latency at batch 1 on this CPU; None: no latency cells
    rows: tuple[str, ...] = ROWS
    ddpg_models: tuple[str, ...] = DDPG_MODELS
    seeds: tuple[int, ...] = (0, 1, 2)  # search seeds of the searches, fine-tune seeds of every row
    evaluations: int = 100  # of every search, the default row's included
    workers: int = 2
    min_keep: float = 0.2
    score: str = "reconstruct"  # the product's default candidate score
    finetune_epochs: int = 1
    finetune_samples: int = 10000
    finetune_lr: float = 0.01
    long_finetune_factor: int = 5  # 1: no longer fine-tune
    long_budget: float = TARGET_BUDGET
    latency_repeats: int = 5
    latency_run_time: float = 0.2

    def __post_init__(self) -> None:
        from amc.errors import ConfigError

        unknown = [r for r in self.rows if r not in ROWS]
        if unknown:
            raise ConfigError(f"unknown compare row {unknown[0]!r}: use some of {', '.join(ROWS)}")
        if self.long_finetune_factor > 1 and not any(abs(b - self.long_budget) < 1e-9 for b in self.budgets):
            raise ConfigError(f"--long-budget {self.long_budget:g} is not one of the budgets "
                              f"{','.join(f'{b:g}' for b in self.budgets)}: pick one of them")

    def rows_of(self, model: str) -> tuple[str, ...]:
        return tuple(r for r in self.rows if r != "ddpg" or model in self.ddpg_models)

    def headline(self) -> HeadlineSettings:
        """The headline settings that run this comparison's cells (every row fine-tuned with every seed)."""
        from search.bench.headline import HeadlineSettings

        return HeadlineSettings(seeds=self.seeds, evaluations=self.evaluations, workers=self.workers,
                                min_keep=self.min_keep, finetune_epochs=self.finetune_epochs,
                                finetune_samples=self.finetune_samples, finetune_lr=self.finetune_lr, latency_batch=1,
                                latency_repeats=self.latency_repeats, latency_run_time=self.latency_run_time,
                                score=self.score, rows=self.rows, finetune_every_seed=True,
                                default_evaluations=self.evaluations)


@dataclass(frozen=True)
class CompareCell:
    model: str
    resource: str  # of the budget: flops or latency
    budget: float
    row: str
    seed: int
    params_ratio: float
    long_finetuned_test_accuracy: float | None  # after the longer fine-tune (None: not at this budget)
    long_epochs: int
    seconds: float  # the headline cell's and this cell's own
    headline: HeadlineCell


def read_cell(path: Path) -> CompareCell:
    from search.bench.headline import HeadlineCell

    data = json.loads(path.read_text())
    head = data.pop("headline")
    return CompareCell(**data, headline=HeadlineCell(**{**head, "channels": tuple(head.get("channels", ()))}))


def model_config(model: str, *, settings: CompareSettings, data_dir: str | None = None,
                 resource: str = "flops") -> ContextConfig:
    """The context of ``model`` on fashion-mnist (its base trained :data:`BASE_EPOCHS` epochs, cached)."""
    from amc.cost.latency import LatencyConfig
    from amc.errors import ConfigError
    from amc.train import TrainConfig
    from search.bench.common import fashion_resnet20
    from search.bench.vit import fashion_vit

    if model not in BASE_EPOCHS:
        raise ConfigError(f"unknown compare model {model!r}: use some of {', '.join(BASE_EPOCHS)}")
    if model == "vit":
        config = fashion_vit(data_dir=data_dir, epochs=BASE_EPOCHS[model])
    else:
        config = fashion_resnet20(data_dir=data_dir)
        if model != "resnet20":
            config = dataclasses.replace(config, model=model, train=TrainConfig(epochs=BASE_EPOCHS[model]))
    config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, score=settings.score))
    if resource == "latency":
        config = dataclasses.replace(config, resource="latency", latency=LatencyConfig(batch_size=1, threads=1))
    return config


def _folder(root: Path, model: str, resource: str) -> Path:
    return root / model if resource == "flops" else root / model / resource


def _cell_dir(root: Path, model: str, resource: str, budget: float, row: str, seed: int) -> Path:
    return _folder(root, model, resource) / f"budget{budget:g}" / row / f"seed{seed}"


def plan(settings: CompareSettings) -> list[tuple[str, str, float, str, int]]:
    """The cells, in order: (model, resource, budget, row, seed); per budget every row for one seed before the
    next seed, so an interrupted run already compares every row."""
    resources = [("flops", b) for b in settings.budgets]
    if settings.latency_budget is not None:
        resources.append(("latency", settings.latency_budget))
    return [(model, resource, budget, row, seed) for model in settings.models for resource, budget in resources
            for seed in settings.seeds for row in settings.rows_of(model)]


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def pruned_model(folder: Path, ctx: Context, settings: HeadlineSettings, *, budget: float, row: str,
                 seed: int) -> nn.Module:
    """The pruned model of a finished headline cell, rebuilt from what it left: its search's ``policy.json``
    (a deterministic row's is the first seed's), or Torch-Pruning's model again (deterministic)."""
    from amc.evaluation.evaluator import recalibrate_bn
    from amc.pruning.policy import Policy
    from search.bench.headline import ROWS as HEADLINE_ROWS
    from search.bench.headline import tp_pruned

    strategy, deterministic = {label: (s, d) for label, s, d in HEADLINE_ROWS}[row]
    if strategy is None:
        pruned = tp_pruned(ctx, budget, min_keep=settings.min_keep).model
        recalibrate_bn(pruned, ctx.evaluator.bn_batches)
        return pruned
    search_seed = settings.seeds[0] if deterministic else seed
    return ctx.evaluator.prune(Policy.load(folder / f"budget{budget:g}" / row / f"seed{search_seed}" / "search"
                                           / "policy.json"))


def run_cell(root: Path, ctx: Context, settings: CompareSettings, *, model: str, resource: str, budget: float,
             row: str, seed: int, tune_set: TensorDataset) -> CompareCell:
    """One cell: read back when finished, else the headline's cell (run or read back) and this benchmark's
    additions, written at once."""
    from search.bench.headline import deployed_accuracy
    from search.bench.headline import run_cell as headline_cell
    from search.bench.searched import write_cell

    cell_file = _cell_dir(root, model, resource, budget, row, seed) / "compare.json"
    if cell_file.exists():
        return read_cell(cell_file)
    folder, head = _folder(root, model, resource), settings.headline()
    cell = headline_cell(folder, ctx, head, budget=budget, row=row, seed=seed, tune_set=tune_set)
    start = time.perf_counter()
    pruned = pruned_model(folder, ctx, head, budget=budget, row=row, seed=seed)
    long_epochs = settings.finetune_epochs * settings.long_finetune_factor
    long = None
    if resource == "flops" and settings.long_finetune_factor > 1 and abs(budget - settings.long_budget) < 1e-9:
        long = deployed_accuracy(ctx, pruned, tune_set, epochs=long_epochs, lr=settings.finetune_lr, seed=seed)
    result = CompareCell(model=model, resource=resource, budget=budget, row=row, seed=seed,
                         params_ratio=_params(pruned) / _params(ctx.model), long_finetuned_test_accuracy=long,
                         long_epochs=long_epochs, seconds=cell.seconds + time.perf_counter() - start, headline=cell)
    write_cell(cell_file, result)
    return result


ContextOf = Callable[[str, str], "Context"]  # (model, resource) -> its built context


@dataclass(frozen=True)
class CompareRun:
    cells: list[CompareCell]
    base_accuracy: dict[str, float]  # test accuracy of each model's base, as recorded when it was first built
    skipped: dict[str, str]  # "model resource" -> why its cells were not run (e.g. no latency table)


def _batches(settings: CompareSettings) -> Iterator[tuple[str, str, list[tuple[float, str, int]]]]:
    """The plan grouped by (model, resource): one context each."""
    current, todo = None, []
    for model, resource, budget, row, seed in plan(settings):
        if (model, resource) != current:
            if current is not None:
                yield *current, todo
            current, todo = (model, resource), []
        todo.append((budget, row, seed))
    if current is not None:
        yield *current, todo


def compare(root: Path, settings: CompareSettings, *, context_of: ContextOf, progress: bool = True,
            on_cell: Callable[[CompareCell, bool], None] | None = None) -> CompareRun:
    """Runs (or reads back) every cell; a model's context is built only where one of its cells is missing."""
    from amc.errors import ConfigError
    from amc.evaluation.metrics import accuracy
    from amc.progress import progress_bar
    from search.bench.headline import finetune_set

    root.mkdir(parents=True, exist_ok=True)
    cells, skipped, base = [], {}, {}
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task("compare", total=len(plan(settings)), status="")
        for model, resource, todo in _batches(settings):
            base_file = root / model / "base.json"
            ctx = tune_set = None
            for budget, row, seed in todo:
                bar.update(task, status=f"{model} {resource} {budget:g} {row} seed {seed}")
                done = (_cell_dir(root, model, resource, budget, row, seed) / "compare.json").exists()
                if not done and ctx is None:
                    try:
                        ctx = context_of(model, resource)
                    except ConfigError as exc:  # e.g. a latency table this model's layers cannot have
                        if resource == "flops":
                            raise
                        skipped[f"{model} {resource}"] = str(exc)
                        log.warning("compare: no %s cells for %s: %s", resource, model, exc)
                        break
                    tune_set = finetune_set(ctx, settings.finetune_samples)
                    if not base_file.exists():
                        base_file.parent.mkdir(parents=True, exist_ok=True)
                        base_file.write_text(json.dumps({"test_accuracy": accuracy(ctx.model, ctx.data.test)}) + "\n")
                cell = run_cell(root, ctx, settings, model=model, resource=resource, budget=budget, row=row,
                                seed=seed, tune_set=tune_set)
                cells.append(cell)
                if on_cell is not None:
                    on_cell(cell, done)
                bar.advance(task)
            if base_file.exists():
                base[model] = json.loads(base_file.read_text())["test_accuracy"]
    return CompareRun(cells, base, skipped)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def protocol_text(settings: CompareSettings, run: CompareRun, *, command: str, machine: str) -> list[str]:
    """The section's first lines: command, machine and the protocol in words."""
    from search.bench.common import VAL_LIMIT
    from search.bench.searched import default_row_text

    bases = ", ".join(f"{m} {BASE_EPOCHS.get(m, '?')} epochs ({100 * a:.2f}% test)"
                      for m, a in run.base_accuracy.items())
    latency = (f", and measured latency {settings.latency_budget:g} (batch 1, 1 thread, this CPU; the searches "
               "and uniform meet it on the latency table; tp-global's global magnitude ranking stops at that "
               "fraction of the table's latency)" if settings.latency_budget is not None else "")
    long_epochs = settings.finetune_epochs * settings.long_finetune_factor
    searches = ", ".join(r + (f" (on {', '.join(settings.ddpg_models)})" if r == "ddpg" else "")
                         for r in settings.rows if r not in BASELINES)
    return [
        f"Command: `{command}`  ", f"Machine: {machine}  ",
        f"Models on fashion-mnist, base models trained once on 55,000 images and cached (not counted): {bases}. "
        f"Budgets: {', '.join(f'{b:g}' for b in settings.budgets)} of the FLOPs{latency}. Rows: uniform and "
        "tp-global (Torch-Pruning's global magnitude pruning; for the ViT its head recipe) are the baselines, their "
        f"policy found once; {searches} are searches of "
        f"{settings.evaluations} evaluations each, one per search seed, candidates scored with `{settings.score}` "
        f"on the first {VAL_LIMIT:,} validation images, min_keep {settings.min_keep:g}. "
        + default_row_text(settings.headline()) + f" Seeds {', '.join(map(str, settings.seeds))}: the search seed "
        "of a search and the fine-tune seed of every row. Fine-tune, the same for every row: "
        f"{settings.finetune_epochs} epoch(s) of SGD, cosine schedule from lr {settings.finetune_lr:g}, on the same "
        f"{settings.finetune_samples:,} training images; at budget {settings.long_budget:g} every cell is also "
        f"fine-tuned {long_epochs} epochs (x{settings.long_finetune_factor}). Test: the 10,000 test images. Latency "
        "ratio: pruned and base timed interleaved at batch 1, 1 thread. The gain column: mean over seeds of the "
        "search minus the best baseline's (the baseline with the higher mean), with Welch's 95% t-interval; the "
        "search *paid* where the whole interval is above 0. Whole benchmark: "
        f"{_duration(sum(c.seconds for c in run.cells))} of cell time ({len(run.cells)} cells).", ""]


def compare_markdown(settings: CompareSettings, run: CompareRun, *, command: str, machine: str, plot: str) -> str:
    lines = protocol_text(settings, run, command=command, machine=machine)
    lines += markdown_table(HEADERS, table_rows(run.cells)) + ["", f"![search minus best baseline]({plot})", ""]
    lines += ["Where the search paid (default row, after the fine-tune):", "", *verdict_lines(run.cells)]
    lines.append(f"Targets (issue 37): the default row never more than 0.1 points below the better baseline; at "
                 f"budget {TARGET_BUDGET:g} at least " + ", ".join(f"+{g:g} on {m}" for m, g in GAIN_TARGETS.items())
                 + f" ({', '.join(BASELINES)}).")
    lines += ["", *long_lines(run.cells, epochs=settings.finetune_epochs,
                              long_epochs=settings.finetune_epochs * settings.long_finetune_factor)]
    lines += [f"- not run: {key}: {why}" for key, why in run.skipped.items()]
    return "\n".join(lines).rstrip("\n") + "\n"


def compare_report(root: Path, settings: CompareSettings, *, threads: int, data_dir: str | None, command: str,
                   markdown: Path, console: Console, context_of: ContextOf | None = None) -> CompareRun:
    """Runs (or reads back) every cell, prints each, writes the heat map and the ``compare`` section of ``markdown``."""
    import torch

    from amc.context import build_context
    from search.bench.common import machine

    torch.set_num_threads(threads)

    def build(model: str, resource: str) -> Context:
        return build_context(model_config(model, settings=settings, data_dir=data_dir, resource=resource))

    def on_cell(cell: CompareCell, cached: bool) -> None:
        h = cell.headline
        console.print(f"{cell.model} {cell.resource} {cell.budget:g} {cell.row:<9} seed {cell.seed}: test "
                      f"{100 * h.test_accuracy:.2f} fine-tuned {100 * h.finetuned_test_accuracy:.2f} FLOPs "
                      f"{h.flops_ratio:.3f} params {cell.params_ratio:.3f} latency {h.latency_ratio:.3f} "
                      f"({'cached' if cached else f'{cell.seconds / 60:.1f} min'})")

    run = compare(root, settings, context_of=context_of or build, on_cell=on_cell)
    plot = heatmap(run.cells, markdown.parent / "docs" / "compare.png")
    body = compare_markdown(settings, run, command=command, machine=machine(),
                            plot=str(plot.relative_to(markdown.parent)))
    console.print(body)
    update_section(markdown, "compare", body, title="Where the allocation pays: models x budgets, searches vs "
                                                    "baselines after the same fine-tune (fashion-mnist)")
    return run


def settings_of(**options: Any) -> CompareSettings:
    """Settings from the command line's values (None: the default)."""
    return CompareSettings(**{k: v for k, v in options.items() if v is not None})


__all__ = ["BASE_EPOCHS", "DDPG_MODELS", "MODELS", "ROWS", "CompareCell", "CompareRun", "CompareSettings", "compare",
           "compare_markdown", "compare_report", "model_config", "plan", "pruned_model", "read_cell", "run_cell",
           "settings_of"]
