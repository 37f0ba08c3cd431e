"""A per-unit sparsity search on a language model, through the product's own search machinery (issue 36).

Nothing here is a second search loop's logic: the run is the loop of :mod:`search.runner` on a language-model
context (:func:`amc.lm_context.build_lm_context`). The same :class:`~search.problem.SearchProblem` records every
evaluation in ``history.csv``, the same strategies (``optuna``, ``random``, ``uniform``) propose keep ratios,
the same baselines-first rule and ``--resume`` apply. What differs is injected:

- the graph, cost model and evaluator of the context (:class:`~amc.cost.sparsity_cost.SparsityGraph`,
  :class:`~amc.cost.sparsity_cost.SparsityCost`, :class:`~amc.evaluation.lm_evaluator.SparsityEvaluator`);
- the projection (:class:`~envs.sparsity_projection.SparsityProjector`): every candidate has exactly the
  target average sparsity;
- the baselines: uniform sparsity and OWL's layer ratios (``baseline:owl``), where an image model has
  uniform and Torch-Pruning's global pruning.

:func:`run_lm_search` is what :func:`search.runner.run_search` does up to its outputs, until the runner takes
these three from the context (the hooks are listed in the lead's notes); its outputs are ``config.json``,
``history.csv``, ``study.db`` (Optuna) and ``policy.json`` with the best policy's held-out perplexity.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from amc.errors import ConfigError
from amc.lm_context import LMContext
from amc.pruning.criteria import criterion_names
from amc.pruning.policy import Policy
from amc.seeding import seeded
from envs.sparsity_projection import SparsityProjector
from search import strategies
from search.config import SearchConfig
from search.history import HistoryWriter, Record, read_history
from search.lm_baselines import OWL, lm_baseline_starts
from search.problem import SearchProblem
from search.runner import prepare_out
from search.starts import UNIFORM, own_records, pending, warm_starts

log = logging.getLogger(__name__)
LM_CONFIG_KEY = "lm_context"  # config.json: the language-model settings beside the search's


def lm_projector(ctx: LMContext, budget: float, *, min_keep: float, max_keep: float) -> SparsityProjector:
    """The exact-average projection of ``ctx``'s decisions at ``budget`` (the fraction of prunable weights kept)."""
    return SparsityProjector(ctx.cost_model(), budget, min_keep=min_keep, max_keep=max_keep)


def policy_criterion(ctx: LMContext) -> str:
    """The criterion a policy.json records: the sparsity criterion once :class:`Policy` accepts its name; until
    then ``l1`` (magnitude) and the real one in the policy's meta (``sparsity_criterion``)."""
    name = ctx.config.eval.criterion
    return name if name in criterion_names() else "l1"


def lm_problem(config: SearchConfig, ctx: LMContext, *, history: HistoryWriter | None,
               previous: list[Record] | tuple = ()) -> SearchProblem:
    """The :class:`SearchProblem` of a sparsity search with ``config``'s budget, keep range, strategy, reward."""
    cost = ctx.cost_model()
    return SearchProblem(graph=ctx.graph, cost_model=cost,
                         projector=lm_projector(ctx, config.budget, min_keep=config.min_keep, max_keep=config.max_keep),
                         evaluator=ctx.evaluator, history=history, strategy=config.strategy, reward=config.reward,
                         criterion=policy_criterion(ctx), granularity=cost.granularity, previous=previous,
                         score=ctx.config.eval.score)


@dataclass(frozen=True)
class LMSearchResult:
    """What :func:`run_lm_search` found: the best record, its policy (written to ``policy.json``) and its
    held-out perplexity, and the uniform baseline's when it was evaluated."""

    out: Path
    problem: SearchProblem
    best: Record
    policy: Policy
    perplexity: float
    uniform_perplexity: float | None


def run_lm_search(config: SearchConfig, ctx: LMContext) -> LMSearchResult:
    """Runs one sparsity search on ``ctx`` with ``config``'s strategy, budget and run folder.

    ``config.context`` is not read (the model, data and evaluation are ``ctx``'s); ``config.json`` records
    ``ctx.config`` under ``lm_context`` and a ``--resume`` with other language-model settings is refused.

    Raises:
        ConfigError: As :func:`search.runner.prepare_out`, a resume with other settings, a parallel or
            laddered run (not wired for language models yet).
    """
    if config.parallel or config.ladder or config.select:
        raise ConfigError("a language-model search runs on one process without --ladder or --select for now; "
                          "drop --workers/--ray-address, --ladder and --select")
    out = prepare_out(config)
    lm_settings = json.loads(json.dumps(asdict(ctx.config)))
    saved = out / "config.json"
    if config.resume and saved.exists():
        before = json.loads(saved.read_text()).get(LM_CONFIG_KEY)
        if before != lm_settings:
            raise ConfigError(f"--resume of {str(out)!r} with other language-model settings ({before} then, "
                              f"{lm_settings} now); use the run's original settings or another --out")
    else:
        saved.write_text(json.dumps({**config.to_dict(), LM_CONFIG_KEY: lm_settings}, indent=2) + "\n")
    with seeded(config.search_seed, ctx.config.device, host_generators=True):
        problem = _search(config, ctx, out)
    if problem.best is None:
        raise KeyboardInterrupt("interrupted before the first evaluation finished; nothing to write")
    return write_lm_outputs(config, ctx, out, problem)


def _search(config: SearchConfig, ctx: LMContext, out: Path) -> SearchProblem:
    previous = read_history(out / "history.csv") if config.resume else []
    strategy_class = strategies.get(config.strategy)
    history = HistoryWriter(out / "history.csv")
    problem = lm_problem(config, ctx, history=history, previous=previous)
    try:
        starts = lm_baseline_starts(problem, ctx) if config.baselines and strategy_class.takes_baselines else []
        starts += warm_starts(config.warm_start, problem, top_k=config.warm_start_top_k)
        remaining = max(0, config.evaluations - len(own_records(problem)))
        if strategy_class.single_policy:
            remaining = min(remaining, 1)
        todo = pending(problem, starts)
        log.info("sparsity search %s, %.3f of the prunable weights kept, %d evaluations (%d done before) after %d "
                 "starts (%d to evaluate)", config.strategy, config.budget, config.evaluations,
                 len(own_records(problem)), len(starts), len(todo))
        strategy = strategy_class.from_config(config, out=out, batch_size=strategy_class.batch_size(1), ctx=ctx)
        strategy.evaluate_starts(problem, todo)
        strategy.run(problem, remaining, seed=config.search_seed)
    except KeyboardInterrupt:
        log.warning("interrupted after %d evaluations; writing the best policy so far", problem.count)
    finally:
        history.close()
    return problem


def write_lm_outputs(config: SearchConfig, ctx: LMContext, out: Path, problem: SearchProblem) -> LMSearchResult:
    """Writes ``policy.json`` (the best policy, its held-out perplexity and the uniform baseline's)."""
    best = problem.best
    perplexity = math.exp(best.loss) if ctx.config.eval.score == "ppl" else ctx.evaluator.perplexity(best.keep)
    uniform = next((r for r in problem.records if r.origin == UNIFORM), None)
    uniform_ppl = None
    if uniform is not None:
        uniform_ppl = math.exp(uniform.loss) if ctx.config.eval.score == "ppl" \
            else ctx.evaluator.perplexity(uniform.keep)
    policy = problem.policy(best.keep).with_metrics(
        heldout_perplexity=perplexity, loss=best.loss, score=best.accuracy, cost_ratio=best.cost_ratio,
        average_sparsity=1.0 - best.cost_ratio,
        **({"uniform_heldout_perplexity": uniform_ppl} if uniform_ppl is not None else {}))
    policy = policy.with_meta(strategy=config.strategy, origin=best.origin, score=ctx.config.eval.score,
                              sparsity_criterion=ctx.config.eval.criterion, per=ctx.config.per,
                              model=ctx.config.model, evaluations=problem.count)
    policy.save(out / "policy.json")
    log.info("best %s: held-out perplexity %.3f (uniform %s) at %.4f of the prunable weights", best.origin,
             perplexity, f"{uniform_ppl:.3f}" if uniform_ppl is not None else "not evaluated", best.cost_ratio)
    return LMSearchResult(out=out, problem=problem, best=best, policy=policy, perplexity=perplexity,
                          uniform_perplexity=uniform_ppl)


__all__ = ["LMSearchResult", "OWL", "lm_baseline_starts", "lm_problem", "lm_projector", "policy_criterion",
           "run_lm_search", "write_lm_outputs"]
