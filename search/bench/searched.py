"""A benchmark row's search (headline, ViT): its settings, run into the row's folder or read back, and the
``default`` row: the product as a user runs it, ``scripts/search.py`` with every default of the option schema
(:class:`search.options.SearchOptions`: strategy, evaluations, baselines, deploy rung), but for the settings'
:data:`PASSED` fields (and ``default_evaluations``) where they are set, and the benchmark's model, data,
budget, seed, ``min_keep`` and workers.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.bench.verdicts import DEFAULT_ROW

if TYPE_CHECKING:
    from amc.context import Context
    from amc.pruning.policy import Policy
    from search.config import SearchConfig

# SearchConfig fields the default row takes from the settings when they are set (None: the product's default).
PASSED = ("select", "select_top_k", "select_samples", "select_lr", "warm_start", "baselines")


def _passed(settings: Any) -> dict[str, Any]:
    """The default row's SearchConfig fields set by ``settings`` (those this version of the product has)."""
    from search.config import SearchConfig

    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    passed = {name: getattr(settings, name, None) for name in PASSED if name in fields}
    if getattr(settings, "default_evaluations", None) is not None:
        passed["evaluations"] = settings.default_evaluations
    return {k: v for k, v in passed.items() if v is not None}  # select "none": SearchConfig reads it as no rung


def product_defaults(settings: Any, **fields: Any) -> SearchConfig:
    """What ``scripts/search.py`` runs with no options, the settings' :data:`PASSED` fields and ``fields``
    replacing its own."""
    from search.options import SearchOptions

    return dataclasses.replace(SearchOptions().to_config(), **{**_passed(settings), **fields})


def search_config(settings: Any, ctx: Context, *, budget: float, strategy: str, seed: int, evaluations: int,
                  out: Path) -> SearchConfig:
    """A row's search: ``strategy`` with ``evaluations``; the default row: the product's defaults (see
    :data:`PASSED`)."""
    from search.config import SearchConfig

    common = dict(budget=budget, out=str(out), seed=seed, resume=out.exists(), progress=False, export=False,
                  report=False, min_keep=settings.min_keep, workers=settings.workers, context=ctx.config)
    if strategy == DEFAULT_ROW:
        return product_defaults(settings, **common)
    return SearchConfig(**{**common, "workers": settings.workers if strategy != "uniform" else 1},
                        strategy=strategy, evaluations=evaluations,
                        ladder=getattr(settings, "ladder", ()))  # the ViT benchmark's settings have none


@dataclasses.dataclass(frozen=True)
class Searched:
    """A row's search, read back from its run folder."""

    policy: Policy
    search_seconds: float  # to the last recorded row (the run's final test pass is not search)
    evaluations: int  # candidates evaluated (baselines and warm starts included, cache hits too)
    distinct: int  # of those, the ones that ran a forward pass
    chosen: str  # history.csv origin of the policy: search, baseline:uniform, baseline:tp-global, warm:...


def searched(settings: Any, ctx: Context, *, run: Path, strategy: str, budget: float, seed: int,
             evaluations: int) -> Searched:
    """Runs the search into ``run`` unless its ``policy.json`` is there (an interrupted one resumes), and
    reads it back."""
    from amc.pruning.policy import Policy
    from search.history import read_history
    from search.runner import run_search

    if not (run / "policy.json").exists():
        run_search(search_config(settings, ctx, budget=budget, strategy=strategy, seed=seed,
                                 evaluations=evaluations, out=run), context=ctx)
    policy = Policy.load(run / "policy.json")
    records = read_history(run / "history.csv")
    firsts = [r for r in records if r.rung == 0 and not getattr(r, "repeat", 0)]
    key = ctx.graph.candidate_key(policy.ratios(ctx.graph), ctx.config.eval.granularity)
    chosen = next((getattr(r, "origin", "search") for r in firsts
                   if ctx.graph.candidate_key(r.keep, ctx.config.eval.granularity) == key), "")
    return Searched(policy, search_seconds=max(r.wall_time for r in records), evaluations=len(firsts),
                    distinct=sum(not r.cached for r in firsts), chosen=chosen)


def write_cell(path: Path, cell) -> None:
    """Writes a finished cell at once (through a temporary file: a killed run leaves no half cell)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(cell), indent=1) + "\n")
    tmp.replace(path)


def default_row_text(settings: Any) -> str:
    """What the default row ran: the product's defaults with the settings' overrides, in words."""
    from search.config import SearchConfig

    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    config = product_defaults(settings)
    strategy = config.strategy + (f" ({config.sampler})" if config.strategy == "optuna" else "")
    text = f"`default`: scripts/search.py's defaults, strategy {strategy}, {config.evaluations} evaluations"
    if "baselines" in fields:
        text += ", baselines first" if config.baselines else ", no baselines"
    if getattr(config, "warm_start", ()):
        text += f", warm start from {', '.join(config.warm_start)}"
    if getattr(config, "select", None):
        text += (f", deploy rung `{config.select}` on the top {config.select_top_k} and the baselines "
                 f"({config.select_samples:,} samples, lr {config.select_lr:g})")
    elif "select" in fields:
        text += ", no deploy rung"
    return text + "; its policy is the run's policy.json."


__all__ = ["PASSED", "Searched", "default_row_text", "product_defaults", "search_config", "searched", "write_cell"]
