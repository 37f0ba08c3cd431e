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
import logging
import math
import sys
from dataclasses import fields
from pathlib import Path

from search.bench.lottery import (
    CSV_NAME,
    LotterySettings,
    SettingsError,
    lottery_report,
)
from search.cli.common import OneLineParser, int_at_least, number_in

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
    p.add_argument("--model", default="cnn", help="built-in model, timm:NAME, hf:PATH or package.module:factory (cnn)")
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


def settings_of(args: argparse.Namespace) -> LotterySettings:
    """The experiment's settings from the parsed options (all of them but --out, --markdown and --quiet)."""
    return LotterySettings(**{f.name: getattr(args, f.name) for f in fields(LotterySettings)})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console

    from amc.errors import AmcError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        lottery_report(settings_of(args), out=Path(args.out), markdown=Path(args.markdown) if args.markdown else None,
                       progress=not args.quiet, console=Console())
    except (AmcError, SettingsError) as exc:
        print(f"lottery.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lottery.py: interrupted; finished seeds are in {args.out}/{CSV_NAME}, rerun to continue",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
