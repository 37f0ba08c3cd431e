"""Rebuild the pruned model from a policy.json and its base model, evaluate, fine-tune, export, compare.

    python scripts/apply_policy.py runs/<run>                 # the run's policy.json; writes runs/<run>/applied-1/
    python scripts/apply_policy.py runs/<run>/policy.json --out DIR [--checkpoint base.pt]
    python scripts/apply_policy.py runs/<run> --finetune-epochs 5 --distill --export onnx

The model, data split, seed and evaluation settings come from the policy (recorded by the search);
the options below override them. Without --out the files go to a new folder next to the policy
(applied-1, applied-2, ...): the run's own pruned.pt2 stays the one its report describes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from search.cli.common import (
    OneLineParser,
    argparse_type,
    dataset_name,
    device_name,
    int_at_least,
    json_object,
)
from search.options import options

log = logging.getLogger(__name__)
APPLIED_PREFIX = "applied-"  # the default --out: <policy's folder>/applied-<n>, the first n not taken


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="apply_policy.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("policy", help="policy.json written by a search, or its run folder (runs/<run>)")
    p.add_argument("--out", help="folder of pruned.pt2 (and pruned.onnx); default: a new folder next to the policy, "
                                 f"{APPLIED_PREFIX}1, {APPLIED_PREFIX}2, ...")
    p.add_argument("--model", help="override the policy's model")
    p.add_argument("--checkpoint", help="trained state_dict of the base model")
    p.add_argument("--dataset", type=dataset_name, help="override the policy's dataset")
    p.add_argument("--data-dir", dest="data_dir", help="folder of file-based datasets (imagefolder: its root)")
    p.add_argument("--dataset-kwargs", dest="dataset_kwargs", type=json_object,
                   help="override the policy's imagefolder settings or dataset-factory arguments (a JSON object)")
    p.add_argument("--device", type=device_name, default="cpu",
                   help="cpu, cuda or cuda:N for evaluation and fine-tuning, whatever the search ran on (cpu)")
    p.add_argument("--loader-workers", dest="loader_workers", type=int_at_least(0),
                   help="DataLoader processes that read an imagefolder or factory dataset (2)")
    p.add_argument("--seed", type=int, help="override the policy's seed")
    p.add_argument("--finetune-epochs", dest="finetune_epochs", type=int, default=0,
                   help="fine-tune the pruned model (SGD, cosine schedule) for N epochs (0)")
    p.add_argument("--finetune-lr", dest="finetune_lr", type=float, default=0.01)
    p.add_argument("--distill", action="store_true", help="fine-tune with knowledge distillation from the base")
    p.add_argument("--schedule", choices=("oneshot", "iterative"), default="oneshot",
                   help="prune at once, or in --steps prune/fine-tune rounds sharing --finetune-epochs")
    p.add_argument("--steps", type=int, default=3, help="rounds of --schedule iterative (3)")
    p.add_argument("--ramp", choices=("linear", "agp"), default="linear",
                   help="iterative keep-ratio schedule: linear or AGP cubic (linear)")
    p.add_argument("--export", action="append", choices=("pt2", "onnx"),
                   help="export format, repeatable (pt2; pruned.pt2 is always written unless --no-export)")
    p.add_argument("--no-export", dest="no_export", action="store_true")
    p.add_argument("--no-compare", dest="no_compare", action="store_true",
                   help="skip the base/pruned table (it measures latency for a few seconds)")
    threads = options()["threads"]  # the same option as search.py's
    p.add_argument("--threads", type=argparse_type(threads.read), default=threads.default, help=threads.help)
    p.add_argument("--quiet", action="store_true")
    return p


def default_out(policy: str) -> Path:
    """A new folder next to the policy (``<run>/applied-<n>``, the first ``n`` not taken), so that applying never
    overwrites what a run's ``report.html`` and ``policy.json`` describe."""
    path = Path(policy)
    folder = path if path.is_dir() else path.resolve().parent
    n = 1
    while (folder / f"{APPLIED_PREFIX}{n}").exists():
        n += 1
    return folder / f"{APPLIED_PREFIX}{n}"


def comparison_table(applied):
    """The base and pruned models side by side, and the latencies that should not be read as facts."""
    from rich.table import Table

    from amc.evaluation.compare import TIMING_HINT, compare_models, comparison_doubts

    models = {"base": applied.context.model, "pruned": applied.model}
    base, pruned = rows = compare_models(models, applied.context.data.test)  # timed interleaved
    doubts = comparison_doubts(base, pruned)
    doubted = {d.batch for d in doubts}
    mark = {batch: " (?)" if batch in doubted else "" for batch in (1, 64)}
    table = Table(title="base vs pruned (size: saved state_dict; latency and accuracy: on this machine's CPU)",
                  caption="\n".join([*(f"(?) batch {d.batch}: {d.reason}" for d in doubts),
                                      *([TIMING_HINT] if doubts else [])]) or None, caption_justify="left")
    for col in ("model", "params", "FLOPs", "size KiB", "latency b1 ms", "latency b64 ms", "test acc"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r.name, f"{r.params:,}", f"{r.flops:,}", f"{r.size_bytes / 1024:.1f}",
                      f"{r.latency_ms[1]:.3f}{mark[1]}", f"{r.latency_ms[64]:.3f}{mark[64]}", f"{r.test_accuracy:.4f}")
    table.add_row("ratio", f"{pruned.params / base.params:.3f}", f"{pruned.flops / base.flops:.3f}",
                  f"{pruned.size_bytes / base.size_bytes:.3f}", f"{pruned.latency_ms[1] / base.latency_ms[1]:.3f}",
                  f"{pruned.latency_ms[64] / base.latency_ms[64]:.3f}", "")
    for d in doubts:
        log.warning("latency at batch %d is doubtful: %s. %s", d.batch, d.reason, TIMING_HINT)
    return table


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:  # Ctrl-C: one line and the shells' exit status for it, no traceback
        print("apply_policy.py: interrupted (the files written so far are listed above, if any)", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from amc.apply import apply_policy
    from amc.errors import AmcError
    from search.launch import set_threads

    logging.basicConfig(level=logging.WARNING)
    set_threads(args.threads)
    out = Path(args.out) if args.out else default_out(args.policy)
    try:
        formats = () if args.no_export else tuple(dict.fromkeys(["pt2", *(args.export or [])]))
        applied = apply_policy(args.policy, out=out, export=formats, progress=not args.quiet,
                               finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
                               distill=args.distill, schedule=args.schedule,
                               steps=args.steps if args.schedule == "iterative" else 1, ramp=args.ramp,
                               model=args.model, checkpoint=args.checkpoint,
                               dataset=args.dataset, data_dir=args.data_dir, seed=args.seed,
                               dataset_kwargs=args.dataset_kwargs, device=args.device,
                               loader_workers=args.loader_workers)
    except AmcError as exc:
        print(f"apply_policy.py: error: {exc}", file=sys.stderr)
        return 2
    # The search's own score of the policy (with a deploy rung, val_accuracy is the score after its fine-tune).
    recorded = applied.policy.metrics.get("search_val_accuracy", applied.policy.metrics.get("val_accuracy"))
    table = Table(title=f"policy {args.policy}")
    for col in ("", "val acc", "test acc", f"{applied.resource} ratio"):
        table.add_column(col, justify="right")
    if recorded is not None:
        table.add_row("recorded by the search", f"{recorded:.4f}",
                      f"{applied.policy.metrics.get('test_accuracy', float('nan')):.4f}",
                      f"{applied.policy.metrics.get('cost_ratio', float('nan')):.4f}")
    table.add_row("re-applied now", f"{applied.val_accuracy:.4f}", f"{applied.test_accuracy:.4f}",
                  f"{applied.cost_ratio:.4f}")
    if applied.finetuned_val_accuracy is not None:
        how = f" in {args.steps} {args.ramp} rounds" if args.schedule == "iterative" else ""
        epochs = f"{args.finetune_epochs} fine-tuning epoch" + ("" if args.finetune_epochs == 1 else "s")
        table.add_row(f"after {epochs}{how}" + (" (distilled)" if args.distill else ""),
                      f"{applied.finetuned_val_accuracy:.4f}", f"{applied.finetuned_test_accuracy:.4f}",
                      f"{applied.cost_ratio:.4f}")
    console = Console()
    console.print(table)
    for path in applied.exported.values():
        console.print(f"wrote {path}")
    if not args.no_compare:
        console.print(comparison_table(applied))
    return 0


if __name__ == "__main__":
    sys.exit(main())
