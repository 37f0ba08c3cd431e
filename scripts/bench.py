#!/usr/bin/env python
"""Benchmarks. ``python scripts/bench.py overhead`` (more subcommands: see --help)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402


def _overhead(args: argparse.Namespace, console: Console) -> int:
    from search.bench_core import OverheadRow, overhead

    table = Table(title="evaluate(policy) vs the forward passes it contains (BN recalibration + validation)")
    for col in ("setup", "val samples", "evaluate ms", "forward ms", "not forward"):
        table.add_column(col, justify="right")
    for row in overhead(policies=args.policies, seed=args.seed, fashion_dir=args.data_dir):
        if isinstance(row, OverheadRow):
            table.add_row(row.setup, str(row.val_samples), f"{row.evaluate_ms:.1f}", f"{row.forward_ms:.1f}",
                          f"{100 * row.overhead:.1f}%")
        else:
            console.print(row)
    console.print(table)
    return 0


def _env(args: argparse.Namespace, console: Console) -> int:
    from search.bench_env import env_speed

    table = Table(title="PruningEnv steps/s with a stub evaluator (budget clipping on)")
    for col in ("model", "granularity", "layers", "steps", "steps/s"):
        table.add_column(col, justify="right")
    for row in env_speed(args.model, steps=args.steps):
        table.add_row(row.model, row.granularity, str(row.layers), str(row.steps), f"{row.steps_per_second:,.0f}")
    console.print(table)
    return 0


def _quality(args: argparse.Namespace, console: Console) -> int:
    import torch

    from search.bench_quality import quality, quality_markdown, update_section

    torch.set_num_threads(args.threads)
    budgets = tuple(float(b) for b in args.budgets.split(","))
    seeds = tuple(int(s) for s in args.seeds.split(","))

    def on_cell(cell, seconds):
        console.print(f"budget {cell.budget:g} {cell.label:<11} seed {cell.seed}: val {cell.val_accuracy:.4f} "
                      f"test {cell.test_accuracy:.4f} ratio {cell.cost_ratio:.3f} ({seconds / 60:.1f} min)")

    cells = quality(Path(args.root), budgets=budgets, seeds=seeds, evaluations=args.evaluations, on_cell=on_cell)
    command = "python scripts/bench.py quality " + " ".join(sys.argv[2:])
    body = quality_markdown(cells, evaluations=args.evaluations, command=command.strip())
    console.print(body)
    update_section(Path(args.markdown), "quality", body, title="Search quality: cnn / digits, no fine-tuning")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("overhead", help="evaluation time vs its bare forward passes")
    p.add_argument("--policies", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="fashion-mnist IDX directory")
    p.set_defaults(run=_overhead)
    p = sub.add_parser("env", help="environment steps per second with a stub evaluator")
    p.add_argument("--model", default="resnet56")
    p.add_argument("--steps", type=int, default=20000)
    p.set_defaults(run=_env)
    p = sub.add_parser("quality", help="strategies at equal evaluation counts (cnn/digits)")
    p.add_argument("--budgets", default="0.2,0.3")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--evaluations", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--root", default="runs/bench", help="cells are cached here; a rerun skips finished cells")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=_quality)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    return args.run(args, Console())


if __name__ == "__main__":
    sys.exit(main())
