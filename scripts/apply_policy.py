#!/usr/bin/env python
"""Rebuild the pruned model from a policy.json and its base model, evaluate it, export pruned.pt2.

    python scripts/apply_policy.py runs/<run>/policy.json [--out DIR] [--checkpoint base.pt]

The model, data split, seed and evaluation settings come from the policy (recorded by the search);
the options below override them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="apply_policy.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("policy", help="policy.json written by a search")
    p.add_argument("--out", help="folder for pruned.pt2 (default: the policy's folder)")
    p.add_argument("--model", help="override the policy's model")
    p.add_argument("--checkpoint", help="trained state_dict of the base model")
    p.add_argument("--dataset", help="override the policy's dataset")
    p.add_argument("--data-dir", dest="data_dir", help="folder of file-based datasets")
    p.add_argument("--seed", type=int, help="override the policy's seed")
    p.add_argument("--no-export", dest="no_export", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from amc.apply import apply_policy
    from amc.errors import AmcError

    logging.basicConfig(level=logging.WARNING)
    out = args.out or str(Path(args.policy).resolve().parent)
    try:
        applied = apply_policy(args.policy, out=out, export=not args.no_export, progress=not args.quiet,
                               model=args.model, checkpoint=args.checkpoint, dataset=args.dataset,
                               data_dir=args.data_dir, seed=args.seed)
    except AmcError as exc:
        print(f"apply_policy.py: error: {exc}", file=sys.stderr)
        return 2
    recorded = applied.policy.metrics.get("val_accuracy")
    table = Table(title=f"policy {args.policy}")
    for col in ("", "val acc", "test acc", "cost ratio"):
        table.add_column(col, justify="right")
    if recorded is not None:
        table.add_row("recorded by the search", f"{recorded:.4f}",
                      f"{applied.policy.metrics.get('test_accuracy', float('nan')):.4f}",
                      f"{applied.policy.metrics.get('cost_ratio', float('nan')):.4f}")
    table.add_row("re-applied now", f"{applied.val_accuracy:.4f}", f"{applied.test_accuracy:.4f}",
                  f"{applied.cost_ratio:.4f}")
    console = Console()
    console.print(table)
    if applied.exported:
        console.print(f"wrote {applied.exported}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
