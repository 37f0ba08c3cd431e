"""Evaluation overhead (``scripts/bench.py overhead``): one evaluation against the passes it contains.

The floor of an evaluation is its forward (and, for ``finetune:K``, backward) passes: adaptive BN's
training batches, the score's own passes (:meth:`~amc.evaluation.scores.Score.passes`: ``reconstruct``'s
calibration images and second recalibration, ``finetune:K``'s K training steps) and the validation
subset; everything else (copying, tracing, the criterion's statistics, the refits' least squares) is
overhead. Each row is measured on both paths of the evaluator, interleaved policy by policy in one run:
``before`` (``EvalConfig(reuse_base=False)``: every candidate redoes the base-model work) and ``after``
(the default: done once per evaluator). The floor is timed on the same pruned model.

The base models are seeded, untrained ones (timing does not depend on the weights; training resnet20 on
fashion-mnist takes 30-40 min on the 2-core machine and mobilenetv2 longer). mobilenetv2 is 6-7x
slower per image than resnet20 on 1x28x28 inputs, so it runs on smaller sets (:data:`SMALLER`): its
floor is then a smaller share of the evaluation, which makes its overhead look larger, not smaller.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from amc.errors import ConfigError
from search.bench.markdown import ResultTable, update_section

if TYPE_CHECKING:  # torch is imported where used: the command line checks its options before torch loads
    from torch import nn

log = logging.getLogger(__name__)

PATHS = ("before", "after")  # EvalConfig(reuse_base=False) / (reuse_base=True)
MODELS = ("resnet20", "mobilenetv2")
CRITERIA = ("taylor", "apoz", "obd")
SMALLER = {"mobilenetv2": {"val_limit": 250, "bn_batches": 2, "policies": 2}}  # else the config's, 8 BN batches


@dataclass(frozen=True)
class OverheadConfig:
    """What ``bench overhead`` measures.

    Attributes:
        policies: Random policies (keep ratios 0.3-1.0) timed per row and path.
        finetune_steps: ``K`` of the ``finetune:K`` row.
        models: Base models (untrained: timing only).
        dataset: The data set they see (fashion-mnist; digits for a quick check).
        paths: ``before``, ``after`` or both (interleaved).
        search_evaluations: Evaluations of each 2-worker search (``bn`` and ``reconstruct``); 0 skips them.
        val_limit: Validation samples per evaluation (the benchmark context's 1,000).
        bn_batches: Adaptive BN batches of 128 (mobilenetv2: :data:`SMALLER`'s, when fewer).
        threads: Torch threads of the single-process timings.
        seed: Seeds the policies, the models and the evaluators.
        data_dir: The fashion-mnist IDX directory (None: the default).
    """

    policies: int = 5
    finetune_steps: int = 20
    models: tuple[str, ...] = MODELS
    paths: tuple[str, ...] = PATHS
    search_evaluations: int = 16
    val_limit: int = 1000
    bn_batches: int = 8
    dataset: str = "fashion-mnist"
    threads: int = 1
    seed: int = 0
    data_dir: str | None = None

    def __post_init__(self) -> None:
        if self.policies < 1 or self.finetune_steps < 1 or self.search_evaluations < 0:
            raise ConfigError("--policies and --finetune-steps must be >= 1 and --search-evaluations >= 0")
        if self.val_limit < 1 or self.bn_batches < 1:
            raise ConfigError(f"--val-limit and --bn-batches must be >= 1, got {self.val_limit} and {self.bn_batches}")
        for path in self.paths:
            if path not in PATHS:
                raise ConfigError(f"unknown path {path!r}: use some of {', '.join(PATHS)}")
        for model in self.models:
            if model not in MODELS:
                raise ConfigError(f"unknown model {model!r}: use some of {', '.join(MODELS)}")

    @property
    def rows(self) -> tuple[tuple[str, str], ...]:
        """(score, criterion) of each row: every score with l1, every data-driven criterion with bn."""
        return (("bn", "l1"), ("reconstruct", "l1"), (f"finetune:{self.finetune_steps}", "l1"),
                *(("bn", c) for c in CRITERIA))


@dataclass(frozen=True)
class OverheadRow:
    """Median times of one (setup, score, criterion, path)."""

    setup: str
    score: str
    criterion: str
    path: str
    evaluate_ms: float
    floor_ms: float

    @property
    def overhead(self) -> float:
        """Share of an evaluation that is neither forward nor backward passes."""
        return 1.0 - self.floor_ms / self.evaluate_ms


@dataclass(frozen=True)
class SearchRow:
    """Evaluations per second of a 2-worker random search."""

    setup: str
    score: str
    path: str
    evaluations: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.evaluations / self.seconds


def _sizes(model_name: str, config: OverheadConfig) -> dict:
    """Validation samples, BN batches and policies of a model's rows."""
    sizes = {"val_limit": config.val_limit, "bn_batches": config.bn_batches, "policies": config.policies}
    return {k: min(v, SMALLER.get(model_name, {}).get(k, v)) for k, v in sizes.items()}


def _val_size(config: OverheadConfig) -> int | None:
    """The validation split carved from fashion-mnist's training set (others: their default split)."""
    return 5000 if config.dataset == "fashion-mnist" else None


def _eval_config(score: str, criterion: str, path: str, config: OverheadConfig, model_name: str, *,
                 cache: bool = False):
    from amc.evaluation.evaluator import EvalConfig

    sizes = _sizes(model_name, config)
    return EvalConfig(score=score, criterion=criterion, seed=config.seed, val_limit=sizes["val_limit"],
                      bn_batches=sizes["bn_batches"], cache=cache, reuse_base=path == "after")


def _base(model_name: str, data, seed: int) -> nn.Module:
    import torch

    from amc.models import build_model

    torch.manual_seed(seed)
    return build_model(model_name, in_channels=data.input_shape[0], num_classes=data.num_classes,
                       input_size=data.input_shape[1:]).eval()


def time_rows(model_name: str, model: nn.Module, graph, data, setup: str,
              config: OverheadConfig) -> list[OverheadRow]:
    """Every row of :attr:`OverheadConfig.rows` on one base model, all rows and paths interleaved policy by
    policy (a slow spell of the shared machine then hits every row alike)."""
    from amc.evaluation.evaluator import PolicyEvaluator

    rng = random.Random(config.seed)
    policies = [[rng.uniform(0.3, 1.0) for _ in graph.layers] for _ in range(_sizes(model_name, config)["policies"])]
    evaluators = {(row, p): PolicyEvaluator(model, graph, data, _eval_config(*row, p, config, model_name))
                  for row in config.rows for p in config.paths}
    for evaluator in evaluators.values():
        evaluator.evaluate(policies[0])  # warm-up: the "after" path's once-per-evaluator work happens here
    times: dict[tuple, list[float]] = {key: [] for key in evaluators}
    floors: dict[tuple, list[float]] = {row: [] for row in config.rows}
    for i, keep in enumerate(policies):
        paths = list(config.paths) if i % 2 == 0 else list(reversed(config.paths))  # cancel drift
        for row in config.rows:
            for path in paths:
                start = time.perf_counter()
                evaluators[row, path].evaluate(keep)
                times[row, path].append(time.perf_counter() - start)
            evaluator = evaluators[row, config.paths[-1]]
            pruned = evaluator._pruned(evaluator._ratios(keep), {})
            start = time.perf_counter()
            evaluator.forward_passes(pruned)
            floors[row].append(time.perf_counter() - start)
        log.info("%s: policy %d of %d timed", setup, i + 1, len(policies))
    return [OverheadRow(setup, *row, path, 1e3 * statistics.median(times[row, path]),
                        1e3 * statistics.median(floors[row])) for row in config.rows for path in config.paths]


def search_rows(model_name: str, model: nn.Module, graph, setup: str, root: Path,
                config: OverheadConfig) -> list[SearchRow]:
    """Evaluations per second of a 2-worker random search (Ray) with ``bn`` and ``reconstruct``, per path."""
    import shutil

    from amc.context import ContextConfig, build_context
    from search.config import SearchConfig
    from search.history import read_history
    from search.parallel import RayEvaluatorPool
    from search.runner import run_search

    state = {k: v.clone() for k, v in model.state_dict().items()}
    rows = []
    for score in ("bn", "reconstruct"):
        for path in config.paths:
            context = ContextConfig(model=model_name, dataset=config.dataset, data_dir=config.data_dir,
                                    seed=config.seed, val_size=_val_size(config),
                                    eval=_eval_config(score, "l1", path, config, model_name, cache=True))
            ctx = build_context(context, progress=False, state_dict=state, graph=graph)
            out = root / f"{model_name}-{score}-{path}"
            shutil.rmtree(out, ignore_errors=True)
            with RayEvaluatorPool(context, workers=2, threads_per_worker=1, state_dict=state, graph=graph) as pool:
                run_search(SearchConfig(budget=0.5, strategy="random", evaluations=config.search_evaluations,
                                        out=str(out), progress=False, export=False, context=context),
                           context=ctx, evaluator=pool, batch_size=2)
            records = read_history(out / "history.csv")
            rows.append(SearchRow(setup, score, path, len(records), records[-1].wall_time))
            log.info("%s", rows[-1])
    return rows


def overhead(config: OverheadConfig, root: Path) -> tuple[list[OverheadRow], list[SearchRow]]:
    """Times every row on every model of ``config``; the 2-worker searches on the first model."""
    import torch

    from amc.data.datasets import load_dataset
    from amc.graph.discover import discover

    torch.set_num_threads(config.threads)
    data = load_dataset(config.dataset, root=config.data_dir, seed=config.seed,
                        val_size=_val_size(config))
    rows: list[OverheadRow] = []
    searches: list[SearchRow] = []
    for i, name in enumerate(config.models):
        model = _base(name, data, config.seed)
        graph = discover(model, data.val.tensors[0][:1])
        sizes = _sizes(name, config)
        setup = f"{name}/{config.dataset} (val {sizes['val_limit']}, BN {sizes['bn_batches']}x128)"
        rows += time_rows(name, model, graph, data, setup, config)
        if i == 0 and config.search_evaluations:
            searches += search_rows(name, model, graph, setup, root, config)
            torch.set_num_threads(config.threads)
    return rows, searches


def _reference(rows: list[OverheadRow], row: OverheadRow) -> OverheadRow | None:
    """The ``bn`` / l1 row of ``row``'s setup and path: what the other rows are compared with."""
    return next((r for r in rows if (r.setup, r.path, r.score, r.criterion) == (row.setup, row.path, "bn", "l1")), None)


def _ratios(rows: list[OverheadRow], row: OverheadRow) -> tuple[str, str]:
    """(evaluation, floor) of ``row`` as multiples of its ``bn`` / l1 row's: the floor's multiple is the least
    the evaluation's can be, with no overhead at all."""
    ref = _reference(rows, row)
    if ref is None:
        return "-", "-"
    suffix = "" if row.criterion == "l1" else " (of l1)"
    return f"{row.evaluate_ms / ref.evaluate_ms:.2f}x{suffix}", f"{row.floor_ms / ref.floor_ms:.2f}x"


def overhead_report(config: OverheadConfig, *, root: Path, command: str, markdown: Path, console: Console) -> None:
    """Runs :func:`overhead`, prints its tables and writes the ``overhead`` section of ``markdown``."""
    from search.bench.common import machine

    rows, searches = overhead(config, root)
    cells = tuple((r.setup, r.score, r.criterion, r.path, f"{r.evaluate_ms:.0f}", f"{r.floor_ms:.0f}",
                   f"{100 * r.overhead:.1f}%", *_ratios(rows, r)) for r in rows)
    table = ResultTable("one evaluation vs the passes it contains (median of the policies)",
                        ("setup", "score", "criterion", "path", "evaluation ms", "floor ms", "neither",
                         "vs bn / l1", "floor vs bn / l1"), cells)
    console.print(table.rich())
    lines = [f"Command: `{command}`  ",
             f"Machine: {machine()}; the whole machine was shared with other jobs, so compare rows of the same "
             "setup only (both paths ran interleaved, policy by policy).  ",
             f"Median of {config.policies} random policies (keep 0.3-1.0; mobilenetv2: "
             f"{SMALLER['mobilenetv2']['policies']}) after one warm-up evaluation; seeded, untrained base models on "
             f"{config.dataset} (timing does not depend on the weights; mobilenetv2, 6-7x slower per image, "
             "on the smaller sets its setup names). 'floor' = the "
             "passes of the evaluation alone on the same pruned model (BN recalibration, the score's passes: "
             "reconstruct's 60 calibration images and second recalibration, finetune's forward+backward steps; "
             "validation); 'neither' = the rest: copying, tracing, the criterion's statistics, least squares. "
             "'before' = `EvalConfig(reuse_base=False)`: statistics, dependency graph and base outputs redone "
             "per candidate, one forward per refitted layer; 'after' = the default. 'vs bn / l1' = the "
             "evaluation's time over the bn / l1 row's on the same path; 'floor vs bn / l1' = the same for the "
             "floors: the least that multiple can be (reconstruct's floor holds a second BN recalibration).", "",
             *table.markdown()]
    if searches:
        search_table = ResultTable("2-worker random search (Ray), evaluations per second",
                                   ("setup", "score", "path", "evaluations", "seconds", "evals/s"),
                                   tuple((s.setup, s.score, s.path, str(s.evaluations), f"{s.seconds:.1f}",
                                          f"{s.per_second:.2f}") for s in searches))
        console.print(search_table.rich())
        lines += ["", f"2-worker random search (budget 0.5 FLOPs, {config.search_evaluations} evaluations, 1 thread "
                  "per worker, pool started before timing; the first evaluation on each worker includes its "
                  "once-per-worker work):", "", *search_table.markdown()]
    update_section(markdown, "overhead", "\n".join(lines) + "\n", title="Evaluation overhead")
