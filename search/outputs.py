"""A finished search's outputs: the final measurements of the best policy and the files that record them.

From what the search loop returns (its :class:`~search.problem.SearchProblem`: the records and the
best one), :func:`write_outputs` evaluates the uniform baseline, measures test accuracy (the only place
a run touches the test split), exports ``pruned.pt2``, times the pruned model where the budget is
latency, and writes ``policy.json``, ``report.png`` and ``report.html``. Each phase names itself on a
progress line (and its time in ``run.log``): on a busy machine they take minutes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from amc.context import Context
from amc.evaluation.evaluator import EvalResult
from amc.pruning.export import export_pt2
from amc.pruning.policy import Policy
from amc.evaluation.metrics import accuracy
from amc.progress import progress_bar
from search.strategies.uniform import uniform_keep
from search.config import SearchConfig
from search.history import Record, Start
from search.problem import SearchProblem
from search.selection import Verdict, deployed_baselines, verdict_rows
from search.starts import UNIFORM

log = logging.getLogger(__name__)

DRIFT_WARNING = 0.15  # base model's measured latency against the table's calibration, as a fraction
# Measured latency ratio above the budget by more than this fraction: the table's typical ratio error is 2-7%
# (BENCHMARKS.md), so a search that lands on its budget measures within a few percent either side.
OVER_BUDGET_WARNING = 0.10
# Seconds of each timing of a (model, batch) cell of the report's comparison table (torch.utils.benchmark's
# median). On the digits cnn 0.05 s gives the medians 0.2 s gives to within 1% (0.622 vs 0.622 ms at batch 1,
# 6.24 vs 6.27 ms at 64) at a quarter of the cost; a latency budget is timed separately (``LatencyConfig``).
REPORT_RUN_TIME = 0.05
REPORT_REPEATS = 3  # interleaved timings per cell: their median is shown, their spread checked


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
    verdict: Verdict | None = None
    # With --select: test accuracy after the deploy recipe, by row (best, baseline:uniform, baseline:tp-global)
    deployed_test: dict[str, float] | None = None


class _Phases:
    """The outputs' progress line: the phase under way, as a step of a bar (its time also goes to run.log)."""

    def __init__(self, bar, total: int) -> None:
        self.bar = bar
        self.task = bar.add_task("writing outputs", total=total, status="")

    @contextlib.contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        self.bar.update(self.task, status=what)
        log.info("outputs: %s", what)
        start = time.perf_counter()
        yield
        self.bar.advance(self.task)
        log.info("outputs: %s took %.1f s", what, time.perf_counter() - start)


@dataclass(frozen=True)
class _Accuracies:
    base_val: float
    base_test: float
    test: float  # the best policy's
    uniform_test: float


def write_outputs(config: SearchConfig, out: Path, ctx: Context, problem: SearchProblem, *, started: float,
                  interrupted: bool, verdict: Verdict | None = None, starts: Sequence[Start] = ()) -> SearchResult:
    """Measures the search's best policy and writes the run's outputs to ``out``.

    Args:
        config: The run's settings.
        out: The run folder (``history.csv`` is already there).
        ctx: The context the search ran on.
        problem: The finished search (at least one record).
        started: ``time.perf_counter()`` when the run started (the policy's ``duration_s``).
        interrupted: The search was stopped before its last evaluation.
        verdict: The search's best against the baselines (:mod:`search.selection`).
        starts: The baselines and warm starts it evaluated first (their provenance goes to ``policy.json``).
    """
    best = problem.best
    latency = problem.cost_model.resource == "latency"
    deploying = bool(config.select) and not interrupted and best.score.startswith("deploy:")
    with progress_bar(enabled=config.progress) as bar:
        phase = _Phases(bar, total=4 + bool(config.export) + latency + 3 * bool(config.report) + deploying)
        uniform = uniform_keep(problem)
        with phase("uniform baseline: validation accuracy"):
            uniform_record = _recorded_uniform(problem, uniform)
            if uniform_record is None:
                uniform_record = _uniform_record(problem, uniform, ctx.evaluator.evaluate(problem.policy(uniform)))
        uniform_eval = uniform_record
        deployed_test = None
        with phase("best policy: pruning and scoring" + (f", then the deploy recipe ({config.select})"
                                                          if deploying else "")):
            scored = ctx.evaluator.scored_model(problem.policy(best.keep))  # with --score reconstruct: refitted
            pruned = scored
            if deploying:  # the winner as the deploy rung fine-tuned it: what pruned.pt2 holds
                from amc.deploy import DeployRecipe, deploy_model

                recipe = DeployRecipe.parse(config.select, samples=config.select_samples, lr=config.select_lr)
                pruned = deploy_model(ctx, problem.policy(best.keep), recipe, seed=config.search_seed)
        with phase("test accuracy: base, best and uniform"):
            acc = _accuracies(ctx, problem, scored, uniform)  # before any fine-tune, as the search scored them
        if deploying:
            with phase(f"test accuracy of the best policy and the baselines after the deploy recipe ({config.select})"):
                deployed_test = {"best": accuracy(pruned, ctx.data.test),
                                 **deployed_baselines(ctx, problem, recipe, config.search_seed)}
        # best.keep names the dropped blocks (--depth): ctx's FLOPs and params models then cost them too
        ratios = {f"{r}_ratio": ctx.cost_model(r).ratio(best.keep) for r in ("flops", "params")}
        exported = None
        if config.export:
            with phase("exporting pruned.pt2"):
                exported = _export(pruned, ctx, out)
        latency_rows = []
        if latency:
            with phase("latency: timing the base and pruned models"):
                ratios.update(_measured_latency(ctx, pruned, best.cost_ratio, config.budget, exported,
                                                flops_ratio=ratios["flops_ratio"]))
            latency_rows = _latency_summary(ctx, ratios, best.cost_ratio)
        seconds = time.perf_counter() - started
        with phase("writing policy.json"):
            policy = _policy_record(config, problem, ratios, acc, uniform_eval.accuracy, seconds=seconds,
                                    interrupted=interrupted, verdict=verdict, starts=starts,
                                    deployed_test=deployed_test)
            policy.save(out / "policy.json")
            uniform_policy = problem.policy(uniform)
            write_layers(out / LAYERS_FILE, names=ctx.graph.names, base=[s.out_channels for s in ctx.graph.layers],
                         best=policy, uniform=uniform_policy, uniform_cost_ratio=uniform_record.cost_ratio)
        if config.report:
            _write_reports(config, out, ctx, problem, pruned, uniform, acc, uniform_eval.accuracy, latency_rows,
                           seconds=seconds, interrupted=interrupted, phase=phase,
                           extra=verdict_rows(verdict, deployed_test, config.select),
                           pruned_test=deployed_test["best"] if deployed_test else acc.test)
    log.info("best policy: val %.4f test %.4f cost ratio %.4f (%s)", best.accuracy, acc.test, best.cost_ratio, out)
    return SearchResult(out=out, policy=policy, best=best, uniform=uniform_record,
                        uniform_policy=uniform_policy, base_val_accuracy=acc.base_val,
                        base_test_accuracy=acc.base_test, test_accuracy=acc.test,
                        uniform_test_accuracy=acc.uniform_test,
                        evaluations=problem.count, seconds=seconds, interrupted=interrupted,
                        layer_names=ctx.graph.names, verdict=verdict, deployed_test=deployed_test)


def _recorded_uniform(problem: SearchProblem, uniform: Sequence[float]) -> Record | None:
    """The uniform baseline's rung-0 row, when the search evaluated it (the same policy: no second evaluation)."""
    key = problem.key(uniform)
    for record in problem.records:
        if record.origin == UNIFORM and problem.key(record.keep) == key:
            return record
    return None




def _uniform_record(problem: SearchProblem, uniform: Sequence[float], result: EvalResult) -> Record:
    cost = problem.cost_model.cost(uniform)
    return Record(-1, "uniform", 0, result.accuracy, result.loss, cost, cost / problem.cost_model.base,
                  result.accuracy, result.cached, result.seconds, 0.0, tuple(uniform))


def _accuracies(ctx: Context, problem: SearchProblem, pruned, uniform: Sequence[float]) -> _Accuracies:
    test = accuracy(pruned, ctx.data.test)
    uniform_test = accuracy(ctx.evaluator.scored_model(problem.policy(uniform)), ctx.data.test)
    # The base model on the same validation samples as the candidates (--val-limit may use fewer).
    base_val = ctx.evaluator.evaluate([1.0] * len(ctx.graph)).accuracy if ctx.config.eval.val_limit \
        else accuracy(ctx.model, ctx.data.val)
    return _Accuracies(base_val=base_val, base_test=accuracy(ctx.model, ctx.data.test), test=test,
                       uniform_test=uniform_test)


def _export(pruned, ctx: Context, out: Path) -> Path | None:
    """Writes ``pruned.pt2``; an export that fails is logged and the search's results are written anyway."""
    try:
        return export_pt2(pruned, ctx.example(2), out / "pruned.pt2")
    except Exception as exc:  # noqa: BLE001 - torch.export raises many types; the search result must survive
        log.error("pruned.pt2 not written: torch.export failed (%s: %s). policy.json is written; apply it with "
                  "scripts/apply_policy.py --no-export, or make the model's forward exportable",
                  type(exc).__name__, exc)
        return None


def _measured_latency(ctx: Context, pruned, predicted_ratio: float, budget: float,
                      exported: Path | None = None, *, flops_ratio: float | None = None) -> dict[str, float]:
    """Base and pruned model timed in short interleaved rounds (median), as the table was calibrated.

    A latency ratio that the FLOPs ratio cannot explain is logged as a timing not to be trusted.

    With ``exported`` (the pruned ``.pt2`` file), the deployable program loaded back from it is timed in the
    same rounds against the base model exported the same way (batch norm folded, :func:`amc.pruning.export.export_program`).
    """
    from amc.pruning.export import export_program
    from amc.cost.latency import cache_path
    from amc.cost.timing import TIMING_HINT, compare_latency, timing_doubts

    cfg = ctx.config.latency
    models = {"base": ctx.model, "pruned": pruned}
    if exported is not None:
        models["base_exported"] = export_program(ctx.model, ctx.example(2)).module()
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
    for what, (base_key, pruned_key) in (("as PyTorch modules", ("base", "pruned")),
                                         ("as exported programs", ("base_exported", "pruned_exported"))):
        if pruned_key not in measured:
            continue
        doubts = timing_doubts(label=f"batch {cfg.batch_size}", base_ms=measured[base_key],
                               pruned_ms=measured[pruned_key], flops_ratio=flops_ratio)
        if doubts:
            log.warning("the measured latency %s is not to be trusted: %s. %s", what, "; ".join(doubts), TIMING_HINT)
    for what, key in (("as a PyTorch module", "latency_ratio_measured"),
                      ("as the exported program", "latency_ratio_measured_exported")):
        if key in result and result[key] > budget * (1 + OVER_BUDGET_WARNING):
            log.warning("the pruned model %s measures %.4f of the base latency, more than %.0f%% above the budget %g "
                        "(the table predicted %.4f). Rerun on an otherwise idle machine, or search with a lower "
                        "--budget", what, result[key], 100 * OVER_BUDGET_WARNING, budget, predicted_ratio)
    return result


def _latency_summary(ctx: Context, ratios: dict[str, float], predicted: float) -> list[tuple[str, str]]:
    """The report's row of FLOPs and latency ratios (predicted, measured, and measured on the exported program)."""
    measured, lat = ratios["latency_ratio_measured"], ctx.config.latency
    program = ratios.get("latency_ratio_measured_exported")
    label, value = "FLOPs ratio / latency ratio predicted / measured", \
        f"{ratios['flops_ratio']:.4f} / {predicted:.4f} / {measured:.4f}"
    if program is not None:  # the deployable pruned.pt2 against the base exported the same way
        label, value = label + " / measured, exported", value + f" / {program:.4f}"
    return [(label, f"{value} (batch {lat.batch_size}, {lat.resolved_threads()} thread(s))")]


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("amc-search", "torch", "torch-pruning", "stable-baselines3", "optuna", "gymnasium", "numpy", "ray"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _policy_record(config: SearchConfig, problem: SearchProblem, ratios: dict[str, float], acc: _Accuracies,
                   uniform_val: float, *, seconds: float, interrupted: bool, verdict: Verdict | None = None,
                   starts: Sequence[Start] = (), deployed_test: dict[str, float] | None = None) -> Policy:
    """The best policy with what was measured at search time (``policy.json``)."""
    best = problem.best
    deployed = {} if not deployed_test else {
        "deployed_" + ("test_accuracy" if k == "best" else k.split(":", 1)[1].replace("-", "_") + "_test_accuracy"): v
        for k, v in deployed_test.items()}
    return problem.policy(best.keep).with_metrics(
        val_accuracy=best.accuracy, test_accuracy=acc.test, cost=best.cost, base_cost=problem.cost_model.base,
        cost_ratio=best.cost_ratio, **ratios,
        base_val_accuracy=acc.base_val, base_test_accuracy=acc.base_test,
        uniform_val_accuracy=uniform_val, uniform_test_accuracy=acc.uniform_test, **deployed,
        # the search's own score of this policy (rung 0): what apply_policy.py measures again
        search_val_accuracy=next((r.accuracy for r in problem.records if r.index == best.index), best.accuracy),
    ).with_meta(
        origin=best.origin, verdict=verdict.to_dict() if verdict is not None else None,
        starts=[{"origin": s.origin, **s.provenance} for s in starts],
        select=None if not config.select else {"recipe": config.select, "top_k": config.select_top_k,
                                               "samples": config.select_samples, "lr": config.select_lr},
    ).with_meta(
        strategy=config.strategy, sampler=config.sampler if config.strategy == "optuna" else None,
        seed=config.search_seed, model=config.context.model, dataset=config.context.dataset,
        evaluations=problem.count - sum(r.origin in {s.origin for s in starts} for r in problem.records),
        candidates=problem.count,  # evaluations: the strategy's own (--evaluations); candidates: with the starts
        best_evaluation=best.index, duration_s=round(seconds, 3),
        # val_accuracy is this score's (with a ladder: the highest rung the best candidate reached)
        score=best.score or config.context.eval.score, best_rung=best.rung, ladder=list(config.ladder),
        interrupted=interrupted, round_to=config.context.round_to, min_keep=config.min_keep,
        max_keep=config.max_keep, context=config.to_dict()["context"], versions=_versions(),
    )


def _write_reports(config: SearchConfig, out: Path, ctx: Context, problem: SearchProblem, pruned,
                   uniform: Sequence[float], acc: _Accuracies, uniform_val: float,
                   latency_rows: list[tuple[str, str]], *, seconds: float, interrupted: bool,
                   phase: _Phases | None = None, extra: Sequence[tuple[str, str]] = (),
                   pruned_test: float | None = None) -> None:
    """``report.png`` and ``report.html`` (the figure, a summary and the base/pruned comparison).

    A comparison timing that should not be read as a fact (:func:`amc.evaluation.compare.comparison_doubts`) is
    marked in ``report.html`` and logged as a warning, with how to time reliably.
    """
    from amc.evaluation.compare import TIMING_HINT, compare_models, comparison_doubts
    from search.report import write_html, write_report

    step = phase or (lambda what: contextlib.nullcontext())
    best = problem.best
    title = (f"{config.strategy} on {config.context.model}/{config.context.dataset}, budget {config.budget:g} "
             f"{config.context.resource}")
    with step("drawing report.png"):
        png = write_report(out / "report.png", problem.records, ctx.graph, best=best, uniform_keep=uniform,
                           budget=config.budget, title=title)
    # A stopped search (a cancel, Ctrl-C) is not timed: it should exit at once, and --resume writes the full report.
    batches = () if interrupted else (1, 64)
    with step("timing the base and pruned models for report.html" if batches else "measuring the models"):
        comparison = compare_models({"base": ctx.model, "pruned": pruned}, ctx.data.test, batches=batches,
                                    min_run_time=REPORT_RUN_TIME, repeats=REPORT_REPEATS,
                                    test_accuracy={"base": acc.base_test,
                                                   "pruned": acc.test if pruned_test is None else pruned_test})
    doubts = comparison_doubts(*comparison)
    if doubts:
        log.warning("report.html: %s. %s", "; ".join(d.reason for d in doubts), TIMING_HINT)
    summary = [("evaluations", str(problem.count)), ("best evaluation", str(best.index)),
               ("validation accuracy (base / best / uniform)",
                f"{acc.base_val:.4f} / {best.accuracy:.4f} / {uniform_val:.4f}"),
               ("test accuracy (base / best / uniform)",
                f"{acc.base_test:.4f} / {acc.test:.4f} / {acc.uniform_test:.4f}"),
               (f"{problem.cost_model.resource} ratio", f"{best.cost_ratio:.4f} (budget {config.budget:g})"),
               *latency_rows, *extra,
               *([("dropped blocks", ", ".join(best.dropped) or "none")] if ctx.blocks else []),
               ("per-layer keep ratios", ", ".join(f"{n}: {k:.2f}" for n, k in zip(ctx.graph.names, best.keep))),
               ("duration", f"{seconds:.1f} s" + (" (interrupted)" if interrupted else ""))]
    with step("writing report.html"):
        write_html(out / "report.html", png, title=title, summary=summary, comparison=comparison, doubts=doubts,
                   hint=TIMING_HINT)


LAYERS_FILE = "layers.json"  # per-layer widths of the base, best and uniform models (the service's view draws them)


def write_layers(path: Path, *, names: Sequence[str], base: Sequence[int], best: Policy, uniform: Policy,
                 uniform_cost_ratio: float) -> None:
    """Writes each layer's base width and the best and uniform policies' keep ratios and widths, atomically (a
    reader sees all of it or nothing).

    Args:
        path: ``<run folder>/layers.json``.
        names: The layers, in the graph's order.
        base: Their base widths (output channels).
        best, uniform: The best and the uniform policy.
        uniform_cost_ratio: The uniform policy's cost ratio.
    """
    layers = [{"name": name, "base": int(width), "best_keep": best.keep.get(name),
               "best": (best.channels or {}).get(name), "uniform_keep": uniform.keep.get(name),
               "uniform": (uniform.channels or {}).get(name)} for name, width in zip(names, base)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"layers": layers, "uniform_cost_ratio": uniform_cost_ratio}) + "\n")
    os.replace(tmp, path)
