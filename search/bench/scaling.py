"""Scaling benchmark (``scripts/bench.py scaling``): evaluations per second, local vs Ray workers.

Same seed, same policies (random search) and evaluation count in every mode; the context (data, base
model) and the Ray pool are built before the clock starts, so the numbers are the search loop's.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from amc.context import ContextConfig, build_context
from amc.errors import DataError
from amc.train import TrainConfig
from search.bench.markdown import ResultTable, update_section
from search.config import SearchConfig
from search.history import read_history
from search.parallel import RayEvaluatorPool
from search.runner import run_search


@dataclass(frozen=True)
class ScalingRow:
    mode: str
    evaluations: int
    seconds: float
    eval_seconds: float  # mean time of one evaluation where it ran (actor or local)

    @property
    def per_second(self) -> float:
        return self.evaluations / self.seconds

    @property
    def overhead_ms(self) -> float:
        """Wall time per evaluation beyond the evaluation itself, per worker slot."""
        return 1e3 * (self.seconds / self.evaluations * self._workers - self.eval_seconds)

    @property
    def _workers(self) -> int:
        return int(self.mode.split(" ")[0]) if self.mode[0].isdigit() else 1


def scaling_context(fashion_dir: str | None, seed: int) -> tuple[str, ContextConfig]:
    """resnet20 on a fashion-mnist subset, or cnn on digits when fashion-mnist is not installed."""
    config = ContextConfig(model="resnet20", dataset="fashion-mnist", data_dir=fashion_dir, seed=seed,
                           val_size=1000, train_limit=2000, train=TrainConfig(epochs=1))
    try:
        build_context(config, progress=False)
        return "resnet20/fashion-mnist (val 1000, base trained 1 epoch: timing only)", config
    except DataError:
        return "cnn/digits (fashion-mnist not installed)", ContextConfig(seed=seed)


def _run(root: Path, name: str, config: ContextConfig, evaluations: int, seed: int, **kwargs) -> tuple[float, float]:
    out = root / name
    if out.exists():
        import shutil

        shutil.rmtree(out)
    run_search(SearchConfig(budget=0.5, strategy="random", evaluations=evaluations, out=str(out), progress=False,
                            export=False, context=config), **kwargs)
    records = read_history(out / "history.csv")
    return records[-1].wall_time, statistics.mean(r.seconds for r in records)


def scaling(root: Path, *, evaluations: int = 32, seed: int = 0, fashion_dir: str | None = None,
            local_threads: int = 2) -> tuple[str, list[ScalingRow]]:
    label, config = scaling_context(fashion_dir, seed)
    ctx = build_context(config, progress=False)
    rows = []
    torch.set_num_threads(local_threads)
    seconds, each = _run(root, "local", config, evaluations, seed, context=ctx)
    rows.append(ScalingRow(f"local (no Ray, {local_threads} threads)", evaluations, seconds, each))
    torch.set_num_threads(1)
    state = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    for workers in (1, 2):
        with RayEvaluatorPool(config, workers=workers, threads_per_worker=1, state_dict=state, graph=ctx.graph) as pool:
            seconds, each = _run(root, f"ray{workers}", config, evaluations, seed, context=ctx, evaluator=pool,
                                 batch_size=workers)
        rows.append(ScalingRow(f"{workers} worker{'s' if workers > 1 else ''} x 1 thread", evaluations, seconds, each))
    return label, rows


def scaling_report(root: Path, *, evaluations: int, data_dir: str | None, markdown: Path, console: Console) -> None:
    """Runs :func:`scaling`, prints its table and writes the ``scaling`` section of ``markdown``."""
    label, rows = scaling(root, evaluations=evaluations, fashion_dir=data_dir)
    one = next(r for r in rows if r.mode.startswith("1 worker"))
    cells = tuple((row.mode, f"{row.per_second:.2f}", f"{row.per_second / one.per_second:.2f}x",
                   f"{row.eval_seconds:.3f}", f"{row.overhead_ms:.1f}" if "worker" in row.mode else "-")
                  for row in rows)
    table = ResultTable(f"evaluations per second: {label}",
                        ("mode", "evals/s", "speedup vs 1 worker", "mean evaluation s", "pool overhead ms/eval"),
                        cells, console_headers=("mode", "evals/s", "vs 1 worker", "eval s", "overhead ms/eval"))
    console.print(table.rich())
    lines = [f"Command: `python scripts/bench.py scaling --evaluations {evaluations}`  ",
             f"Setup: {label}; random search, budget 0.5 FLOPs, seed 0, {evaluations} evaluations per mode; "
             "context and Ray pool built before timing.", "", *table.markdown()]
    update_section(markdown, "scaling", "\n".join(lines) + "\n", title="Parallel evaluation on Ray")
