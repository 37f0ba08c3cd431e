"""Benchmarks. ``python scripts/bench.py overhead`` (more subcommands: see --help)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from rich.console import Console

from search.cli.bench_runs import (
    run_overhead,
    run_env,
    run_quality,
    run_scaling,
    run_latency,
    run_finetune,
    run_iterative,
    add_default_row_options,
    run_headline,
    run_vit,
    run_depth,
    run_compare,
    run_fidelity,
    run_deployed,
    run_memory,
    run_gpu,
    run_service_load,
    run_threads,
    run_lm,
)



def _depth_model(text: str) -> str:
    from search.bench.depth import MODELS

    if text not in MODELS:
        raise argparse.ArgumentTypeError(f"unknown model {text!r}: use one of {', '.join(MODELS)}")
    return text

def main(argv: list[str] | None = None) -> int:
    from search.bench import HEADLINE_ROWS
    from search.cli.common import (
        OneLineParser,
        comma_list,
        existing_file,
        int_at_least,
        number_in,
        score_name,
    )

    def _headline_row(text: str) -> str:
        if text not in HEADLINE_ROWS:
            raise argparse.ArgumentTypeError(f"unknown row {text!r}; use some of {', '.join(HEADLINE_ROWS)}")
        return text

    def _listed(module: str, attribute: str, what: str):
        """A reader of one of ``module.attribute``'s names (imported when an argument is read)."""
        def read(text: str) -> str:
            names = getattr(importlib.import_module(module), attribute)
            if text not in names:
                raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; use some of {', '.join(names)}")
            return text
        return read

    _threads_model = _listed("search.bench.threads", "MODELS", "model")
    _overhead_model = _listed("search.bench.overhead", "MODELS", "model")
    _overhead_path = _listed("search.bench.overhead", "PATHS", "path")

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = OneLineParser(prog="bench.py", description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("overhead", help="evaluation time vs its bare passes, per score and criterion, before and "
                                         "after the once-per-evaluator paths")
    p.add_argument("--policies", type=int_at_least(1), default=5, help="random policies per row and path (5)")
    p.add_argument("--finetune-steps", type=int_at_least(1), default=20, help="K of the finetune:K row (20)")
    p.add_argument("--models", type=comma_list(_overhead_model), default=("resnet20", "mobilenetv2"),
                   help="resnet20 and/or mobilenetv2, comma-separated (resnet20,mobilenetv2)")
    p.add_argument("--paths", type=comma_list(_overhead_path), default=("before", "after"),
                   help="before (EvalConfig(reuse_base=False): base-model work redone per candidate) and/or after "
                        "(the default path), comma-separated, timed interleaved (before,after)")
    p.add_argument("--search-evaluations", type=int_at_least(0), default=16,
                   help="evaluations of each 2-worker Ray search (bn, reconstruct) on the first model; 0 skips (16)")
    p.add_argument("--val-limit", type=int_at_least(1), default=1000, help="validation samples (1000)")
    p.add_argument("--bn-batches", type=int_at_least(1), default=8, help="adaptive BN batches of 128 (8; mobilenetv2 at most 2)")
    p.add_argument("--dataset", choices=("fashion-mnist", "digits"), default="fashion-mnist", help="data set (digits: a quick check)")
    p.add_argument("--threads", type=int_at_least(1), default=1, help="torch threads of the timings (1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="fashion-mnist IDX directory")
    p.add_argument("--root", default="runs/bench-overhead", help="the 2-worker searches' runs")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=run_overhead)
    p = sub.add_parser("env", help="environment steps per second with a stub evaluator")
    p.add_argument("--model", default="resnet56")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=run_env)
    p = sub.add_parser("quality", help="strategies at equal evaluation counts (cnn/digits)")
    p.add_argument("--budgets", default="0.2,0.3")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--evaluations", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--root", default="runs/bench", help="cells are cached here; a rerun skips finished cells")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=run_quality)
    p = sub.add_parser("scaling", help="evaluations/s: local vs 1 and 2 Ray workers")
    p.add_argument("--evaluations", type=int, default=32)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--root", default="runs/bench-scaling")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=run_scaling)
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
    p.set_defaults(run=run_latency)
    p = sub.add_parser("deployed", help="a searched policy's exported program timed against the base, per process")
    p.add_argument("policy", type=existing_file("pass the policy.json a search wrote"),
                   help="policy.json of a search (its pruned.pt2 is timed)")
    p.add_argument("--batch", type=int_at_least(1), default=1)
    p.add_argument("--threads", type=int_at_least(1), default=1)
    p.add_argument("--processes", type=int_at_least(1), default=3, help="fresh processes, one after the other")
    p.add_argument("--repeats", type=int_at_least(1), default=21, help="interleaved rounds per process")
    p.add_argument("--sample-time", type=number_in(0, 10, meaning=" (seconds per sample)"), default=0.1)
    p.add_argument("--export-again", action="store_true", help="time a fresh export instead of pruned.pt2")
    p.set_defaults(run=run_deployed)
    p = sub.add_parser("finetune", help="resnet20/fashion-mnist: exported model's latency and fine-tuned accuracy")
    p.add_argument("--budget", type=float, default=0.3)
    p.add_argument("--evaluations", type=int, default=200)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--root", default="runs/bench-finetune", help="search and fine-tuning results are kept here")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=run_finetune)
    p = sub.add_parser("iterative", help="one-shot vs iterative pruning, same policy and fine-tuning epochs")
    p.add_argument("--budget", type=float, default=0.2)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--root", default="runs/bench", help="policies (quality cells) and results are cached here")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=run_iterative)
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
    p.add_argument("--score", type=score_name, default="bn", help="the searches' candidate score (bn)")
    p.add_argument("--ladder", type=comma_list(score_name), default=None,
                   help="costlier scores re-ranking each search's best candidates, comma-separated (none)")
    p.add_argument("--rows", type=comma_list(_headline_row), default=HEADLINE_ROWS,
                   help="rows to run, comma-separated (all: " + ",".join(HEADLINE_ROWS) + ")")
    p.add_argument("--finetune-every-seed", action="store_true",
                   help="fine-tune the deterministic rows (uniform, tp-global, sensitivity, oracle) with every seed")
    add_default_row_options(p)
    p.add_argument("--root", default="runs/bench-headline", help="cells are cached here; a rerun skips finished cells")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=run_headline)
    p = sub.add_parser("vit", help="vit/fashion-mnist: searched heads and MLP widths vs uniform and Torch-Pruning's "
                                   "ViT pruning, before and after fine-tuning")
    p.add_argument("--budget", type=number_in(0, 1, meaning=" (fraction of the base FLOPs)"), default=0.5)
    p.add_argument("--seeds", type=comma_list(int_at_least(0)), default=(0, 1, 2), help="search seeds (0,1,2)")
    p.add_argument("--evaluations", type=int_at_least(1), default=120)
    p.add_argument("--workers", type=int_at_least(1), default=1, help="Ray workers of each search (1: none)")
    p.add_argument("--base-epochs", type=int_at_least(1), default=10, help="epochs of the cached base model (10)")
    p.add_argument("--finetune-epochs", type=int_at_least(1), default=3)
    p.add_argument("--finetune-samples", type=int_at_least(1), default=20000)
    p.add_argument("--threads", type=int_at_least(1), default=1, help="torch threads")
    p.add_argument("--data-dir", default=None, help="fashion-mnist IDX directory")
    p.add_argument("--finetune-once", action="store_true",
                   help="fine-tune the deterministic rows (uniform, tp-vit) with the first seed only")
    add_default_row_options(p)
    p.add_argument("--root", default="runs/bench-vit", help="cells are cached here; a rerun skips finished cells")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=run_vit)
    p = sub.add_parser("depth", help="depth and width together under a measured-latency budget: width-only and "
                                     "depth+width searches vs Torch-Pruning global and uniform, after the same fine-tune")
    p.add_argument("--models", type=comma_list(_depth_model), default=("resnet20",), help="(resnet20; mobilenetv2,vit)")
    p.add_argument("--budgets", type=comma_list(number_in(0, 1, meaning=" (fraction of the base latency)")),
                   default=(0.4, 0.5))
    p.add_argument("--batch", type=int_at_least(1), default=1, help="latency batch size (1; 64 for the batch-64 cells)")
    p.add_argument("--seeds", type=comma_list(int_at_least(0)), default=(0, 1, 2))
    p.add_argument("--evaluations", type=int_at_least(1), default=120)
    p.add_argument("--workers", type=int_at_least(1), default=1)
    p.add_argument("--base-epochs", type=int_at_least(1), default=10)
    p.add_argument("--finetune-epochs", type=int_at_least(1), default=3)
    p.add_argument("--finetune-samples", type=int_at_least(1), default=20000)
    p.add_argument("--processes", type=int_at_least(1), default=3, help="fresh processes timing each program (3)")
    p.add_argument("--threads", type=int_at_least(1), default=1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--root", default="runs/bench-depth", help="cells are cached here; a rerun skips finished cells")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=run_depth)
    p = sub.add_parser("fidelity", help="resnet20/fashion-mnist: each candidate score's rank correlation with the "
                                        "accuracy after fine-tuning")
    p.add_argument("--budgets", type=comma_list(number_in(0, 1, meaning=" (fraction of the base FLOPs)")),
                   default=(0.3, 0.5), help="FLOPs budgets, comma-separated (0.3,0.5)")
    p.add_argument("--policies", type=int_at_least(3), default=30, help="random feasible policies per budget (30)")
    p.add_argument("--scores", type=comma_list(score_name), default=("bn", "reconstruct", "finetune:10",
                                                                    "finetune:50", "finetune:50+kd"),
                   help="candidate scores, comma-separated (bn,reconstruct,finetune:10,finetune:50,finetune:50+kd)")
    p.add_argument("--finetune-samples", type=int_at_least(1), default=10000,
                   help="training images of the deployed fine-tune (10000)")
    p.add_argument("--threads", type=int_at_least(1), default=2, help="torch threads")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--root", default="runs/bench-fidelity", help="cells are cached here; a rerun skips finished cells")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=run_fidelity)
    p = sub.add_parser("compare", help="where the allocation pays: resnet20, mobilenetv2 and vit on fashion-mnist, "
                                       "searches vs baselines per budget after the same fine-tune, resumable")
    _compare_model = _listed("search.bench.compare", "MODELS", "model")
    _compare_row = _listed("search.bench.compare", "ROWS", "row")
    fraction = number_in(0, 1, meaning=" (fraction of the base)")
    p.add_argument("--models", type=comma_list(_compare_model), default=None, help="(resnet20,mobilenetv2,vit)")
    p.add_argument("--budgets", type=comma_list(fraction), default=None, help="FLOPs budgets (0.15,0.3,0.5)")
    p.add_argument("--latency-budget", type=fraction, default=None,
                   help="add a measured-latency budget (batch 1, this CPU), e.g. 0.5 (none)")
    p.add_argument("--rows", type=comma_list(_compare_row), default=None,
                   help="(uniform,tp-global,random,default,ddpg)")
    p.add_argument("--ddpg-models", type=comma_list(_compare_model), default=None,
                   help="models with a ddpg row (resnet20,mobilenetv2)")
    p.add_argument("--seeds", type=comma_list(int_at_least(0)), default=None,
                   help="search seeds of the searches, fine-tune seeds of every row (0,1,2)")
    p.add_argument("--evaluations", type=int_at_least(1), default=None, help="of every search, default row too (100)")
    p.add_argument("--workers", type=int_at_least(1), default=None, help="Ray workers of each search (2)")
    p.add_argument("--finetune-epochs", type=int_at_least(1), default=None, help="(1)")
    p.add_argument("--finetune-samples", type=int_at_least(1), default=None, help="(10000)")
    p.add_argument("--long-finetune-factor", type=int_at_least(1), default=None,
                   help="the longer fine-tune is this many times the epochs; 1: none (5)")
    p.add_argument("--long-budget", type=fraction, default=None, help="the budget of the longer fine-tune (0.15)")
    p.add_argument("--score", type=score_name, default=None, help="the searches' candidate score (reconstruct)")
    p.add_argument("--threads", type=int_at_least(1), default=2, help="torch threads of the driver")
    p.add_argument("--data-dir", default=None, help="fashion-mnist IDX directory")
    p.add_argument("--root", default="runs/bench-compare", help="cells are cached here; a rerun skips finished cells")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=run_compare)
    p = sub.add_parser("memory", help="driver peak RSS: fashion-mnist as 60,000+10,000 PNGs (streamed) vs in memory")
    p.add_argument("--fashion-dir", default="/usr/share/datasets/fashion-mnist", help="fashion-mnist IDX directory")
    p.add_argument("--evaluations", type=int_at_least(1), default=8)
    p.add_argument("--epochs", type=int_at_least(1), default=1, help="base-model epochs of each search (1)")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--val-limit", type=int_at_least(1), default=1000)
    p.add_argument("--threads", type=int_at_least(1), default=1,
                   help="torch threads of each search (1: on a shared 2-core machine 2 threads spin-wait, 6x slower)")
    p.add_argument("--loader-workers", type=int_at_least(0), default=2)
    p.add_argument("--root", default="~/.cache/amc-search/bench-memory",
                   help="the PNG folder (outside the repo: 70,000 files), runs and results; a rerun skips finished runs")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=run_memory)
    p = sub.add_parser("gpu", help="resnet20 search with --device cuda against the CPU (needs a GPU)")
    p.add_argument("--evaluations", type=int_at_least(1), default=100, help="evaluations of the cuda searches")
    p.add_argument("--cpu-evaluations", type=int_at_least(1), default=20, help="evaluations of the CPU search")
    p.add_argument("--epochs", type=int_at_least(1), default=10, help="base-model epochs (trained on the GPU)")
    p.add_argument("--workers", type=int_at_least(1), default=2, help="Ray workers sharing the GPU (1: no Ray row)")
    p.add_argument("--threads", type=int_at_least(1), default=4, help="torch threads of each search process")
    p.add_argument("--data-dir", default=None, help="fashion-mnist IDX directory")
    p.add_argument("--root", default="runs/bench-gpu", help="runs, cache and results; a rerun skips finished cells")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=run_gpu)
    p = sub.add_parser("service-load", help="the search service on loopback: a burst of tiny searches through "
                                            "--max-concurrent, then open-loop status polling (latency percentiles)")
    p.add_argument("--searches", type=int_at_least(1), default=50, help="submitted at once (50)")
    p.add_argument("--max-concurrent", type=int_at_least(1), default=2, help="the server's --max-concurrent (2)")
    p.add_argument("--evaluations", type=int_at_least(1), default=2, help="of each search (2)")
    p.add_argument("--strategy", choices=("random", "uniform"), default="random")
    p.add_argument("--poll-seconds", type=number_in(0, 3600, meaning=" (seconds)"), default=30.0,
                   help="length of the status polling (30)")
    p.add_argument("--rate", type=number_in(0, 10_000, meaning=" (requests per second)"), default=200.0,
                   help="status requests per second (200)")
    p.add_argument("--timeout", type=number_in(0, 7200, meaning=" (seconds)"), default=1800.0,
                   help="bound of the whole run, seconds (1800)")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=run_service_load)
    p = sub.add_parser("threads", help="the default search by torch threads, idle and beside a busy loop "
                                        "(before and after the --threads default)")
    p.add_argument("--models", type=comma_list(_threads_model), default=("cnn", "resnet20"),
                   help="cnn (the README's default search) and/or resnet20, comma-separated (cnn,resnet20)")
    p.add_argument("--threads", type=comma_list(int_at_least(1)), default=(1, 2),
                   help="thread counts, comma-separated; torch's default and the option's default are added (1,2)")
    p.add_argument("--evaluations", type=int_at_least(1), default=15, help="of each search (15)")
    p.add_argument("--cell-timeout", type=number_in(0, 3600, meaning=" (seconds)"), default=300.0,
                   help="a search running longer is stopped and shown as '> N s' (300)")
    p.add_argument("--root", default="runs/bench-threads", help="runs and results; a rerun skips finished cells")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=run_threads)
    p = sub.add_parser("lm", help="tiny-lm on the code corpus: held-out perplexity of uniform, OWL, random and the "
                                  "default search at 50/60/70%% unstructured and 50%% N:M sparsity (issue 36)")
    sparsity = number_in(0, 1, high_closed=False, meaning=" (average sparsity)")
    p.add_argument("--sparsities", type=comma_list(sparsity), default=(0.5, 0.6, 0.7),
                   help="average unstructured sparsities, comma-separated (0.5,0.6,0.7)")
    p.add_argument("--nm-sparsities", type=comma_list(sparsity), default=(0.5,),
                   help="average sparsities with N:M levels dense, 2:4, 1:4, comma-separated (0.5)")
    p.add_argument("--no-nm", action="store_true", help="no N:M cells")
    p.add_argument("--seeds", type=comma_list(int_at_least(0)), default=(0, 1, 2), help="search seeds (0,1,2)")
    p.add_argument("--evaluations", type=int_at_least(1), default=100,
                   help="of each search, random and default rows, besides the two baselines (100)")
    p.add_argument("--train-steps", type=int_at_least(1), default=600,
                   help="training steps of the cached tiny-lm (600)")
    p.add_argument("--criterion", type=_listed("amc.sparsity", "CRITERIA", "criterion"), default="wanda",
                   help="magnitude, wanda or sparsegpt (wanda)")
    p.add_argument("--per", choices=("block", "layer"), default="block", help="one decision per block or linear layer")
    p.add_argument("--heldout-windows", type=int_at_least(1), default=64,
                   help="held-out windows the searches score (64)")
    p.add_argument("--report-windows", type=int_at_least(1), default=128,
                   help="the next held-out windows, unseen by the searches, that the table reports (128)")
    p.add_argument("--calibration-windows", type=int_at_least(1), default=32,
                   help="windows of the Wanda/SparseGPT/OWL statistics (32)")
    p.add_argument("--workers", type=int_at_least(1), default=1, help="Ray workers of each search (1: none)")
    p.add_argument("--threads", type=int_at_least(1), default=1, help="torch threads (1)")
    p.add_argument("--root", default="runs/bench-lm", help="cells are cached here; a rerun skips finished cells")
    p.add_argument("--markdown", default="BENCHMARKS.md")
    p.set_defaults(run=run_lm)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    return args.run(args, Console(), argv[1:])


if __name__ == "__main__":
    sys.exit(main())
