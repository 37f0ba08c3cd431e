"""Search per-layer pruning ratios that keep the most accuracy under a resource budget.

    python scripts/search.py --budget 0.3                      # keep <= 30% of the base model's FLOPs
    python scripts/search.py --budget 0.5 --strategy optuna --sampler tpe --evaluations 200
    python scripts/search.py --config run.toml --resume --out runs/my-run

Options given on the command line override those of ``--config`` (a TOML file whose keys are the
long option names, e.g. ``budget = 0.3``, ``strategy = "optuna"``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from search.cli.common import (OneLineParser, comma_list, dataset_name, device_name, int_at_least, json_object, number_in,
                     score_name)

DEFAULTS = {
    "budget": 0.3, "resource": "flops", "strategy": "optuna", "sampler": "tpe", "evaluations": 300, "warmup": None,
    "model": "cnn", "checkpoint": None, "dataset": "digits", "data_dir": None, "criterion": "l1",
    "granularity": "channel", "seed": 0, "out": None, "resume": False, "min_keep": 0.2, "max_keep": 1.0,
    "reward": "acc", "round_to": 1, "val_size": None, "train_limit": None, "storage": None, "threads": None,
    "workers": None, "threads_per_worker": 1, "ray_address": None, "no_export": False, "quiet": False,
    "latency_batch": 1, "val_limit": None, "epochs": 60, "score": "reconstruct", "ladder": None, "ladder_top_k": 8, "pruner": "halving",
    "model_kwargs": None, "dataset_kwargs": None, "device": "cpu", "gpus_per_worker": None, "loader_workers": 2,
}


_budget = number_in(0, 1, meaning=" (fraction of the base cost kept)")
_positive_int = int_at_least(1)
_gpu_share = number_in(0, 64, low_closed=True, meaning=" (GPUs per worker; fractions share a GPU)")


def build_parser() -> argparse.ArgumentParser:
    from amc.choices import CRITERIA
    from envs.rewards import REWARDS
    from search.config import PRUNERS, RESOURCES, SAMPLERS, STRATEGIES

    p = OneLineParser(prog="search.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                      argument_default=argparse.SUPPRESS)
    p.add_argument("--budget", type=_budget, help="fraction of the base model's resource to keep, in (0, 1] (0.3)")
    p.add_argument("--resource", choices=RESOURCES, help="constrained resource (flops)")
    p.add_argument("--latency-batch", dest="latency_batch", type=_positive_int,
                   help="batch size the latency budget is measured at (--resource latency; 1)")
    p.add_argument("--strategy", choices=STRATEGIES, help="search strategy (optuna: best in BENCHMARKS.md; ddpg is AMC's agent)")
    p.add_argument("--sampler", choices=SAMPLERS, help="Optuna sampler (tpe)")
    p.add_argument("--evaluations", type=_positive_int, help="policies to evaluate (300)")
    p.add_argument("--warmup", type=int, help="RL warm-up episodes (a quarter of --evaluations, at most 100)")
    p.add_argument("--model", help="built-in model or package.module:factory (cnn)")
    p.add_argument("--checkpoint", help="trained state_dict of --model (default: train and cache one)")
    p.add_argument("--model-kwargs", dest="model_kwargs", type=json_object,
                   help="extra keyword arguments of the model factory, a JSON object (none)")
    p.add_argument("--dataset", type=dataset_name,
                   help="digits, fashion-mnist, mnist, cifar10, imagefolder or package.module:factory (digits)")
    p.add_argument("--data-dir", dest="data_dir",
                   help="folder of fashion-mnist / mnist / cifar10 files, of an imagefolder, or a factory's data_dir")
    p.add_argument("--dataset-kwargs", dest="dataset_kwargs", type=json_object,
                   help="imagefolder settings or dataset-factory arguments, a JSON object, e.g. '{\"size\": 64}'")
    p.add_argument("--loader-workers", dest="loader_workers", type=int_at_least(0),
                   help="DataLoader processes that read an imagefolder or factory dataset (2)")
    p.add_argument("--device", type=device_name,
                   help="cpu, cuda or cuda:N: base training, evaluation and latency timing (cpu)")
    p.add_argument("--criterion", choices=CRITERIA, help="which channels go first (l1)")
    p.add_argument("--score", type=score_name,
                   help="candidate score: bn, reconstruct, finetune:K or finetune:K+kd (reconstruct: the cheapest score "
                        "that ranks candidates as fine-tuning does; BENCHMARKS.md, score fidelity)")
    p.add_argument("--ladder", type=comma_list(score_name),
                   help="costlier scores for the promising candidates, e.g. finetune:50: inside an Optuna study "
                        "through --pruner, else re-ranking the best after the search (none)")
    p.add_argument("--ladder-top-k", dest="ladder_top_k", type=_positive_int,
                   help="candidates the first ladder rung re-scores after a non-Optuna search; each later rung "
                        "keeps half (8)")
    p.add_argument("--pruner", choices=PRUNERS,
                   help="Optuna's pruner of a ladder: successive halving or hyperband (halving)")
    p.add_argument("--granularity", choices=("channel", "weight"), help="structured or unstructured (channel)")
    p.add_argument("--seed", type=int, help="seed of data splits, training and search (0)")
    p.add_argument("--out", help="run folder (runs/<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--min-keep", dest="min_keep", type=float, help="lowest keep ratio of a layer (0.2)")
    p.add_argument("--max-keep", dest="max_keep", type=float, help="highest keep ratio of a layer (1.0)")
    p.add_argument("--reward", choices=sorted(REWARDS), help="episode reward (acc)")
    p.add_argument("--round-to", dest="round_to", type=_positive_int, help="channel counts are multiples of this (1)")
    p.add_argument("--val-size", dest="val_size", type=int, help="validation samples carved from train")
    p.add_argument("--train-limit", dest="train_limit", type=_positive_int, help="use at most N training samples")
    p.add_argument("--val-limit", dest="val_limit", type=_positive_int,
                   help="evaluate candidates on the first N validation samples (all)")
    p.add_argument("--epochs", type=_positive_int, help="epochs of base-model training when it is not cached (60)")
    p.add_argument("--storage", help="Optuna RDB URL (sqlite:///<out>/study.db)")
    p.add_argument("--threads", type=_positive_int, help="torch threads of this process")
    p.add_argument("--workers", type=_positive_int,
                   help="parallel evaluation workers on Ray (1: no Ray; with --ray-address: the cluster's CPUs)")
    p.add_argument("--threads-per-worker", dest="threads_per_worker", type=_positive_int,
                   help="torch threads of each worker (1)")
    p.add_argument("--gpus-per-worker", dest="gpus_per_worker", type=_gpu_share,
                   help="GPUs each worker reserves with --device cuda, fractions allowed (an equal share, at most 1)")
    p.add_argument("--ray-address", dest="ray_address", help="join a Ray cluster: auto or host:port")
    p.add_argument("--no-export", dest="no_export", action="store_true", help="do not write pruned.pt2")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--config", help="TOML file of option values")
    return p


def load_toml(path: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigFileError(f"cannot read --config {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"--config {path!r} is not valid TOML: {exc}") from None
    values = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(values) - set(DEFAULTS))
    if unknown:
        raise ConfigFileError(f"unknown key(s) {unknown} in --config {path!r}; use the long option names "
                              f"({', '.join(sorted(DEFAULTS))})")
    return values


class ConfigFileError(Exception):
    """A --config file that cannot be used (reported like any bad argument: one line, exit code 2)."""


_FLAGS = ("resume", "no_export", "quiet")
_JSON_KEYS = ("model_kwargs", "dataset_kwargs")  # TOML tables (or JSON strings)


def toml_argv(values: dict, path: str) -> list[str]:
    """The command line a --config file stands for, so its values pass the same checks as options."""
    argv = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if key in _FLAGS:
            if not isinstance(value, bool):
                raise ConfigFileError(f"{key} in --config {path!r} must be true or false, got {value!r}")
            argv += [flag] if value else []
        elif key in _JSON_KEYS and isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        elif isinstance(value, (bool, dict, list)):
            raise ConfigFileError(f"{key} in --config {path!r} must be a number or a string, got {value!r}")
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def resolve_options(argv: list[str] | None) -> dict:
    """Defaults, then --config, then the command line."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    options = dict(DEFAULTS)
    if "config" in args:
        path = args.pop("config")
        options.update(vars(parser.parse_args(toml_argv(load_toml(path), path))))
    options.update(args)
    if options["out"] is None:
        options["out"] = str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    return options


def build_config(options: dict):
    """Frozen configs from the resolved options (the only place that reads them)."""
    from amc.context import ContextConfig
    from amc.evaluation.evaluator import EvalConfig
    from amc.cost.latency import LatencyConfig
    from amc.train import TrainConfig
    from search.config import SearchConfig

    context = ContextConfig(
        model=options["model"], dataset=options["dataset"], data_dir=options["data_dir"],
        checkpoint=options["checkpoint"], seed=options["seed"], resource=options["resource"],
        round_to=options["round_to"], val_size=options["val_size"], train_limit=options["train_limit"],
        model_kwargs=tuple((options["model_kwargs"] or {}).items()),
        dataset_kwargs=tuple((options["dataset_kwargs"] or {}).items()),
        device=options["device"], loader_workers=options["loader_workers"],
        eval=EvalConfig(criterion=options["criterion"], granularity=options["granularity"], seed=options["seed"],
                        score=options["score"],
                        val_limit=options["val_limit"]),
        train=TrainConfig(epochs=options["epochs"]),
        latency=LatencyConfig(batch_size=options["latency_batch"], threads=options["threads"],
                              device=options["device"] if options["resource"] == "latency" else "cpu"),
    )
    return SearchConfig(
        budget=options["budget"], strategy=options["strategy"], sampler=options["sampler"],
        evaluations=options["evaluations"], warmup=options["warmup"], min_keep=options["min_keep"],
        max_keep=options["max_keep"], reward=options["reward"], out=options["out"], resume=options["resume"],
        storage=options["storage"], context=context, progress=not options["quiet"], export=not options["no_export"],
        workers=options["workers"] if options["workers"] is not None else (None if options["ray_address"] else 1),
        threads_per_worker=options["threads_per_worker"], ray_address=options["ray_address"],
        gpus_per_worker=options["gpus_per_worker"],
        ladder=tuple(options["ladder"] or ()), ladder_top_k=options["ladder_top_k"], pruner=options["pruner"],
    )


def summary_table(result):
    from rich.table import Table

    table = Table(title=f"{result.policy.meta['strategy']} search: {result.out}")
    table.add_column("", style="bold")
    table.add_column("val acc", justify="right")
    table.add_column("test acc", justify="right")
    table.add_column("cost ratio", justify="right")
    table.add_row("base model", f"{result.base_val_accuracy:.4f}", f"{result.base_test_accuracy:.4f}", "1.0000")
    table.add_row("searched policy", f"{result.best.accuracy:.4f}", f"{result.test_accuracy:.4f}",
                  f"{result.best.cost_ratio:.4f}")
    table.add_row("uniform policy", f"{result.uniform.accuracy:.4f}", f"{result.uniform_test_accuracy:.4f}",
                  f"{result.uniform.cost_ratio:.4f}")
    layers = Table(title="per-layer keep ratios (channels)")
    layers.add_column("layer")
    layers.add_column("searched", justify="right")
    layers.add_column("uniform", justify="right")
    for name, keep, uni in zip(result.layer_names, result.best.keep, result.uniform.keep):
        layers.add_row(name, f"{keep:.3f} ({result.policy.channels[name]})",
                       f"{uni:.3f} ({result.uniform_policy.channels[name]})")
    return table, layers


def main(argv: list[str] | None = None) -> int:
    try:
        options = resolve_options(argv)
    except ConfigFileError as exc:
        print(f"search.py: error: {exc}", file=sys.stderr)
        return 2
    from rich.console import Console
    from rich.logging import RichHandler

    from amc.errors import AmcError

    console = Console(stderr=True)
    # The console shows warnings and errors; the run's INFO log goes to runs/<name>/run.log.
    console_handler = RichHandler(console=console, show_path=False, level=logging.WARNING)
    logging.basicConfig(level=logging.WARNING, handlers=[console_handler], format="%(message)s")
    try:
        config = build_config(options)
        if options["threads"]:
            import torch

            torch.set_num_threads(options["threads"])
        from search.runner import run_search

        result = run_search(config)
    except AmcError as exc:
        print(f"search.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"search.py: interrupted; every evaluated policy is in {options['out']}/history.csv "
              "(if any); continue with --resume", file=sys.stderr)
        return 130
    out = Console()
    for table in summary_table(result):
        out.print(table)
    metrics = result.policy.metrics
    if "latency_ratio_measured" in metrics:
        exported = metrics.get("latency_ratio_measured_exported")
        out.print(f"FLOPs ratio {metrics['flops_ratio']:.4f}, latency ratio predicted "
                  f"{metrics['latency_ratio_predicted']:.4f}, measured {metrics['latency_ratio_measured']:.4f} "
                  f"({metrics['latency_ms_measured']:.3f} ms vs {metrics['base_latency_ms_measured']:.3f} ms)"
                  + (f", exported program {exported:.4f} ({metrics['latency_ms_measured_exported']:.3f} ms vs "
                     f"{metrics['base_latency_ms_measured_exported']:.3f} ms)" if exported is not None else ""))
    wrote_program = config.export and (result.out / "pruned.pt2").exists()
    out.print(f"wrote {result.out}/policy.json, history.csv, report.png, report.html"
              + (", pruned.pt2" if wrote_program else "") + f" in {result.seconds:.1f} s"
              + (" (interrupted: best so far)" if result.interrupted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
