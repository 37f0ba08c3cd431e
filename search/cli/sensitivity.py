"""Per-layer sensitivity: prune each layer alone at keep ratios 0.1..1.0, record validation accuracy.

Writes ``sensitivity.csv`` (layer, keep, val_accuracy) and ``sensitivity.png`` (one curve per layer) to
``--out``. ``python scripts/search.py --strategy sensitivity`` turns such curves into a policy.

    python scripts/sensitivity.py                                   # cnn on digits
    python scripts/sensitivity.py --model resnet20 --dataset fashion-mnist --val-size 5000 --val-limit 1000
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from search.cli.common import OneLineParser, int_at_least


def _keeps(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers in (0, 1], got {text!r}") from None
    if not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers in (0, 1], got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    from amc.analysis.sensitivity import DEFAULT_KEEPS
    from amc.data.names import DATASETS
    from amc.pruning.criteria import criterion_names

    p = OneLineParser(prog="sensitivity.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn")
    p.add_argument("--dataset", default="digits", choices=DATASETS)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--checkpoint", default=None, help="trained state_dict (default: train and cache one)")
    p.add_argument("--epochs", type=int_at_least(1), default=60, help="base-model training epochs when not cached (60)")
    p.add_argument("--val-size", type=int_at_least(1), default=None, help="validation samples carved from train")
    p.add_argument("--val-limit", type=int_at_least(1), default=None, help="evaluate on the first N validation samples")
    p.add_argument("--criterion", default="l1", choices=criterion_names())
    p.add_argument("--round-to", type=int_at_least(1), default=1)
    p.add_argument("--keeps", type=_keeps, default=DEFAULT_KEEPS, help="keep ratios (0.1,0.2,...,1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int_at_least(1), default=None)
    p.add_argument("--out", default="runs/sensitivity")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch
    from rich.console import Console
    from rich.table import Table

    from amc.analysis.sensitivity import plot_curves, sensitivity_curves, write_csv
    from amc.context import ContextConfig, build_context
    from amc.errors import AmcError
    from amc.evaluation.evaluator import EvalConfig
    from amc.train import TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        ctx = build_context(ContextConfig(
            model=args.model, dataset=args.dataset, data_dir=args.data_dir, checkpoint=args.checkpoint,
            seed=args.seed, round_to=args.round_to, val_size=args.val_size, train=TrainConfig(epochs=args.epochs),
            eval=EvalConfig(criterion=args.criterion, val_limit=args.val_limit, seed=args.seed)),
            progress=not args.quiet)
        ready = time.perf_counter()
        curves = sensitivity_curves(ctx.evaluator, ctx.graph, args.keeps, progress=not args.quiet)
    except AmcError as exc:
        print(f"sensitivity.py: error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - ready
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(curves, out / "sensitivity.csv")
    plot_curves(curves, out / "sensitivity.png", title=f"{args.model} / {args.dataset}: one layer pruned at a time")
    table = Table(title=f"val accuracy with one layer pruned ({args.model} / {args.dataset})")
    table.add_column("layer")
    shown = [k for k in curves[0].keeps if k in (0.1, 0.3, 0.5, 0.7, 1.0)] or list(curves[0].keeps)
    for k in shown:
        table.add_column(f"keep {k:g}", justify="right")
    for curve in curves:
        table.add_row(curve.layer, *(f"{curve.at(k):.4f}" for k in shown))
    console = Console()
    console.print(table)
    console.print(f"{len(curves)} layers x {len(curves[0].keeps) - 1} keep ratios in {seconds:.1f} s "
                  f"(plus {ready - start:.1f} s loading); wrote {out}/sensitivity.csv and sensitivity.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
