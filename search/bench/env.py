"""Environment speed benchmark (``scripts/bench.py env``): steps per second with a stub evaluator."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from amc.cost.analytic import make_cost_model
from amc.evaluation.evaluator import EvalResult
from amc.graph.discover import discover
from amc.models import build_model
from envs import PruningEnv
from search.bench.markdown import ResultTable, update_section


class StubEvaluator:
    """Answers instantly: isolates the environment's own cost."""

    def evaluate(self, policy) -> EvalResult:
        return EvalResult(accuracy=0.5, loss=1.0, key=(), seconds=0.0, forward_seconds=0.0)

    def evaluate_many(self, policies) -> list[EvalResult]:
        return [self.evaluate(p) for p in policies]


@dataclass(frozen=True)
class EnvSpeed:
    model: str
    granularity: str
    layers: int
    steps: int
    steps_per_second: float


def env_speed(model: str = "resnet56", *, steps: int = 20000, budget: float = 0.5, seed: int = 0,
              granularities: tuple[str, ...] = ("channel", "weight")) -> list[EnvSpeed]:
    """Random actions through :class:`~envs.PruningEnv` (with budget clipping) on ``model`` at 32x32."""
    net = build_model(model, in_channels=3, num_classes=10)
    graph = discover(net, torch.zeros(1, 3, 32, 32))
    rows = []
    for granularity in granularities:
        env = PruningEnv(graph, make_cost_model("flops", graph, granularity=granularity), StubEvaluator(),
                         budget=budget, granularity=granularity)
        actions = np.random.default_rng(seed).uniform(-1, 1, (steps, 1)).astype(np.float32)
        env.reset(seed=seed)
        start = time.perf_counter()
        for action in actions:
            if env.step(action)[2]:
                env.reset()
        rows.append(EnvSpeed(model, granularity, len(graph), steps, steps / (time.perf_counter() - start)))
    return rows


def env_report(*, model: str, steps: int, markdown: Path, console: Console) -> None:
    """Runs :func:`env_speed`, prints its table and writes the ``env`` section of ``markdown``."""
    rows = tuple((row.model, row.granularity, str(row.layers), str(row.steps), f"{row.steps_per_second:,.0f}")
                 for row in env_speed(model, steps=steps))
    table = ResultTable("PruningEnv steps/s with a stub evaluator (budget clipping on)",
                        ("model", "granularity", "layers", "steps", "steps/s"), rows)
    console.print(table.rich())
    lines = [f"Command: `python scripts/bench.py env --model {model} --steps {steps}`  ",
             "Random actions, budget 0.5 FLOPs with AMC clipping on every step, a stub evaluator (instant).", "",
             *table.markdown()]
    update_section(markdown, "env", "\n".join(lines) + "\n", title="Environment speed")
