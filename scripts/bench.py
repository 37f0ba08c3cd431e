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
    from search.bench_quality import update_section

    lines = [f"Command: `python scripts/bench.py overhead --policies {args.policies}`  ",
             "Mean of random policies (keep 0.3-1.0); 'forward' = BN recalibration (8 x 128 train images) + "
             "validation passes of the same pruned model; the rest is copying, pruning and bookkeeping.", "",
             "| setup | val samples | evaluate ms | forward ms | not forward |", "|---|---|---|---|---|"]
    for row in overhead(policies=args.policies, seed=args.seed, fashion_dir=args.data_dir):
        if isinstance(row, OverheadRow):
            cells = (row.setup, str(row.val_samples), f"{row.evaluate_ms:.1f}", f"{row.forward_ms:.1f}",
                     f"{100 * row.overhead:.1f}%")
            table.add_row(*cells)
            lines.append("| " + " | ".join(cells) + " |")
        else:
            console.print(row)
            lines.append(f"\n{row}\n")
    console.print(table)
    update_section(Path(args.markdown), "overhead", "\n".join(lines) + "\n", title="Evaluation overhead")
    return 0


def _env(args: argparse.Namespace, console: Console) -> int:
    from search.bench_env import env_speed

    table = Table(title="PruningEnv steps/s with a stub evaluator (budget clipping on)")
    for col in ("model", "granularity", "layers", "steps", "steps/s"):
        table.add_column(col, justify="right")
    from search.bench_quality import update_section

    lines = [f"Command: `python scripts/bench.py env --model {args.model} --steps {args.steps}`  ",
             "Random actions, budget 0.5 FLOPs with AMC clipping on every step, a stub evaluator (instant).", "",
             "| model | granularity | layers | steps | steps/s |", "|---|---|---|---|---|"]
    for row in env_speed(args.model, steps=args.steps):
        cells = (row.model, row.granularity, str(row.layers), str(row.steps), f"{row.steps_per_second:,.0f}")
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    update_section(Path(args.markdown), "env", "\n".join(lines) + "\n", title="Environment speed")
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


def _scaling(args: argparse.Namespace, console: Console) -> int:
    from search.bench_quality import update_section
    from search.bench_scaling import scaling

    label, rows = scaling(Path(args.root), evaluations=args.evaluations, fashion_dir=args.data_dir)
    table = Table(title=f"evaluations per second: {label}")
    lines = [f"Command: `python scripts/bench.py scaling --evaluations {args.evaluations}`  ",
             f"Setup: {label}; random search, budget 0.5 FLOPs, seed 0, {args.evaluations} evaluations per mode; "
             "context and Ray pool built before timing.", "",
             "| mode | evals/s | speedup vs 1 worker | mean evaluation s | pool overhead ms/eval |", "|---|---|---|---|---|"]
    for col in ("mode", "evals/s", "vs 1 worker", "eval s", "overhead ms/eval"):
        table.add_column(col, justify="right")
    one = next(r for r in rows if r.mode.startswith("1 worker"))
    for row in rows:
        overhead = f"{row.overhead_ms:.1f}" if "worker" in row.mode else "-"
        speed = f"{row.per_second / one.per_second:.2f}x"
        table.add_row(row.mode, f"{row.per_second:.2f}", speed, f"{row.eval_seconds:.3f}", overhead)
        lines.append(f"| {row.mode} | {row.per_second:.2f} | {speed} | {row.eval_seconds:.3f} | {overhead} |")
    console.print(table)
    update_section(Path(args.markdown), "scaling", "\n".join(lines) + "\n", title="Parallel evaluation on Ray")
    return 0


def _latency(args: argparse.Namespace, console: Console) -> int:
    from search.bench_latency import latency_accuracy
    from search.bench_quality import update_section

    models = tuple(args.models.split(","))
    batches = tuple(int(b) for b in args.batches.split(","))

    def on_policy(model, batch, row):
        console.print(f"{model} batch {batch}: budget {row.budget:.2f} predicted {row.predicted_ms:.3f} ms "
                      f"measured {row.measured_ms:.3f} ms ({100 * row.error:+.1f}%), ratio {row.predicted_ratio:.3f} "
                      f"vs {row.measured_ratio:.3f} ({100 * row.ratio_error:+.1f}%)")

    command = "python scripts/bench.py latency " + " ".join(sys.argv[2:])
    lines = [f"Command: `{command.strip()}`  ",
             f"{args.policies} random feasible policies per row (random budget, random keep ratios projected onto "
             f"it), {args.threads} thread(s), round_to {args.round_to}, untrained weights, 1x28x28 inputs. The "
             f"base model and all policies are timed in the same interleaved rounds: median of {args.repeats} "
             f"samples of {args.sample_time:g} s each. "
             "'ms error': predicted vs measured latency; 'ratio error': predicted vs measured latency ratio "
             "(pruned / base), what a budget "
             "constrains. Build: the table measured from scratch; cached: loading it again. 'base now': the unpruned "
             "model timed with the policies, and its change since the table's calibration timed it (the "
             "machine's drift: it shifts every ms error alike and cancels in the ratio).", "",
             "| model | batch | decisions | build s | cached s | base ms | base now | ms error median "
             "| ms error worst | ratio error median | ratio error worst |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    table = Table(title="latency lookup table: predicted vs measured")
    for col in ("model", "batch", "decisions", "build s", "cached s", "base ms", "base now", "median err", "worst err",
                "median ratio err", "worst ratio err"):
        table.add_column(col, justify="right")
    for row in latency_accuracy(models, batches, policies=args.policies, threads=args.threads, repeats=args.repeats,
                                sample_time=args.sample_time, round_to=args.round_to, on_policy=on_policy):
        cells = (row.model, str(row.batch_size), str(row.decisions), f"{row.build_seconds:.1f}",
                 f"{row.cached_seconds:.2f}",
                 f"{row.base_measured_ms:.2f}", f"{row.base_now_ms:.2f} ({100 * row.base_drift:+.1f}%)",
                 f"{100 * row.median_error:.1f}%", f"{100 * row.worst_error:.1f}%",
                 f"{100 * row.median_ratio_error:.1f}%", f"{100 * row.worst_ratio_error:.1f}%")
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    update_section(Path(args.markdown), f"latency-r{args.round_to}", "\n".join(lines) + "\n",
                   title=f"Latency lookup table accuracy, round_to {args.round_to}")
    return 0


def _finetune(args: argparse.Namespace, console: Console) -> int:
    import torch

    from search.bench_common import machine
    from search.bench_finetune import finetune_bench, finetune_markdown
    from search.bench_quality import update_section

    torch.set_num_threads(args.threads)
    result = finetune_bench(Path(args.root), budget=args.budget, evaluations=args.evaluations, epochs=args.epochs,
                            round_to=args.round_to, data_dir=args.data_dir, log=console.print)
    command = "python scripts/bench.py finetune " + " ".join(sys.argv[2:])
    body = finetune_markdown(result, command=command.strip(), machine=machine())
    console.print(body)
    update_section(Path(args.markdown), f"finetune-r{args.round_to}", body,
                   title=f"Deployable model: resnet20 / fashion-mnist, budget {args.budget:g} FLOPs, "
                         f"round_to {args.round_to}")
    return 0


def _iterative(args: argparse.Namespace, console: Console) -> int:
    import torch

    from search.bench_common import machine
    from search.bench_iterative import iterative_bench, iterative_markdown
    from search.bench_quality import update_section

    torch.set_num_threads(args.threads)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    cells = iterative_bench(Path(args.root), budget=args.budget, seeds=seeds, epochs=args.epochs, steps=args.steps,
                            on_cell=lambda c: console.print(f"seed {c.seed} {c.variant}: test {c.test:.4f}"))
    command = "python scripts/bench.py iterative " + " ".join(sys.argv[2:])
    body = iterative_markdown(cells, budget=args.budget, epochs=args.epochs, steps=args.steps,
                              command=command.strip(), machine=machine())
    console.print(body)
    update_section(Path(args.markdown), "iterative", body, title="One-shot vs iterative pruning: cnn / digits")
    return 0


def _headline(args: argparse.Namespace, console: Console) -> int:
    import time

    import torch

    from search.bench_common import machine
    from search.bench_headline import HeadlineSettings, headline, headline_markdown
    from search.bench_quality import update_section

    torch.set_num_threads(args.threads)
    settings = HeadlineSettings(budgets=args.budgets, seeds=args.seeds, evaluations=args.evaluations,
                                oracle_factor=args.oracle_factor, workers=args.workers,
                                finetune_epochs=args.finetune_epochs, finetune_samples=args.finetune_samples)

    def on_cell(cell, cached):
        where = "cached" if cached else f"{cell.seconds / 60:.1f} min"
        console.print(f"budget {cell.budget:g} {cell.row:<11} seed {cell.seed}: val {100 * cell.val_accuracy:.2f} "
                      f"test {100 * cell.test_accuracy:.2f} fine-tuned {100 * cell.finetuned_test_accuracy:.2f} "
                      f"FLOPs {cell.flops_ratio:.3f} latency {cell.latency_ratio:.3f} ({where})")

    start = time.perf_counter()
    cells = headline(Path(args.root), settings, data_dir=args.data_dir, on_cell=on_cell)
    console.print(f"wall time of this invocation: {(time.perf_counter() - start) / 60:.1f} min")
    command = "python scripts/bench.py headline " + " ".join(sys.argv[2:])
    body = headline_markdown(cells, settings, command=command.strip(), machine=machine(),
                             total_seconds=sum(c.seconds for c in cells))
    console.print(body)
    update_section(Path(args.markdown), "headline", body,
                   title="Headline: searched policies vs what users pick instead (resnet20 / fashion-mnist)")
    return 0


def _deployed(args: argparse.Namespace, console: Console) -> int:
    import json

    from search.bench_deployed import in_fresh_processes

    policy = Path(args.policy)
    try:
        saved = json.loads(policy.read_text())
    except ValueError as exc:
        print(f"bench.py deployed: error: {policy} is not a policy file ({exc}): pass the policy.json a search wrote",
              file=sys.stderr)
        return 2
    budget = saved.get("budget") if saved.get("resource") == "latency" else None  # a latency budget only
    table = Table(title=f"deployed latency of {policy} at batch {args.batch} ({args.threads} thread(s)): "
                        f"median of {args.repeats} interleaved rounds of {args.sample_time:g} s, one process per row")
    for col in ("process", "base ms", "pruned ms", "eager ratio", "base .pt2 ms", "pruned .pt2 ms", "exported ratio"):
        table.add_column(col, justify="right")
    try:
        results = in_fresh_processes(policy, args.processes, batch_size=args.batch, threads=args.threads,
                                     repeats=args.repeats, sample_time=args.sample_time,
                                     export_again=args.export_again)
    except RuntimeError as exc:
        print(f"bench.py deployed: error: {exc}", file=sys.stderr)
        return 2
    for i, r in enumerate(results, 1):
        table.add_row(str(i), *(f"{r.ms[k]:.3f}" for k in ("base", "pruned")), f"{r.eager_ratio:.4f}",
                      *(f"{r.ms[k]:.3f}" for k in ("base_exported", "pruned_exported")), f"{r.exported_ratio:.4f}")
    console.print(table)
    console.print(f"timed program: {results[0].program}")
    ratios = {"eager": [r.eager_ratio for r in results], "exported": [r.exported_ratio for r in results]}
    for name, values in ratios.items():
        over = sum(v > budget for v in values) if budget is not None else 0
        console.print(f"{name} ratio {min(values):.4f}-{max(values):.4f} over {len(values)} process(es)"
                      + (f"; {over} above the budget {budget:g}" if budget is not None else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    from amc.cli import OneLineParser, comma_list, existing_file, int_at_least, number_in

    parser = OneLineParser(description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("overhead", help="evaluation time vs its bare forward passes")
    p.add_argument("--policies", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="fashion-mnist IDX directory")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=_overhead)
    p = sub.add_parser("env", help="environment steps per second with a stub evaluator")
    p.add_argument("--model", default="resnet56")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=_env)
    p = sub.add_parser("quality", help="strategies at equal evaluation counts (cnn/digits)")
    p.add_argument("--budgets", default="0.2,0.3")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--evaluations", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--root", default="runs/bench", help="cells are cached here; a rerun skips finished cells")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=_quality)
    p = sub.add_parser("scaling", help="evaluations/s: local vs 1 and 2 Ray workers")
    p.add_argument("--evaluations", type=int, default=32)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--root", default="runs/bench-scaling")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=_scaling)
    p = sub.add_parser("latency", help="latency table: build time and predicted vs measured latency")
    p.add_argument("--models", default="resnet20,mobilenetv2")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--policies", type=int_at_least(1), default=20)
    p.add_argument("--threads", type=int_at_least(1), default=1)
    p.add_argument("--repeats", type=int_at_least(1), default=15,
                   help="interleaved rounds over the base and all policies")
    p.add_argument("--sample-time", type=number_in(0, 10, meaning=" (seconds per sample)"), default=0.06,
                   help="seconds per sample")
    p.add_argument("--round-to", type=int_at_least(1), default=1)
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=_latency)
    p = sub.add_parser("deployed", help="a searched policy's exported program timed against the base, per process")
    p.add_argument("policy", type=existing_file("pass the policy.json a search wrote"),
                   help="policy.json of a search (its pruned.pt2 is timed)")
    p.add_argument("--batch", type=int_at_least(1), default=1)
    p.add_argument("--threads", type=int_at_least(1), default=1)
    p.add_argument("--processes", type=int_at_least(1), default=3, help="fresh processes, one after the other")
    p.add_argument("--repeats", type=int_at_least(1), default=21, help="interleaved rounds per process")
    p.add_argument("--sample-time", type=number_in(0, 10, meaning=" (seconds per sample)"), default=0.1)
    p.add_argument("--export-again", action="store_true", help="time a fresh export instead of pruned.pt2")
    p.set_defaults(run=_deployed)
    p = sub.add_parser("finetune", help="resnet20/fashion-mnist: exported model's latency and fine-tuned accuracy")
    p.add_argument("--budget", type=float, default=0.3)
    p.add_argument("--evaluations", type=int, default=200)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--root", default="runs/bench-finetune", help="search and fine-tuning results are kept here")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=_finetune)
    p = sub.add_parser("iterative", help="one-shot vs iterative pruning, same policy and fine-tuning epochs")
    p.add_argument("--budget", type=float, default=0.2)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--root", default="runs/bench", help="policies (quality cells) and results are cached here")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=_iterative)
    p = sub.add_parser("headline", help="resnet20/fashion-mnist: every strategy vs uniform, Torch-Pruning and an oracle")
    p.add_argument("--budgets", type=comma_list(number_in(0, 1, meaning=" (fraction of the base FLOPs)")),
                   default=(0.3, 0.5), help="FLOPs budgets, comma-separated (0.3,0.5)")
    p.add_argument("--seeds", type=comma_list(int_at_least(0)), default=(0, 1, 2), help="search seeds (0,1,2)")
    p.add_argument("--evaluations", type=int_at_least(1), default=100)
    p.add_argument("--oracle-factor", type=int_at_least(1), default=10,
                   help="the oracle search is this many times longer")
    p.add_argument("--workers", type=int_at_least(1), default=2, help="Ray workers of each search")
    p.add_argument("--finetune-epochs", type=int_at_least(1), default=1)
    p.add_argument("--finetune-samples", type=int_at_least(1), default=10000)
    p.add_argument("--threads", type=int_at_least(1), default=2,
                   help="torch threads of the driver (evaluation, fine-tuning)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--root", default="runs/bench-headline", help="cells are cached here; a rerun skips finished cells")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=_headline)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    return args.run(args, Console())


if __name__ == "__main__":
    sys.exit(main())
