"""One loop for every strategy: build the context, search, record; :mod:`search.outputs` writes the rest.

``runs/<name>/``: ``config.json``, ``history.csv`` (every evaluation, written as it happens),
``policy.json`` (the best policy), ``pruned.pt2``, ``report.png``, ``run.log``, for Optuna ``study.db``
(and ``pareto.json`` for NSGA-II), for RL ``agent/checkpoint.zip`` (:mod:`search.strategies.rl.checkpoint`).
Ctrl-C stops the search and still writes the outputs for the best policy so far; ``--resume`` continues a
run from its folder.

The loop knows no strategy by name: it looks ``--strategy`` up in :mod:`search.strategies` once, and the
class says how large its batches are, whether it proposes a single policy and whether it runs the ladder
itself (:class:`~search.strategies.Strategy`).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from amc.context import Context, build_context
from amc.cost.sparsity_cost import SparsityCost
from amc.errors import AmcError, ConfigError
from amc.evaluation.evaluator import Evaluator
from amc.lm_context import LMContext, LMContextConfig, build_lm_context
from amc.progress import progress_bar
from envs import BudgetProjector
from envs.sparsity_projection import SparsityProjector
from search import strategies
from search.config import SearchConfig
from search.history import HistoryWriter, Record, read_history
from search.lm import LMSearchResult, write_lm_outputs
from search.ladder import run_ladder
from search.outputs import SearchResult, write_outputs
from search.problem import SearchProblem
from search.selection import run_selection, search_verdict
from search.starts import Start, baseline_starts, own_records, pending, warm_starts  # noqa: F401 (Start: annotations)
from amc.seeding import seeded

log = logging.getLogger(__name__)
# Settings a resumed run must share with the original: everything that changes what is evaluated.
_RESUME_KEYS = ("budget", "strategy", "sampler", "min_keep", "max_keep", "reward", "warmup", "storage", "ladder",
                "ladder_top_k", "pruner", "baselines", "warm_start", "warm_start_top_k", "select", "select_top_k",
                "select_samples", "select_lr")
# Settings added with the baselines and the deploy rung: a run from before them is resumed with any value.
_NEW_KEYS = ("baselines", "warm_start", "warm_start_top_k", "select", "select_top_k", "select_samples", "select_lr")
# Settings added later, absent from older runs' config.json: they had this (default) value then.
_DEFAULTED = {"ladder": [], "ladder_top_k": 8, "pruner": "halving"}
_DEFAULTED_CONTEXT = {"dataset_kwargs": [], "depth": False, "levels": []}
_RESUME_IGNORED_CONTEXT = ("cache_dir", "data_dir", "device", "loader_workers", "discovery_seconds")  # where things are or run, not what


def prepare_out(config: SearchConfig) -> Path:
    """Creates (or checks, with ``--resume``) the run folder before any work is done.

    Raises:
        ConfigError: The folder is not writable, or already holds a run and ``--resume`` is not set,
            or holds a run with other settings, or holds no run to resume (``--resume``).
    """
    out = Path(config.out)
    if config.resume and not ((out / "config.json").is_file() or (out / "history.csv").is_file()):
        what = "does not exist" if not out.exists() else "holds no run (no config.json or history.csv)"
        raise ConfigError(f"--resume: --out {str(out)!r} {what}; drop --resume to start a new search there, or "
                          "point --out at the folder of the run to continue")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):  # unique: two runs may check at once
            pass
    except OSError as exc:
        raise ConfigError(f"--out {str(out)!r} is not writable ({exc.strerror}); choose another folder") from exc
    saved = out / "config.json"
    if config.resume:
        if saved.exists():
            try:
                original = json.loads(saved.read_text())
                original["context"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ConfigError(f"{str(saved)!r} is not a config.json of this tool ({exc}); "
                                  "resume only folders written by scripts/search.py") from None
            _check_same_run(original, config, out)
    elif (out / "history.csv").exists():
        raise ConfigError(f"--out {str(out)!r} already holds a search; pass --resume to continue it or choose "
                          "another --out")
    return out


def _check_same_run(saved: dict, config: SearchConfig, out: Path) -> None:
    now = config.to_dict()
    diffs = [k for k in _RESUME_KEYS if not (k in _NEW_KEYS and k not in saved)
             and _comparable(saved.get(k, _DEFAULTED.get(k))) != _comparable(now.get(k))]
    ignored = set(_RESUME_IGNORED_CONTEXT)
    if now["context"].get("resource") != "latency":
        ignored.add("latency")  # timing settings matter only to a latency budget (runs before it lack them)
    diffs += [f"context.{k}" for k in sorted(set(saved["context"]) | set(now["context"]))
              if k not in ignored and saved["context"].get(k, _DEFAULTED_CONTEXT.get(k)) != now["context"].get(k)]
    if diffs:
        raise ConfigError(f"--resume of {str(out)!r} with different settings {diffs}; use the run's original "
                          "settings (see its config.json) or another --out")


def _comparable(value):
    return list(value) if isinstance(value, tuple) else value


def run_search(config: SearchConfig, *, context: Context | LMContext | None = None,
               evaluator: Evaluator | None = None, batch_size: int = 1) -> SearchResult | LMSearchResult:
    """Runs one search and writes its outputs.

    A language model's sparsity search (``config.context`` an :class:`~amc.lm_context.LMContextConfig`) runs the
    same loop on its context: the exact-average projection, the uniform and OWL baselines, and
    :func:`search.lm.write_lm_outputs` (an :class:`~search.lm.LMSearchResult`).

    Args:
        config: The run's settings.
        context: A prebuilt context (tests, benchmarks); None builds it from ``config.context``.
        evaluator: Evaluator of candidate policies (e.g. a Ray pool); None uses the context's.
        batch_size: Parallel workers of ``evaluator``; each strategy sizes its batches from it
            (:meth:`~search.strategies.Strategy.batch_size`).
    """
    created = not Path(config.out).exists()
    out = prepare_out(config)
    handler = logging.FileHandler(out / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    # run.log gets this project's INFO records; what the console shows stays the caller's choice.
    loggers = [logging.getLogger(name) for name in ("amc", "envs", "search")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        return _run(config, out, context, evaluator, batch_size)
    except (AmcError, KeyboardInterrupt):
        if created and not read_history(out / "history.csv"):
            shutil.rmtree(out, ignore_errors=True)  # stopped before any evaluation: leave nothing behind
        raise
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
        handler.close()


def _run(config: SearchConfig, out: Path, ctx: Context | LMContext | None, evaluator: Evaluator | None,
         batch_size: int) -> SearchResult | LMSearchResult:
    start = time.perf_counter()
    with seeded(config.search_seed, config.context.device, host_generators=True):
        if ctx is None and isinstance(config.context, LMContextConfig):
            ctx = build_lm_context(config.context, progress=config.progress)
        ctx = ctx or build_context(config.context, progress=config.progress)
        ctx.cost_model(progress=config.progress)  # a latency table is timed now, before workers load the CPUs
        pool = None
        try:
            if evaluator is None and config.parallel:
                pool = make_pool(config, ctx)
                evaluator, batch_size = pool, pool.workers
            return _search(config, out, ctx, evaluator, batch_size, start)
        finally:
            if pool is not None:
                pool.close()


def make_pool(config: SearchConfig, ctx: Context):
    """The Ray evaluator pool for ``config`` (workers build the same context, with the driver's weights)."""
    from amc.evaluation.evaluator import policy_key
    from search.parallel import RayEvaluatorPool, default_gpus_per_worker, init_ray

    workers = config.workers
    if config.ray_address is not None:
        import ray

        init_ray(address=config.ray_address, num_cpus=None)
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // config.threads_per_worker)
    gpus = config.gpus_per_worker
    if gpus is None:  # an equal share of the GPUs (at most one each); none on the CPU
        if config.context.device.startswith("cuda"):
            if config.ray_address is not None:
                available = ray.cluster_resources().get("GPU", 0)
            else:
                available = torch.cuda.device_count()
        else:
            available = 0
        gpus = default_gpus_per_worker(config.context.device, workers or 1, available)
    # The base weights go out from the CPU: every actor moves them to its own device.
    state = {k: v.detach().cpu().clone() for k, v in ctx.model.state_dict().items()}
    return RayEvaluatorPool(config.context, workers=workers or 1, threads_per_worker=config.threads_per_worker,
                            gpus_per_worker=gpus, address=config.ray_address, state_dict=state, graph=ctx.graph,
                            key=lambda policy: policy_key(ctx.graph, policy))


def _search(config: SearchConfig, out: Path, ctx: Context | LMContext, evaluator: Evaluator | None, batch_size: int,
            start: float) -> SearchResult | LMSearchResult:
    if not (config.resume and (out / "config.json").exists()):  # a resumed run keeps the original record
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    cost = ctx.cost_model()
    # A sparsity cost counts weights: its projection meets the target average exactly (envs.sparsity_projection).
    projector_class = SparsityProjector if isinstance(cost, SparsityCost) else BudgetProjector
    projector = projector_class(cost, config.budget, min_keep=config.min_keep, max_keep=config.max_keep)
    previous = read_history(out / "history.csv") if config.resume else []  # every rung
    strategy_class = strategies.get(config.strategy)  # what the loop needs to know of it, it declares
    history = HistoryWriter(out / "history.csv")
    interrupted, selection, starts = False, None, []
    with progress_bar(enabled=config.progress) as bar:
        task = bar.add_task(f"{config.strategy} search", total=None, status="")

        def on_record(record: Record) -> None:
            bar.update(task, advance=1, status=f"best acc {problem.best.accuracy:.4f}")

        problem = SearchProblem(graph=ctx.graph, cost_model=cost, projector=projector,
                                evaluator=evaluator or ctx.evaluator, history=history, strategy=config.strategy,
                                reward=config.reward, criterion=config.context.eval.criterion,
                                granularity=config.context.eval.granularity, previous=previous,
                                on_record=on_record, score=config.context.eval.score)
        try:
            starts = _starts(config, problem, ctx, strategy_class)
            own = len(own_records(problem))  # evaluations; the starts and a ladder's re-scores are not counted
            remaining = max(0, config.evaluations - own)
            if strategy_class.single_policy:
                remaining = min(remaining, 1)
            todo = pending(problem, starts)
            log.info("search %s, budget %.3f %s, %d evaluations (%d done before) after %d baseline and warm-start "
                     "candidates (%d to evaluate)", config.strategy, config.budget, config.context.resource,
                     config.evaluations, own, len(starts), len(todo))
            bar.update(task, total=problem.count + len(todo) + remaining, completed=problem.count)
            strategy = strategy_class.from_config(config, out=out, batch_size=strategy_class.batch_size(batch_size),
                                                  ctx=ctx)
            strategy.evaluate_starts(problem, todo)
            strategy.run(problem, remaining, seed=config.search_seed)
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted after %d evaluation%s; writing the best policy so far", problem.count,
                        "" if problem.count == 1 else "s")
        else:
            pool = evaluator if hasattr(evaluator, "map") else None
            try:
                if config.ladder and not strategy_class.runs_own_ladder:
                    problem.best = run_ladder(problem, ctx, config.ladder, top_k=config.ladder_top_k, pool=pool)
                if config.select and problem.records:
                    rung_task = bar.add_task(f"deploy rung ({config.select})", total=None, status="")
                    selection = run_selection(problem, ctx, config, pool,
                                              on_result=lambda r: bar.update(rung_task, advance=1))
                    problem.best = selection.best
            except KeyboardInterrupt:  # the rungs measured so far are in history.csv; --resume goes on
                interrupted = True
                log.warning("interrupted in the ladder or the deploy rung; writing the best policy so far (continue "
                            "with --resume)")
        finally:
            history.close()
    if problem.best is None:
        raise KeyboardInterrupt("interrupted before the first evaluation finished; nothing to write")
    if isinstance(ctx, LMContext):
        return write_lm_outputs(config, ctx, out, problem, started=start, interrupted=interrupted)
    return write_outputs(config, out, ctx, problem, started=start, interrupted=interrupted,
                         verdict=selection.verdict if selection is not None else search_verdict(problem),
                         starts=starts)


def _starts(config: SearchConfig, problem: SearchProblem, ctx: Context, strategy_class) -> list[Start]:
    """The baselines (unless off, or the strategy is one) and the warm starts of this run."""
    starts = baseline_starts(problem, ctx) if config.baselines and strategy_class.takes_baselines else []
    return starts + warm_starts(config.warm_start, problem, top_k=config.warm_start_top_k)
