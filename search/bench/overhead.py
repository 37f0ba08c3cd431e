"""Evaluation overhead (``scripts/bench.py overhead``): ``evaluate(policy)`` against the forward passes it contains."""

from __future__ import annotations

import logging
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from amc.data.datasets import DataSplits, load_dataset
from amc.errors import DataError
from amc.evaluation.evaluator import EvalConfig, PolicyEvaluator
from amc.graph.discover import discover
from amc.models import build_model
from amc.train import load_or_train
from search.bench.markdown import ResultTable, update_section

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OverheadRow:
    setup: str
    val_samples: int
    evaluate_ms: float
    forward_ms: float

    @property
    def overhead(self) -> float:
        """Share of an evaluation that is not forward passes (copy, pruning, bookkeeping)."""
        return 1.0 - self.forward_ms / self.evaluate_ms


def _setups(fashion_dir: str | None) -> list[tuple[str, str, DataSplits | None, str]]:
    setups = [("cnn/digits", "cnn", load_dataset("digits"), "")]
    try:
        data = load_dataset("fashion-mnist", root=fashion_dir, val_size=2000, train_limit=2000)
        setups.append(("resnet20/fashion-mnist", "resnet20", data, ""))
    except DataError as exc:
        setups.append(("resnet20/fashion-mnist", "resnet20", None, str(exc)))
    return setups


def overhead(*, policies: int = 10, seed: int = 0, fashion_dir: str | None = None) -> list[OverheadRow | str]:
    """Mean time of ``evaluate(policy)`` against the bare forward passes it contains, per setup.

    resnet20 uses an untrained model (timing does not depend on the weights) on a 2,000-image
    validation subset; cnn uses the cached trained base model on the digits validation split.
    """
    rows: list[OverheadRow | str] = []
    rng = random.Random(seed)
    for label, model_name, data, skip in _setups(fashion_dir):
        if data is None:
            rows.append(f"{label}: skipped ({skip})")
            continue
        if model_name == "cnn":
            model, _ = load_or_train(model_name, data, seed=seed, progress=False)
        else:
            torch.manual_seed(seed)
            model = build_model(model_name, in_channels=data.input_shape[0], num_classes=data.num_classes).eval()
        graph = discover(model, data.val.tensors[0][:1])
        evaluator = PolicyEvaluator(model, graph, data, EvalConfig(cache=False, seed=seed))
        evaluator.evaluate([1.0] * len(graph))  # warm-up
        eval_times, forward_times = [], []
        for _ in range(policies):
            keep = [rng.uniform(0.3, 1.0) for _ in graph.layers]
            start = time.perf_counter()
            evaluator.evaluate(keep)
            eval_times.append(time.perf_counter() - start)
            pruned = evaluator.prune(keep)
            start = time.perf_counter()
            evaluator.forward_passes(pruned)
            forward_times.append(time.perf_counter() - start)
        rows.append(OverheadRow(label, evaluator.val_size, 1e3 * statistics.mean(eval_times),
                                1e3 * statistics.mean(forward_times)))
    return rows


def overhead_report(*, policies: int, seed: int, data_dir: str | None, markdown: Path, console: Console) -> None:
    """Runs :func:`overhead`, prints its table and writes the ``overhead`` section of ``markdown``."""
    rows, notes = [], []
    for row in overhead(policies=policies, seed=seed, fashion_dir=data_dir):
        if isinstance(row, OverheadRow):
            rows.append((row.setup, str(row.val_samples), f"{row.evaluate_ms:.1f}", f"{row.forward_ms:.1f}",
                         f"{100 * row.overhead:.1f}%"))
        else:
            console.print(row)
            notes.append(f"\n{row}\n")
    table = ResultTable("evaluate(policy) vs the forward passes it contains (BN recalibration + validation)",
                        ("setup", "val samples", "evaluate ms", "forward ms", "not forward"), tuple(rows))
    console.print(table.rich())
    lines = [f"Command: `python scripts/bench.py overhead --policies {policies}`  ",
             "Mean of random policies (keep 0.3-1.0); 'forward' = BN recalibration (8 x 128 train images) + "
             "validation passes of the same pruned model; the rest is copying, pruning and bookkeeping.", "",
             *table.markdown(), *notes]
    update_section(markdown, "overhead", "\n".join(lines) + "\n", title="Evaluation overhead")
