"""One loop for every strategy: build the context, search, record, write the run's outputs.

``runs/<name>/``: ``config.json``, ``history.csv`` (every evaluation, written as it happens),
``policy.json`` (the best policy), ``pruned.pt2``, ``report.png``, ``run.log`` and, for Optuna,
``study.db`` (and ``pareto.json`` for NSGA-II). Ctrl-C stops the search and still writes the outputs
for the best policy so far; ``--resume`` continues a run from its folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from amc.context import Context, build_context
from amc.errors import AmcError, ConfigError
from amc.evaluate import Evaluator
from amc.export import export_pt2
from amc.policy import Policy
from amc.progress import progress_bar
from amc.train import accuracy
from envs import BudgetProjector
from search.baselines import RandomStrategy, SensitivityStrategy, UniformStrategy, uniform_keep
from search.config import SearchConfig
from search.history import HistoryWriter, Record, read_history
from search.problem import SearchProblem

log = logging.getLogger(__name__)
# Settings a resumed run must share with the original: everything that changes what is evaluated.
_RESUME_KEYS = ("budget", "strategy", "sampler", "min_keep", "max_keep", "reward", "warmup", "storage")
_RESUME_IGNORED_CONTEXT = ("cache_dir", "data_dir")  # where things are, not what they are


@dataclass(frozen=True)
class SearchResult:
    """What a run produced (also on disk in ``out``)."""

    out: Path
    policy: Policy
    best: Record
    uniform: Record
    uniform_policy: Policy
    base_val_accuracy: float
    base_test_accuracy: float
    test_accuracy: float
    uniform_test_accuracy: float
    evaluations: int
    seconds: float
    interrupted: bool
    layer_names: tuple[str, ...]


def prepare_out(config: SearchConfig) -> Path:
    """Creates (or checks, with ``--resume``) the run folder before any work is done.

    Raises:
        ConfigError: The folder is not writable, or already holds a run and ``--resume`` is not set,
            or holds a run with other settings.
    """
    out = Path(config.out)
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
    now = _config_dict(config)
    diffs = [k for k in _RESUME_KEYS if saved.get(k) != now.get(k)]
    ignored = set(_RESUME_IGNORED_CONTEXT)
    if now["context"].get("resource") != "latency":
        ignored.add("latency")  # timing settings matter only to a latency budget (runs before it lack them)
    diffs += [f"context.{k}" for k in sorted(set(saved["context"]) | set(now["context"]))
              if k not in ignored and saved["context"].get(k) != now["context"].get(k)]
    if diffs:
        raise ConfigError(f"--resume of {str(out)!r} with different settings {diffs}; use the run's original "
                          "settings (see its config.json) or another --out")


def _config_dict(config: SearchConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def make_strategy(config: SearchConfig, out: Path, *, batch_size: int = 1):
    if config.strategy in ("ddpg", "td3", "sac"):
        from search.ddpg import RLStrategy

        return RLStrategy(config.strategy, warmup_episodes=config.warmup_episodes, min_keep=config.min_keep,
                          max_keep=config.max_keep, reward=config.reward, n_envs=batch_size)
    if config.strategy == "optuna":
        from search.optuna_search import OptunaStrategy

        storage = config.storage or f"sqlite:///{(out / 'study.db').resolve()}"
        return OptunaStrategy(sampler=config.sampler, storage=storage, batch_size=batch_size, out=out,
                              study_name=f"amc-search/{out.resolve().name}", reward=config.reward)
    if config.strategy == "random":
        # Random samples are independent and the pool records each result as it arrives: big batches keep
        # every worker busy instead of waiting at each batch's slowest evaluation.
        return RandomStrategy(batch_size=batch_size * 16 if batch_size > 1 else 1)
    if config.strategy == "sensitivity":
        return SensitivityStrategy(out, batch_size=max(16, batch_size * 4))
    return UniformStrategy()


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("amc-search", "torch", "torch-pruning", "stable-baselines3", "optuna", "gymnasium", "numpy", "ray"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def run_search(config: SearchConfig, *, context: Context | None = None, evaluator: Evaluator | None = None,
               batch_size: int = 1) -> SearchResult:
    """Runs one search and writes its outputs.

    Args:
        config: The run's settings.
        context: A prebuilt context (tests, benchmarks); None builds it from ``config.context``.
        evaluator: Evaluator of candidate policies (e.g. a Ray pool); None uses the context's.
        batch_size: Policies evaluated together (parallel workers).
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


def _run(config: SearchConfig, out: Path, ctx: Context | None, evaluator: Evaluator | None,
         batch_size: int) -> SearchResult:
    start = time.perf_counter()
    torch.manual_seed(config.search_seed)
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


DRIFT_WARNING = 0.15  # base model's measured latency against the table's calibration, as a fraction
# Measured latency ratio above the budget by more than this fraction: the table's typical ratio error is 2-7%
# (BENCHMARKS.md), so a search that lands on its budget measures within a few percent either side.
OVER_BUDGET_WARNING = 0.10


def _export(pruned, ctx: Context, out: Path) -> Path | None:
    """Writes ``pruned.pt2``; an export that fails is logged and the search's results are written anyway."""
    try:
        return export_pt2(pruned, ctx.data.val.tensors[0][:2], out / "pruned.pt2")
    except Exception as exc:  # noqa: BLE001 - torch.export raises many types; the search result must survive
        log.error("pruned.pt2 not written: torch.export failed (%s: %s). policy.json is written; apply it with "
                  "scripts/apply_policy.py --no-export, or make the model's forward exportable",
                  type(exc).__name__, exc)
        return None


def _measured_latency(ctx: Context, pruned, predicted_ratio: float, budget: float,
                      exported: Path | None = None) -> dict[str, float]:
    """Base and pruned model timed in short interleaved rounds (median), as the table was calibrated.

    With ``exported`` (the pruned ``.pt2`` file), the deployable program loaded back from it is timed in the
    same rounds against the base model exported the same way (batch norm folded, :func:`amc.export.export_program`).
    """
    from amc.export import export_program
    from amc.latency import cache_path, compare_latency

    cfg = ctx.config.latency
    models = {"base": ctx.model, "pruned": pruned}
    if exported is not None:
        models["base_exported"] = export_program(ctx.model, ctx.data.val.tensors[0][:2]).module()
        models["pruned_exported"] = torch.export.load(exported).module()
    measured = compare_latency(models, ctx.graph.input_shape, batch_size=cfg.batch_size,
                               threads=cfg.resolved_threads(), device=cfg.device, repeats=cfg.calibration_rounds,
                               min_run_time=cfg.model_run_time)
    log.info("latency: predicted ratio %.4f, measured %.4f (%.3f / %.3f ms)", predicted_ratio,
             measured["pruned"] / measured["base"], measured["pruned"], measured["base"])
    table = ctx.cost_model("latency")
    drift = measured["base"] / table.measured_base - 1
    if abs(drift) > DRIFT_WARNING:
        log.warning("the base model now runs in %.3f ms, %+.0f%% against the %.3f ms the latency table was calibrated "
                    "with: this machine's speed has changed (other load, frequency), so predicted and measured "
                    "latencies disagree. Rebuild the table on an otherwise idle machine: delete %s", measured["base"],
                    100 * drift, table.measured_base, cache_path(ctx.graph, table.config))
    result = {"base_latency_drift": drift, "latency_ratio_predicted": predicted_ratio,
              "latency_ratio_measured": measured["pruned"] / measured["base"],
              "latency_ms_measured": measured["pruned"], "base_latency_ms_measured": measured["base"]}
    if exported is not None:
        ratio = measured["pruned_exported"] / measured["base_exported"]
        log.info("latency of the exported programs: %.4f of the base (%.3f / %.3f ms)", ratio,
                 measured["pruned_exported"], measured["base_exported"])
        result.update(latency_ratio_measured_exported=ratio, latency_ms_measured_exported=measured["pruned_exported"],
                      base_latency_ms_measured_exported=measured["base_exported"])
    for what, key in (("as a PyTorch module", "latency_ratio_measured"),
                      ("as the exported program", "latency_ratio_measured_exported")):
        if key in result and result[key] > budget * (1 + OVER_BUDGET_WARNING):
            log.warning("the pruned model %s measures %.4f of the base latency, more than %.0f%% above the budget %g "
                        "(the table predicted %.4f). Rerun on an otherwise idle machine, or search with a lower "
                        "--budget", what, result[key], 100 * OVER_BUDGET_WARNING, budget, predicted_ratio)
    return result


def make_pool(config: SearchConfig, ctx: Context):
    """The Ray evaluator pool for ``config`` (workers build the same context, with the driver's weights)."""
    from search.parallel import RayEvaluatorPool, init_ray

    workers = config.workers
    if config.ray_address is not None and workers is None:
        import ray

        init_ray(address=config.ray_address, num_cpus=None)
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // config.threads_per_worker)
    state = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    return RayEvaluatorPool(config.context, workers=workers or 1, threads_per_worker=config.threads_per_worker,
                            address=config.ray_address, state_dict=state,
                            key=lambda policy: ctx.evaluator.key(policy.ratios(ctx.graph)))


def _search(config: SearchConfig, out: Path, ctx: Context, evaluator: Evaluator | None, batch_size: int,
            start: float) -> SearchResult:
    if not (config.resume and (out / "config.json").exists()):  # a resumed run keeps the original record
        (out / "config.json").write_text(json.dumps(_config_dict(config), indent=2) + "\n")
    cost = ctx.cost_model()
    projector = BudgetProjector(cost, config.budget, min_keep=config.min_keep, max_keep=config.max_keep)
    previous = read_history(out / "history.csv") if config.resume else []
    remaining = max(0, config.evaluations - len(previous))
    if config.strategy in ("uniform", "sensitivity"):  # one policy each (sensitivity's curves are not rows)
        remaining = min(remaining, 1)
    log.info("search %s, budget %.3f %s, %d evaluations (%d done before)", config.strategy, config.budget,
             config.context.resource, config.evaluations, len(previous))
    history = HistoryWriter(out / "history.csv")
    interrupted = False
    with progress_bar(enabled=config.progress) as bar:
        task = bar.add_task(f"{config.strategy} search", total=len(previous) + remaining,
                            completed=len(previous), status="")

        def on_record(record: Record) -> None:
            bar.update(task, advance=1, status=f"best acc {problem.best.accuracy:.4f}")

        problem = SearchProblem(graph=ctx.graph, cost_model=cost, projector=projector,
                                evaluator=evaluator or ctx.evaluator, history=history, strategy=config.strategy,
                                reward=config.reward, criterion=config.context.eval.criterion,
                                granularity=config.context.eval.granularity, previous=previous,
                                on_record=on_record)
        try:
            strategy = make_strategy(config, out, batch_size=batch_size)
            strategy.run(problem, remaining, seed=config.search_seed)
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted after %d evaluations; writing the best policy so far", problem.count)
        finally:
            history.close()
    if problem.best is None:
        raise KeyboardInterrupt("interrupted before the first evaluation finished; nothing to write")
    return _finish(config, out, ctx, problem, projector, start, interrupted)


def _finish(config, out, ctx, problem, projector, start, interrupted) -> SearchResult:
    best = problem.best
    uniform = uniform_keep(problem)
    uniform_eval = ctx.evaluator.evaluate(problem.policy(uniform))
    uniform_record = Record(-1, "uniform", 0, uniform_eval.accuracy, uniform_eval.loss, problem.cost_model.cost(uniform),
                            problem.cost_model.cost(uniform) / problem.cost_model.base, uniform_eval.accuracy,
                            uniform_eval.cached, uniform_eval.seconds, 0.0, tuple(uniform))
    pruned = ctx.evaluator.prune(problem.policy(best.keep))
    test_acc = accuracy(pruned, ctx.data.test)
    uniform_test = accuracy(ctx.evaluator.prune(problem.policy(uniform)), ctx.data.test)
    # The base model on the same validation samples as the candidates (--val-limit may use fewer).
    base_val = ctx.evaluator.evaluate([1.0] * len(ctx.graph)).accuracy if ctx.config.eval.val_limit \
        else accuracy(ctx.model, ctx.data.val)
    base_test = accuracy(ctx.model, ctx.data.test)
    ratios = {f"{r}_ratio": ctx.cost_model(r).ratio(list(best.keep)) for r in ("flops", "params")}
    exported = _export(pruned, ctx, out) if config.export else None
    latency_rows = []
    if problem.cost_model.resource == "latency":
        ratios.update(_measured_latency(ctx, pruned, best.cost_ratio, config.budget, exported))
        measured, lat = ratios["latency_ratio_measured"], ctx.config.latency
        program = ratios.get("latency_ratio_measured_exported")
        label, value = "FLOPs ratio / latency ratio predicted / measured", \
            f"{ratios['flops_ratio']:.4f} / {best.cost_ratio:.4f} / {measured:.4f}"
        if program is not None:  # the deployable pruned.pt2 against the base exported the same way
            label, value = label + " / measured, exported", value + f" / {program:.4f}"
        latency_rows = [(label, f"{value} (batch {lat.batch_size}, {lat.resolved_threads()} thread(s))")]
    seconds = time.perf_counter() - start
    policy = problem.policy(best.keep).with_metrics(
        val_accuracy=best.accuracy, test_accuracy=test_acc, cost=best.cost, base_cost=problem.cost_model.base,
        cost_ratio=best.cost_ratio, **ratios,
        base_val_accuracy=base_val, base_test_accuracy=base_test,
        uniform_val_accuracy=uniform_eval.accuracy, uniform_test_accuracy=uniform_test,
    ).with_meta(
        strategy=config.strategy, sampler=config.sampler if config.strategy == "optuna" else None,
        seed=config.search_seed, model=config.context.model, dataset=config.context.dataset,
        evaluations=problem.count, best_evaluation=best.index, duration_s=round(seconds, 3),
        interrupted=interrupted, round_to=config.context.round_to, min_keep=config.min_keep,
        max_keep=config.max_keep, context=_config_dict(config)["context"], versions=_versions(),
    )
    policy.save(out / "policy.json")
    from search.report import write_html, write_report

    title = (f"{config.strategy} on {config.context.model}/{config.context.dataset}, budget {config.budget:g} "
             f"{config.context.resource}")
    png = write_report(out / "report.png", problem.records, ctx.graph, best=best, uniform_keep=uniform,
                       budget=config.budget, title=title)
    from amc.compare import model_stats

    comparison = [model_stats("base", ctx.model, ctx.data.test, min_run_time=0.2),
                  model_stats("pruned", pruned, ctx.data.test, min_run_time=0.2)]
    summary = [("evaluations", str(problem.count)), ("best evaluation", str(best.index)),
               ("validation accuracy (base / best / uniform)",
                f"{base_val:.4f} / {best.accuracy:.4f} / {uniform_eval.accuracy:.4f}"),
               ("test accuracy (base / best / uniform)", f"{base_test:.4f} / {test_acc:.4f} / {uniform_test:.4f}"),
               (f"{problem.cost_model.resource} ratio", f"{best.cost_ratio:.4f} (budget {config.budget:g})"),
               *latency_rows,
               ("per-layer keep ratios", ", ".join(f"{n}: {k:.2f}" for n, k in zip(ctx.graph.names, best.keep))),
               ("duration", f"{seconds:.1f} s" + (" (interrupted)" if interrupted else ""))]
    write_html(out / "report.html", png, title=title, summary=summary, comparison=comparison)
    log.info("best policy: val %.4f test %.4f cost ratio %.4f (%s)", best.accuracy, test_acc, best.cost_ratio, out)
    return SearchResult(out=out, policy=policy, best=best, uniform=uniform_record,
                        uniform_policy=problem.policy(uniform), base_val_accuracy=base_val,
                        base_test_accuracy=base_test, test_accuracy=test_acc, uniform_test_accuracy=uniform_test,
                        evaluations=problem.count, seconds=seconds, interrupted=interrupted,
                        layer_names=ctx.graph.names)
