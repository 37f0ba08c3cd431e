"""The handlers of ``scripts/bench.py``'s subcommands: each builds its benchmark's settings from the parsed
arguments and runs it (:func:`search.cli.bench.main` parses)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

def _command(name: str, rest: list[str]) -> str:
    """The command line of a benchmark section, as it was typed."""
    return ("python scripts/bench.py " + name + " " + " ".join(rest)).strip()


def run_overhead(args: argparse.Namespace, console: Console, rest: list[str]) -> int:
    from search.bench.overhead import OverheadConfig, overhead_report

    config = OverheadConfig(policies=args.policies, finetune_steps=args.finetune_steps, models=args.models,
                            paths=args.paths, search_evaluations=args.search_evaluations, val_limit=args.val_limit,
                            threads=args.threads, seed=args.seed, data_dir=args.data_dir, bn_batches=args.bn_batches,
                            dataset=args.dataset)
    overhead_report(config, root=Path(args.root), command=_command("overhead", rest), markdown=Path(args.markdown),
                    console=console)
    return 0


def run_env(args: argparse.Namespace, console: Console, rest: list[str]) -> int:
    from search.bench.env import env_report

    env_report(model=args.model, steps=args.steps, markdown=Path(args.markdown), console=console)
    return 0


def run_quality(args: argparse.Namespace, console: Console, rest: list[str]) -> int:
    from search.bench.quality import quality_report

    quality_report(Path(args.root), budgets=tuple(float(b) for b in args.budgets.split(",")),
                   seeds=tuple(int(s) for s in args.seeds.split(",")), evaluations=args.evaluations,
                   threads=args.threads, command=_command("quality", rest), markdown=Path(args.markdown),
                   console=console)
    return 0


def run_scaling(args: argparse.Namespace, console: Console, rest: list[str]) -> int:
    from search.bench.scaling import scaling_report

    scaling_report(Path(args.root), evaluations=args.evaluations, data_dir=args.data_dir, markdown=Path(args.markdown),
                   console=console)
    return 0


def run_latency(args: argparse.Namespace, console: Console, rest: list[str]) -> int:
    from search.bench.latency import latency_report

    latency_report(models=tuple(args.models.split(",")), batches=tuple(int(b) for b in args.batches.split(",")),
                   policies=args.policies, threads=args.threads, repeats=args.repeats, sample_time=args.sample_time,
                   round_to=args.round_to, command=_command("latency", rest), markdown=Path(args.markdown),
                   console=console)
    return 0


def run_finetune(args: argparse.Namespace, console: Console, rest: list[str]) -> int:
    from search.bench.finetune import finetune_report

    finetune_report(Path(args.root), budget=args.budget, evaluations=args.evaluations, epochs=args.epochs,
                    round_to=args.round_to, threads=args.threads, data_dir=args.data_dir,
                    command=_command("finetune", rest), markdown=Path(args.markdown), console=console)
    return 0


def run_iterative(args: argparse.Namespace, console: Console, rest: list[str]) -> int:
    from search.bench.iterative import iterative_report

    iterative_report(Path(args.root), budget=args.budget, seeds=tuple(int(s) for s in args.seeds.split(",")),
                     epochs=args.epochs, steps=args.steps, threads=args.threads, command=_command("iterative", rest),
                     markdown=Path(args.markdown), console=console)
    return 0


def _default_row(args: argparse.Namespace) -> dict:
    """The default row's settings of ``headline`` and ``vit`` (None: scripts/search.py's default)."""
    return dict(default_evaluations=args.default_evaluations, select=args.select, select_top_k=args.select_top_k,
                select_samples=args.select_samples, select_lr=args.select_lr,
                warm_start=tuple(args.warm_start) if args.warm_start else None,
                baselines=False if args.no_baselines else None)


def add_default_row_options(p: argparse.ArgumentParser) -> None:
    from search import values
    from search.cli.common import int_at_least, number_in
    from search.launch import argparse_type

    p.add_argument("--default-evaluations", type=int_at_least(1), default=None,
                   help="evaluations of the default row (scripts/search.py's default)")
    p.add_argument("--select", type=argparse_type(values.select_recipe), default=None,
                   help="the default row's deploy rung, finetune:EPOCHS or none (scripts/search.py's default)")
    p.add_argument("--select-top-k", type=int_at_least(1), default=None,
                   help="candidates the default row's deploy rung fine-tunes besides the baselines")
    p.add_argument("--select-samples", type=int_at_least(1), default=None,
                   help="training samples of each of the default row's deploy-rung fine-tunes")
    p.add_argument("--select-lr", type=number_in(0, 10), default=None,
                   help="learning rate of the default row's deploy-rung fine-tunes")
    p.add_argument("--warm-start", nargs="+", default=None, metavar="PATH",
                   help="policy.json files or run folders the default row starts from")
    p.add_argument("--no-baselines", action="store_true", help="the default row evaluates no baselines first")


def run_headline(args: argparse.Namespace, console: Console, rest: list[str]) -> int:
    from search.bench.headline import HeadlineSettings, headline_report

    settings = HeadlineSettings(budgets=args.budgets, seeds=args.seeds, evaluations=args.evaluations,
                                oracle_factor=args.oracle_factor, workers=args.workers,
                                finetune_epochs=args.finetune_epochs, finetune_samples=args.finetune_samples,
                                score=args.score, ladder=tuple(args.ladder or ()), rows=args.rows,
                                finetune_every_seed=args.finetune_every_seed, **_default_row(args))
    headline_report(Path(args.root), settings, threads=args.threads, data_dir=args.data_dir,
                    command=_command("headline", rest), markdown=Path(args.markdown), console=console)
    return 0


def run_vit(args: argparse.Namespace, console: Console, rest: list[str]) -> int:
    from search.bench.vit import VitSettings, vit_report

    settings = VitSettings(budget=args.budget, seeds=args.seeds, evaluations=args.evaluations, workers=args.workers,
                           finetune_epochs=args.finetune_epochs, finetune_samples=args.finetune_samples,
                           finetune_every_seed=not args.finetune_once, **_default_row(args))
    vit_report(Path(args.root), settings, base_epochs=args.base_epochs, threads=args.threads, data_dir=args.data_dir,
               command=_command("vit", rest), markdown=Path(args.markdown), console=console)
    return 0


def run_depth(args: argparse.Namespace, console: Console, rest: list[str]) -> int:
    from search.bench.depth import DepthSettings, depth_report

    settings = DepthSettings(models=tuple(args.models), budgets=tuple(args.budgets), batch_size=args.batch,
                             seeds=tuple(args.seeds), evaluations=args.evaluations, workers=args.workers,
                             base_epochs=args.base_epochs, finetune_epochs=args.finetune_epochs,
                             finetune_samples=args.finetune_samples, latency_processes=args.processes,
                             threads=args.threads, data_dir=args.data_dir)
    depth_report(Path(args.root), settings, command=_command("depth", rest), markdown=Path(args.markdown),
                 console=console)
    return 0


def run_compare(args: argparse.Namespace, console: Console, rest: list[str]) -> int:
    from amc.errors import ConfigError
    from search.bench.compare import compare_report, settings_of

    try:
        settings = settings_of(models=args.models, budgets=args.budgets, latency_budget=args.latency_budget,
                               rows=args.rows, ddpg_models=args.ddpg_models, seeds=args.seeds,
                               evaluations=args.evaluations,
                               workers=args.workers, finetune_epochs=args.finetune_epochs,
                               finetune_samples=args.finetune_samples, long_finetune_factor=args.long_finetune_factor,
                               long_budget=args.long_budget, score=args.score)
    except ConfigError as exc:
        print(f"bench.py compare: error: {exc}", file=sys.stderr)
        return 2
    compare_report(Path(args.root), settings, threads=args.threads, data_dir=args.data_dir,
                   command=_command("compare", rest), markdown=Path(args.markdown), console=console)
    return 0


def run_fidelity(args: argparse.Namespace, console: Console, rest: list[str]) -> int:
    from search.bench.fidelity import FidelitySettings, fidelity_report

    settings = FidelitySettings(budgets=args.budgets, policies=args.policies, scores=args.scores,
                                finetune_samples=args.finetune_samples)
    fidelity_report(Path(args.root), settings, threads=args.threads, data_dir=args.data_dir,
                    command=_command("fidelity", rest), markdown=Path(args.markdown), console=console)
    return 0


def run_deployed(args: argparse.Namespace, console: Console, rest: list[str]) -> int:
    from search.bench.common import BenchError
    from search.bench.deployed import deployed_report

    try:
        deployed_report(Path(args.policy), processes=args.processes, batch=args.batch, threads=args.threads,
                        repeats=args.repeats, sample_time=args.sample_time, export_again=args.export_again,
                        console=console)
    except (BenchError, RuntimeError) as exc:
        print(f"bench.py deployed: error: {exc}", file=sys.stderr)
        return 2
    return 0


def run_memory(args: argparse.Namespace, console: Console, rest: list[str]) -> int:
    from search.bench.common import BenchError
    from search.bench.memory import memory_report

    try:
        memory_report(Path(args.root).expanduser(), fashion_dir=Path(args.fashion_dir), evaluations=args.evaluations,
                      epochs=args.epochs, model=args.model, val_limit=args.val_limit, threads=args.threads,
                      loader_workers=args.loader_workers, command=_command("memory", rest),
                      markdown=Path(args.markdown), console=console)
    except BenchError as exc:
        print(f"bench.py memory: error: {exc}", file=sys.stderr)
        return 2
    return 0


def run_gpu(args: argparse.Namespace, console: Console, rest: list[str]) -> int:
    from search.bench.common import BenchError
    from search.bench.gpu import gpu_report

    try:
        gpu_report(Path(args.root), evaluations=args.evaluations, cpu_evaluations=args.cpu_evaluations,
                   epochs=args.epochs, workers=args.workers, threads=args.threads, data_dir=args.data_dir,
                   command=_command("gpu", rest), markdown=Path(args.markdown), console=console)
    except BenchError as exc:
        print(f"bench.py gpu: error: {exc}", file=sys.stderr)
        return 2
    return 0


def run_service_load(args: argparse.Namespace, console: Console, rest: list[str]) -> int:
    from search.bench.common import BenchError
    from search.bench.service_load import LoadSettings, service_load_report

    try:
        settings = LoadSettings(searches=args.searches, max_concurrent=args.max_concurrent,
                                evaluations=args.evaluations, strategy=args.strategy, seconds=args.poll_seconds,
                                rate=args.rate, timeout=args.timeout)
        service_load_report(settings, command=_command("service-load", rest), markdown=Path(args.markdown),
                            console=console)
    except BenchError as exc:
        print(f"bench.py service-load: error: {exc}", file=sys.stderr)
        return 2
    return 0


def run_threads(args: argparse.Namespace, console: Console, rest: list[str]) -> int:
    from search.bench.common import BenchError
    from search.bench.threads import threads_report

    try:
        threads_report(Path(args.root), models=args.models, threads=args.threads, evaluations=args.evaluations,
                       cell_timeout=args.cell_timeout, command=_command("threads", rest),
                       markdown=Path(args.markdown), console=console)
    except BenchError as exc:
        print(f"bench.py threads: error: {exc}", file=sys.stderr)
        return 2
    return 0


def run_lm(args: argparse.Namespace, console: Console, rest: list[str]) -> int:
    from amc.evaluation.lm_evaluator import LMEvalConfig
    from amc.lm_train import LMTrainConfig
    from search.bench.lm import LMBenchSettings, lm_report

    settings = LMBenchSettings(sparsities=tuple(args.sparsities),
                               nm_sparsities=() if args.no_nm else tuple(args.nm_sparsities),
                               seeds=tuple(args.seeds), evaluations=args.evaluations, workers=args.workers,
                               report_windows=args.report_windows, per=args.per, threads=args.threads,
                               train=LMTrainConfig(steps=args.train_steps),
                               eval=LMEvalConfig(criterion=args.criterion, heldout_windows=args.heldout_windows,
                                                 calibration_windows=args.calibration_windows))
    lm_report(Path(args.root), settings, command=_command("lm", rest), markdown=Path(args.markdown), console=console)
    return 0

