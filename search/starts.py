"""What every search evaluates before its own proposals: the baselines and the warm starts.

- **Baselines** (``--baselines``, on by default): the uniform policy (the same keep ratio everywhere, the
  largest within the budget) and Torch-Pruning's global magnitude pruning at the same budget
  (:mod:`search.strategies.tp_global`). They are what a user would pick instead of a search; evaluating
  them as candidates, through the same evaluator, means a search can only return something its score
  ranks at least as high, and the deploy rung (:mod:`search.selection`) compares them after the same
  fine-tune.
- **Warm starts** (``--warm-start PATH ...``): ``policy.json`` files or run folders of earlier searches on
  the same model (checked by fingerprint). A run folder gives its best ``--warm-start-top-k`` distinct
  policies. A policy found at another budget or for another resource is mapped onto this budget: its keep
  ratios are scaled by the largest factor that keeps it within the budget (so it uses the budget, as a
  random sample does), then the environment's projection makes it exactly feasible.

Each start is recorded with its ``origin`` (``baseline:uniform``, ``baseline:tp-global``, ``warm:<source>``);
a resumed run evaluates only the starts it has no row for. The strategies learn from them as they learn
from their own evaluations: Optuna adds them to its study as completed trials, the RL agents get them as
demonstration episodes in their replay buffer, random search draws its own samples after them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from amc.errors import ConfigError, PolicyError
from amc.pruning.policy import Policy
from search.history import BASELINE_PREFIX, SEARCH, WARM_PREFIX, Record, Start, rank, read_history
from search.strategies.uniform import largest_feasible, uniform_keep

if TYPE_CHECKING:
    from amc.context import Context
    from search.problem import SearchProblem

log = logging.getLogger(__name__)
UNIFORM = BASELINE_PREFIX + "uniform"
TP_GLOBAL = BASELINE_PREFIX + "tp-global"


def baseline_starts(problem: SearchProblem, ctx: Context) -> list[Start]:
    """The uniform policy and Torch-Pruning's global-pruning widths at the problem's budget (the latter left
    out, with a warning, for a model Torch-Pruning cannot prune); for a language model's sparsity search,
    uniform sparsity and OWL's layer ratios (:func:`search.lm_baselines.lm_baseline_starts`)."""
    from amc.lm_context import LMContext

    if isinstance(ctx, LMContext):
        from search.lm_baselines import lm_baseline_starts

        return lm_baseline_starts(problem, ctx)
    from search.strategies.tp_global import tp_global_keep

    starts = [Start(UNIFORM, tuple(uniform_keep(problem)))]
    tp = tp_global_keep(problem, ctx)
    if tp is not None:
        starts.append(Start(TP_GLOBAL, tuple(tp)))
    return starts


def map_to_budget(problem: SearchProblem, keep: Sequence[float]) -> list[float]:
    """``keep`` (feasible at any budget) mapped onto the problem's: scaled by the largest factor that keeps
    it within the budget, clipped to [min_keep, max_keep], then projected (exactly feasible)."""
    p = problem.projector
    base = np.clip(np.asarray(keep, dtype=float), p.min_keep, p.max_keep)

    def make(s: float) -> list[float]:
        return np.clip(s * base, p.min_keep, p.max_keep).tolist()

    floor = p.min_keep / float(base.max())
    scale = largest_feasible(problem, make, floor, p.max_keep / p.min_keep) if problem.projector.feasible(make(floor)) \
        else floor
    return p.project(make(scale))


def warm_starts(paths: Sequence[str], problem: SearchProblem, *, top_k: int) -> list[Start]:
    """The policies of ``paths`` (``policy.json`` files or run folders) mapped onto the problem's budget.

    Raises:
        ConfigError: A path that is neither, or a policy of another model (one line naming the path and
            both fingerprints).
    """
    starts: list[Start] = []
    seen: set[tuple[int, ...]] = set()
    for path in paths:
        for source, keep, provenance in _read_source(Path(path), problem, top_k=top_k):
            mapped = map_to_budget(problem, keep)
            key = problem.key(mapped)
            if key in seen:
                continue
            seen.add(key)
            provenance = {**provenance, "mapped_cost_ratio": round(problem.cost_model.ratio(mapped), 6)}
            starts.append(Start(WARM_PREFIX + source, tuple(mapped), provenance))
    return starts


def _read_source(path: Path, problem: SearchProblem, *, top_k: int):
    """(source label, keep ratios, provenance) of each policy a ``--warm-start`` path contributes."""
    graph = problem.graph
    if path.is_dir():
        policy_file = path / "policy.json"
        if not policy_file.is_file():
            raise ConfigError(f"--warm-start {str(path)!r} holds no policy.json (not a run folder, or a search that "
                              "has not finished: finish it with --resume first), give a run folder or a policy.json")
        policy = _load(policy_file, graph)
        records = [r for r in read_history(path / "history.csv") if not r.repeat]
        if len(records) and len(records[0].keep) != len(graph):
            raise ConfigError(f"--warm-start {str(path)!r}: its history.csv has {len(records[0].keep)} keep ratios "
                              f"per policy, this model {len(graph)}; give a run of a search on this model")
        best: dict[int, Record] = {}  # candidate index -> its highest-ranked row
        for record in records:
            if record.index not in best or rank(record) > rank(best[record.index]):
                best[record.index] = record
        chosen, keys = [], set()
        for record in sorted(best.values(), key=rank, reverse=True):
            key = graph.candidate_key(record.keep, policy.granularity)
            if key not in keys:
                keys.add(key)
                chosen.append(record)
            if len(chosen) == top_k:
                break
        if not chosen:  # a policy.json without a history: its policy
            chosen_policies = [(path.name, policy.ratios(graph), _provenance(path, policy, None))]
            return chosen_policies
        return [(f"{path.name}#{r.index}", list(r.keep), _provenance(path, policy, r)) for r in chosen]
    if path.is_file():
        policy = _load(path, graph)
        return [(path.parent.name if path.name == "policy.json" else path.name, policy.ratios(graph),
                 _provenance(path, policy, None))]
    raise ConfigError(f"--warm-start {str(path)!r} does not exist; give policy.json files or run folders of earlier "
                      "searches on this model")


def _load(path: Path, graph) -> Policy:
    try:
        policy = Policy.load(path)
    except (PolicyError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--warm-start {str(path)!r} is not a policy.json of this tool ({exc})") from None
    if policy.model_fingerprint and policy.model_fingerprint != graph.fingerprint:
        raise ConfigError(f"--warm-start {str(path)!r} is a policy for another model (fingerprint "
                          f"{policy.model_fingerprint}, this model {graph.fingerprint}); give a policy.json or run "
                          "folder of a search on the same --model")
    try:
        policy.ratios(graph)
    except PolicyError as exc:
        raise ConfigError(f"--warm-start {str(path)!r}: {exc}") from None
    return policy


def _provenance(path: Path, policy: Policy, record: Record | None) -> dict[str, Any]:
    out = {"source": str(path), "budget": policy.budget, "resource": policy.resource}
    if record is not None:
        out.update(evaluation=record.index, rung=record.rung, score=record.score,
                   accuracy=record.accuracy, cost_ratio=record.cost_ratio)
    return out


def pending(problem: SearchProblem, starts: Sequence[Start]) -> list[Start]:
    """The starts the problem has no row for yet (a resumed run evaluates each once)."""
    done = {r.origin for r in problem.records}
    return [s for s in starts if s.origin not in done]


def own_records(problem: SearchProblem) -> list[Record]:
    """The strategy's own evaluations (not the starts)."""
    return [r for r in problem.records if r.origin == SEARCH]


__all__ = ["Start", "TP_GLOBAL", "UNIFORM", "baseline_starts", "map_to_budget", "own_records", "pending",
           "warm_starts"]
