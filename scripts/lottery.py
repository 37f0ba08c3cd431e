#!/usr/bin/env python
"""Lottery-ticket experiments: iterative magnitude pruning with rewinding vs random re-initialisation.

    python scripts/lottery.py --rounds 5 --prune-per-round 0.2 --seeds 0,1,2 --out runs/lottery
    python scripts/lottery.py --rewind-epoch 2 --out runs/lottery-late      # late rewinding
    python scripts/lottery.py --out runs/lottery --markdown BENCHMARKS.md   # also write the table there

Each seed trains the dense network, then prunes --prune-per-round of the remaining weights per round,
rewinds the survivors to their initial (or --rewind-epoch) values and retrains; the control trains the
same mask from a fresh random init. Rows go to <out>/lottery.csv (one per seed and round); a rerun with
the same settings skips the seeds already there. Prints mean +- std over the seeds per round.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amc.cli import OneLineParser, int_at_least, number_in  # noqa: E402

CSV_NAME = "lottery.csv"
SETTINGS_NAME = "settings.json"
FIELDS = ("seed", "round", "sparsity", "ticket_val", "ticket_test", "random_val", "random_test", "seconds")


_fraction = number_in(0, 1, high_closed=False, meaning=" (fraction of the remaining weights)")
_unit = number_in(0, 1, low_closed=True)
_positive_float = number_in(0, math.inf, high_closed=False)


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers like 0,1,2, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"lists a seed twice: {text!r}")
    return seeds


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="lottery.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn", help="built-in model or package.module:factory (cnn)")
    p.add_argument("--dataset", default="digits", help="digits, fashion-mnist, mnist or cifar10 (digits)")
    p.add_argument("--data-dir", default=None, help="folder of fashion-mnist / mnist / cifar10 files")
    p.add_argument("--rounds", type=int_at_least(1), default=5, help="pruning rounds after the dense round (5)")
    p.add_argument("--prune-per-round", type=_fraction, default=0.2,
                   help="fraction of the remaining weights removed per round, in (0, 1) (0.2)")
    p.add_argument("--rewind-epoch", type=int_at_least(0), default=0,
                   help="0: rewind to the initial weights; k: to those after k epochs (0)")
    p.add_argument("--epochs", type=int_at_least(1), default=15, help="training epochs of every round (15)")
    p.add_argument("--lr", type=_positive_float, default=0.05, help="peak learning rate (0.05)")
    p.add_argument("--batch-size", type=int_at_least(1), default=64, help="batch size (64)")
    p.add_argument("--output-layer-rate", type=_unit, default=0.5,
                   help="the final classifier is pruned at this multiple of the rate; 0 keeps it dense (0.5)")
    p.add_argument("--per-layer", action="store_true", help="prune each layer at the rate (default: one global threshold)")
    p.add_argument("--seeds", type=_seeds, default=(0, 1, 2), help="comma-separated seeds (0,1,2)")
    p.add_argument("--out", default="runs/lottery", help="folder of lottery.csv; a rerun skips finished seeds")
    p.add_argument("--markdown", default=None, help="also write the table as the 'lottery' section of this file")
    p.add_argument("--threads", type=int_at_least(1), default=1, help="torch threads (1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def settings_of(args: argparse.Namespace) -> dict:
    """What the rows depend on: a rerun into the same --out must use the same values."""
    return {"model": args.model, "dataset": args.dataset, "data_dir": args.data_dir, "rounds": args.rounds,
            "prune_per_round": args.prune_per_round, "rewind_epoch": args.rewind_epoch, "epochs": args.epochs,
            "lr": args.lr, "batch_size": args.batch_size, "output_layer_rate": args.output_layer_rate,
            "global_pruning": not args.per_layer}


def command_of(args: argparse.Namespace) -> str:
    """The command with every setting spelled out (without --out, --markdown and --quiet)."""
    parts = ["python scripts/lottery.py", f"--model {args.model}", f"--dataset {args.dataset}"]
    if args.data_dir:
        parts.append(f"--data-dir {args.data_dir}")
    parts += [f"--rounds {args.rounds}", f"--prune-per-round {args.prune_per_round:g}",
              f"--rewind-epoch {args.rewind_epoch}", f"--epochs {args.epochs}", f"--lr {args.lr:g}",
              f"--batch-size {args.batch_size}", f"--output-layer-rate {args.output_layer_rate:g}"]
    if args.per_layer:
        parts.append("--per-layer")
    parts += [f"--seeds {','.join(map(str, args.seeds))}", f"--threads {args.threads}"]
    return " ".join(parts)


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: (int(v) if k in ("seed", "round") else float(v) if v != "" else None) for k, v in row.items()}
                for row in csv.DictReader(f)]


def write_rows(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for row in sorted(rows, key=lambda r: (r["seed"], r["round"])):
            writer.writerow({k: "" if row[k] is None else row[k] for k in FIELDS})
    os.replace(tmp, path)  # atomic: an interrupted run never leaves half a seed


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}"


def summary(rows: list[dict], seeds: tuple[int, ...]) -> list[tuple[str, ...]]:
    """One line per round: round, sparsity, ticket test, random re-init test, ticket - random, seeds."""
    lines = []
    for round_ in sorted({r["round"] for r in rows}):
        at = [r for r in rows if r["round"] == round_ and r["seed"] in seeds]
        ticket = [r["ticket_test"] for r in at]
        random = [r["random_test"] for r in at if r["random_test"] is not None]
        gap = [r["ticket_test"] - r["random_test"] for r in at if r["random_test"] is not None]
        lines.append((str(round_), f"{100 * statistics.fmean(r['sparsity'] for r in at):.1f}%", _mean_std(ticket),
                      _mean_std(random), _mean_std(gap), str(len(at))))
    return lines


HEADER = ("round", "sparsity", "ticket test %", "random re-init test %", "ticket − random (pts)", "seeds")


def markdown_body(args: argparse.Namespace, lines: list[tuple[str, ...]], seconds: float) -> str:
    rewind = "the initial weights" if args.rewind_epoch == 0 else f"the weights after epoch {args.rewind_epoch}"
    pruning = "per layer" if args.per_layer else "one global magnitude threshold over all conv/linear weights"
    return "\n".join([
        f"Command: `{command_of(args)}`  ",
        (f"Seeds {', '.join(map(str, args.seeds))}; {args.model} on {args.dataset}; {args.rounds} rounds removing "
        f"{100 * args.prune_per_round:g}% of the remaining weights each ({pruning}; the final classifier at "
        f"{args.output_layer_rate:g}x that rate); survivors rewound to {rewind} (biases and BatchNorm too) and "
        f"retrained for {args.epochs - args.rewind_epoch} epochs (SGD, one-cycle schedule of {args.epochs} epochs, "
        f"lr {args.lr:g}, batch {args.batch_size}). Random re-init: the same mask on a fresh, differently seeded "
        f"init, trained identically; round 0 is the dense network (its control: another init). Test accuracy "
        f"in %, mean ± sample std over the seeds; sparsity = zero fraction of all conv/linear weights. "
        f"{seconds / 60:.1f} min of compute with {args.threads} torch thread(s)."),
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *("| " + " | ".join(line) + " |" for line in lines),
        "",
    ])


def run(args: argparse.Namespace, console) -> int:
    import torch
    from rich.table import Table

    from amc.data import load_dataset
    from amc.lottery import LotteryConfig, LotteryExperiment, run_lottery
    from amc.train import TrainConfig

    torch.set_num_threads(args.threads)
    train = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size)
    configs = {seed: LotteryConfig(rounds=args.rounds, prune_per_round=args.prune_per_round,
                                   rewind_epoch=args.rewind_epoch, train=train, global_pruning=not args.per_layer,
                                   output_layer_rate=args.output_layer_rate, seed=seed) for seed in args.seeds}
    data = load_dataset(args.dataset, root=args.data_dir)
    LotteryExperiment(args.model, data, configs[args.seeds[0]]).build(0)  # an unknown model fails now, not later

    out = Path(args.out)
    settings = settings_of(args)
    settings_path, csv_path = out / SETTINGS_NAME, out / CSV_NAME
    try:
        out.mkdir(parents=True, exist_ok=True)
        if settings_path.is_file():
            saved = json.loads(settings_path.read_text())
            if saved != settings:
                changed = ", ".join(f"{k} {saved.get(k)!r} there, {v!r} now" for k, v in settings.items()
                                    if saved.get(k) != v)
                raise SettingsError(f"{out} holds rows of other settings ({changed}); use another --out")
        else:
            settings_path.write_text(json.dumps(settings, indent=2) + "\n")
        rows = read_rows(csv_path)
    except OSError as exc:
        raise SettingsError(f"cannot use --out {str(out)!r} ({exc}); pass a writable folder") from exc
    except (ValueError, KeyError) as exc:
        raise SettingsError(f"{csv_path} or {settings_path} is malformed ({exc}); use another --out") from exc

    complete = {s for s in {r["seed"] for r in rows}
                if {r["round"] for r in rows if r["seed"] == s} == set(range(args.rounds + 1))}
    rows = [r for r in rows if r["seed"] in complete]  # rows of an interrupted seed are redone
    start = time.perf_counter()
    for seed in args.seeds:
        if seed in complete:
            console.print(f"seed {seed}: already in {csv_path}, skipped")
            continue
        seed_start = time.perf_counter()
        rounds = run_lottery(args.model, data, configs[seed], progress=not args.quiet)
        rows += [{"seed": seed, **{k: getattr(r, k) for k in FIELDS[1:]}} for r in rounds]
        write_rows(csv_path, rows)
        console.print(f"seed {seed}: done in {time.perf_counter() - seed_start:.1f} s; final ticket test "
                      f"{rounds[-1].ticket_test:.4f}, random re-init {rounds[-1].random_test:.4f} "
                      f"at sparsity {rounds[-1].sparsity:.3f}")
    lines = summary(rows, args.seeds)
    table = Table(title=f"Lottery tickets: {args.model} / {args.dataset}, mean ± std over seeds {list(args.seeds)}")
    for col in HEADER:
        table.add_column(col, justify="right")
    for line in lines:
        table.add_row(*line)
    console.print(table)
    compute = sum(r["seconds"] for r in rows if r["seed"] in args.seeds)
    console.print(f"rows in {csv_path}; {compute:.1f} s of compute ({time.perf_counter() - start:.1f} s this run)")
    if args.markdown:
        from search.bench_quality import update_section

        rewind = "rewind to init" if args.rewind_epoch == 0 else f"rewind to epoch {args.rewind_epoch}"
        update_section(Path(args.markdown), "lottery", markdown_body(args, lines, compute),
                       title=f"Lottery tickets: {args.model} / {args.dataset}, {rewind}")
        console.print(f"wrote the 'lottery' section of {args.markdown}")
    return 0


class SettingsError(Exception):
    """--out cannot be used (reported like a bad argument: one line, exit code 2)."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console

    from amc.errors import AmcError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args, Console())
    except (AmcError, SettingsError) as exc:
        print(f"lottery.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lottery.py: interrupted; finished seeds are in {args.out}/{CSV_NAME}, rerun to continue",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
