"""A per-unit sparsity search on a language model: what differs from an image model's run (issue 36).

The run is :func:`search.runner.run_search` on a language-model context (``config.context`` an
:class:`~amc.lm_context.LMContextConfig`, built by :func:`~amc.lm_context.build_lm_context`): the same
:class:`~search.problem.SearchProblem` records every evaluation in ``history.csv``, the same strategies propose
keep ratios, the same baselines-first rule, Ray workers and ``--resume`` apply. What differs comes from the
context and is chosen by type, not by a second loop:

- the graph, cost model and evaluator (:class:`~amc.cost.sparsity_cost.SparsityGraph`,
  :class:`~amc.cost.sparsity_cost.SparsityCost`, :class:`~amc.evaluation.lm_evaluator.SparsityEvaluator`);
- the projection (:class:`~envs.sparsity_projection.SparsityProjector`): every candidate has exactly the
  target average sparsity;
- the baselines (:mod:`search.lm_baselines`): uniform sparsity and OWL's layer ratios (``baseline:owl``);
- the outputs (:func:`write_lm_outputs`): ``policy.json`` with the best policy's held-out perplexity, beside
  ``config.json``, ``history.csv``, ``run.log`` and ``study.db`` (Optuna).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from amc.lm_context import LMContext
from amc.pruning.policy import Policy
from search.config import SearchConfig
from search.history import Record
from search.lm_baselines import OWL, UNIFORM, lm_baseline_starts
from search.problem import SearchProblem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMSearchResult:
    """What a language model's sparsity search found: the best record, its policy (written to ``policy.json``)
    and its held-out perplexity, and the uniform baseline's when it was evaluated."""

    out: Path
    problem: SearchProblem
    best: Record
    policy: Policy
    perplexity: float
    uniform_perplexity: float | None
    dense_perplexity: float | None = None
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def evaluations(self) -> int:
        return self.problem.count

    def summary(self) -> list:
        """What ``scripts/search.py`` prints: the held-out perplexities, the per-unit keep ratios, the files."""
        from rich.table import Table

        table = Table(title=f"{self.policy.meta['strategy']} sparsity search: {self.out}")
        for name in ("", "held-out perplexity", "weights kept"):
            table.add_column(name, justify="right" if name else "left")
        if self.dense_perplexity is not None:
            table.add_row("dense model", f"{self.dense_perplexity:.3f}", "1.0000")
        table.add_row(f"searched policy ({self.best.origin})", f"{self.perplexity:.3f}", f"{self.best.cost_ratio:.4f}")
        rows = {r.origin: r for r in self.problem.records}
        if self.uniform_perplexity is not None:
            table.add_row("uniform sparsity", f"{self.uniform_perplexity:.3f}", f"{rows[UNIFORM].cost_ratio:.4f}")
        if OWL in rows and self.policy.meta.get("score") == "ppl":  # with kl, OWL's perplexity was not measured
            table.add_row("OWL", f"{math.exp(rows[OWL].loss):.3f}", f"{rows[OWL].cost_ratio:.4f}")
        units = Table(title="per-unit fraction of weights kept")
        units.add_column("unit")
        units.add_column("searched", justify="right")
        for name, keep in zip(self.policy.keep, self.best.keep):
            units.add_row(name, f"{keep:.3f}")
        wrote = (f"wrote {self.out}/policy.json, history.csv in {self.seconds:.1f} s"
                 + (" (interrupted: best so far)" if self.interrupted else ""))
        return [table, units, wrote]


def write_lm_outputs(config: SearchConfig, ctx: LMContext, out: Path, problem: SearchProblem, *,
                     started: float | None = None, interrupted: bool = False) -> LMSearchResult:
    """Writes ``policy.json`` (the best policy, its held-out perplexity and the uniform baseline's)."""
    best = problem.best
    perplexity = math.exp(best.loss) if ctx.config.eval.score == "ppl" else ctx.evaluator.perplexity(best.keep)
    uniform = next((r for r in problem.records if r.origin == UNIFORM), None)
    uniform_ppl = None
    if uniform is not None:
        uniform_ppl = math.exp(uniform.loss) if ctx.config.eval.score == "ppl" \
            else ctx.evaluator.perplexity(uniform.keep)
    dense = ctx.evaluator.perplexity([1.0] * len(ctx.graph))
    policy = problem.policy(best.keep).with_metrics(
        heldout_perplexity=perplexity, dense_heldout_perplexity=dense, loss=best.loss, score=best.accuracy,
        cost_ratio=best.cost_ratio, average_sparsity=1.0 - best.cost_ratio,
        **({"uniform_heldout_perplexity": uniform_ppl} if uniform_ppl is not None else {}))
    policy = policy.with_meta(strategy=config.strategy, origin=best.origin, score=ctx.config.eval.score,
                              sparsity_criterion=ctx.config.eval.criterion, per=ctx.config.per,
                              model=ctx.config.model, evaluations=problem.count)
    policy.save(out / "policy.json")
    log.info("best %s: held-out perplexity %.3f (uniform %s) at %.4f of the prunable weights", best.origin,
             perplexity, f"{uniform_ppl:.3f}" if uniform_ppl is not None else "not evaluated", best.cost_ratio)
    seconds = time.perf_counter() - started if started is not None else 0.0
    return LMSearchResult(out=out, problem=problem, best=best, policy=policy, perplexity=perplexity,
                          uniform_perplexity=uniform_ppl, dense_perplexity=dense, seconds=seconds,
                          interrupted=interrupted)


__all__ = ["LMSearchResult", "OWL", "lm_baseline_starts", "write_lm_outputs"]
