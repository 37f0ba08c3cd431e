"""Policy to deployable model (``scripts/bench.py finetune``): real speed-up and accuracy after fine-tuning.

resnet20 / fashion-mnist at a FLOPs budget: an Optuna search picks the policy, the pruned model is
exported with ``torch.export`` and loaded back, and the exported base and pruned programs are timed
interleaved at batch 64 (median of repeats). Then the pruned model is fine-tuned for a few epochs and
evaluated on the test split. The search and the fine-tuned result are kept under ``root``: a rerun
reuses them.

To tell a poor search from an impossible target, :func:`lattice_bound` scores every policy the
rounding rule allows with the batch-64 latency table; the policy it predicts best is exported and
timed in the same rounds as the base and the searched model.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch.utils.flop_counter import FlopCounterMode

from amc.apply import apply_policy
from amc.context import build_context
from amc.errors import ConfigError
from amc.pruning.export import export_pt2
from amc.cost.latency import LatencyConfig
from amc.cost.timing import compare_latency
from amc.pruning.policy import Policy
from amc.pruning.pruner import prune_model
from search.bench.common import BASE_EPOCHS, VAL_LIMIT, fashion_resnet20, machine
from search.bench.markdown import markdown_table, update_section
from search.config import SearchConfig
from search.runner import run_search


@dataclass(frozen=True)
class LatticeBound:
    """The policy with the lowest predicted latency ratio per FLOPs ratio among *all* policies on the
    rounding lattice within the FLOPs budget (by the latency table), and what it measured."""

    channels: tuple[int, ...]
    policies: int  # how many lattice policies were scored
    flops_ratio: float
    predicted_latency_ratio: float
    measured_latency_ratio: float | None = None


def lattice_bound(latency, flops, budget: float, *, min_keep: float, max_policies: int = 50_000_000,
                  chunk: int = 1 << 17) -> LatticeBound:
    """Scores every channel-count policy the rounding rule allows (each decision from ``min_keep`` to full
    width) with the latency table and the FLOPs model; returns the best latency/FLOPs ratio within budget.

    Exhaustive, so only for small lattices (resnet20 with round_to 8: 9.8 million policies, seconds).
    """
    graph = flops.graph
    floors = graph.channels([min_keep] * len(graph))
    options = [np.unique(np.append(np.arange(lo, spec.out_channels + 1, graph.round_to), spec.out_channels))
               for lo, spec in zip(floors, graph.layers)]
    total = math.prod(len(o) for o in options)
    if total > max_policies:
        raise ConfigError(f"the rounding lattice has {total:,} policies, more than {max_policies:,} to score: "
                          "use a larger round_to or min_keep")
    split = len(options)  # the head decisions' product is one block of columns; the tail is looped over
    while split > 0 and math.prod(len(o) for o in options[:split]) > chunk:
        split -= 1
    rows = list(itertools.product(*options[:split]))
    head = np.array(rows, dtype=np.float64).reshape(len(rows), split).T  # (split, columns), also when split == 0
    best = (math.inf, None, 0.0, 0.0)
    smallest = math.inf
    for tail in itertools.product(*options[split:]):
        block = np.vstack([head, np.repeat(np.array(tail, dtype=np.float64)[:, None], head.shape[1], 1)])
        f = flops.costs_channels(block) / flops.base
        lat = latency.costs_channels(block) / latency.base
        smallest = min(smallest, float(f.min()))
        score = np.where(f <= budget + 1e-12, lat / f, np.inf)
        i = int(np.argmin(score))
        if score[i] < best[0]:
            best = (float(score[i]), tuple(int(c) for c in block[:, i]), float(f[i]), float(lat[i]))
    if best[1] is None:
        raise ConfigError(f"no policy on the lattice is within FLOPs budget {budget:g}: the smallest keeps "
                          f"{smallest:.4f} of the FLOPs; use a budget >= that")
    return LatticeBound(best[1], total, best[2], best[3])


@dataclass(frozen=True)
class FinetuneResult:
    budget: float
    round_to: int
    evaluations: int
    search_seconds: float
    flops_ratio: float  # FlopCounterMode on the exported program, pruned / base
    params_ratio: float
    latency_ms: dict  # batch size -> {"base": ms, "pruned": ms}
    base_test: float
    pruned_test: float  # right after pruning (BN recalibrated), no fine-tuning
    finetuned_test: float
    finetune_epochs: int
    finetune_seconds: float
    bound: LatticeBound | None = None  # the best latency/FLOPs any lattice policy reaches at this budget

    def latency_ratio(self, batch: int) -> float:
        ms = self.latency_ms[str(batch)]
        return ms["pruned"] / ms["base"]


def _flops(module: torch.nn.Module, shape: tuple[int, ...]) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.zeros(1, *shape))
    return counter.get_total_flops()


def finetune_bench(root: Path, *, budget: float = 0.3, evaluations: int = 200, epochs: int = 5,
                   round_to: int = 8, data_dir: str | None = None, batches: tuple[int, ...] = (1, 64),
                   repeats: int = 21, log=print) -> FinetuneResult:
    root.mkdir(parents=True, exist_ok=True)
    context = fashion_resnet20(data_dir=data_dir, round_to=round_to)
    run = root / f"search-{budget:g}-r{round_to}"
    start = time.perf_counter()
    if not (run / "policy.json").exists():
        log(f"searching: optuna, {evaluations} evaluations, budget {budget:g} FLOPs, round_to {round_to}")
        run_search(SearchConfig(budget=budget, strategy="optuna", evaluations=evaluations, out=str(run),
                                resume=run.exists(), context=context))
    search_seconds = time.perf_counter() - start
    policy = Policy.load(run / "policy.json")
    # The latency table is measured at the batch the target is about, with the threads the timing uses.
    table = LatencyConfig(batch_size=max(batches), threads=torch.get_num_threads())
    ctx = build_context(dataclasses.replace(context, latency=table), progress=False)
    shape = ctx.graph.input_shape
    example = ctx.data.val.tensors[0][:2]

    result_file = root / f"finetuned-{budget:g}-r{round_to}-e{epochs}.json"
    if result_file.exists():
        tuned = json.loads(result_file.read_text())
    else:
        log(f"fine-tuning the pruned model for {epochs} epochs")
        t = time.perf_counter()
        applied = apply_policy(policy, out=root / "export", export=("pt2",), finetune_epochs=epochs,
                               progress=True)
        tuned = {"pruned_test": applied.test_accuracy, "finetuned_test": applied.finetuned_test_accuracy,
                 "seconds": time.perf_counter() - t}
        result_file.write_text(json.dumps(tuned))
    # Time what would be deployed: both models exported with torch.export and loaded back.
    base_file = export_pt2(ctx.model, example, root / "export" / "base.pt2")
    pruned_file = root / "export" / "pruned.pt2"
    if not pruned_file.exists():
        apply_policy(policy, out=root / "export", export=("pt2",), progress=False)
    base_prog = torch.export.load(base_file).module()
    pruned_prog = torch.export.load(pruned_file).module()
    log(f"scoring every policy on the round_to {round_to} lattice with the batch-{table.batch_size} latency table")
    bound = lattice_bound(ctx.cost_model("latency"), ctx.cost_model("flops"), budget,
                          min_keep=float(policy.meta.get("min_keep", 0.2)))
    widths = [spec.out_channels for spec in ctx.graph.layers]
    fastest = prune_model(ctx.model, ctx.graph, [c / w for c, w in zip(bound.channels, widths)])
    fastest_prog = torch.export.load(export_pt2(fastest, example, root / "export" / "fastest.pt2")).module()
    flops_ratio = _flops(pruned_prog, shape) / _flops(base_prog, shape)
    params = [sum(p.numel() for p in m.parameters()) for m in (base_prog, pruned_prog)]
    latency = {}
    for batch in batches:
        log(f"timing the base, pruned and lattice-best programs at batch {batch} ({repeats} interleaved rounds)")
        latency[str(batch)] = compare_latency({"base": base_prog, "pruned": pruned_prog, "fastest": fastest_prog},
                                              shape, batch_size=batch, threads=torch.get_num_threads(),
                                              repeats=repeats, min_run_time=0.1)
    top = latency[str(table.batch_size)]
    bound = dataclasses.replace(bound, measured_latency_ratio=top["fastest"] / top["base"])
    return FinetuneResult(
        budget=budget, round_to=round_to, evaluations=int(policy.meta["evaluations"]),
        search_seconds=float(policy.meta.get("duration_s", search_seconds)), flops_ratio=flops_ratio,
        params_ratio=params[1] / params[0], latency_ms=latency, base_test=float(policy.metrics["base_test_accuracy"]),
        pruned_test=tuned["pruned_test"], finetuned_test=tuned["finetuned_test"], finetune_epochs=epochs,
        finetune_seconds=tuned["seconds"], bound=bound)


def finetune_markdown(result: FinetuneResult, *, command: str, machine: str) -> str:
    b64 = result.latency_ratio(64) if "64" in result.latency_ms else float("nan")
    drop = 100 * (result.base_test - result.finetuned_test)
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {machine}  ",
        f"resnet20 / fashion-mnist (base: {BASE_EPOCHS} epochs on 55,000 images, cached), Optuna TPE, "
        f"{result.evaluations} evaluations on {VAL_LIMIT:,} validation images, budget {result.budget:g} FLOPs, "
        f"round_to {result.round_to}. Search {result.search_seconds / 60:.1f} min; fine-tuning "
        f"{result.finetune_epochs} epochs (SGD, cosine, lr 0.01) {result.finetune_seconds / 60:.1f} min. "
        "FLOPs and latency are measured on the `torch.export` programs loaded back from `.pt2` files "
        "(base and pruned timed in the same interleaved rounds, median of repeats).", "",
    ]
    rows = [("FLOPs ratio (measured)", f"{result.flops_ratio:.4f}", f"<= {result.budget:g}"),
            ("params ratio", f"{result.params_ratio:.4f}", "")]
    for batch, ms in result.latency_ms.items():
        ratio = ms["pruned"] / ms["base"]
        target = f"<= 1.25 x FLOPs ratio = {1.25 * result.flops_ratio:.4f}" if batch == "64" else ""
        rows.append((f"latency batch {batch}: base / pruned ms, ratio", f"{ms['base']:.2f} / {ms['pruned']:.2f}, "
                     f"**{ratio:.4f}** ({ratio / result.flops_ratio:.2f} x FLOPs ratio)", target))
    bound = result.bound
    if bound is not None:
        measured = (f"{bound.measured_latency_ratio:.4f} ({bound.measured_latency_ratio / bound.flops_ratio:.2f} x "
                    "FLOPs ratio)") if bound.measured_latency_ratio is not None else "not measured"
        rows.append((
            f"best any policy can do: the lowest predicted latency / FLOPs ratio among all {bound.policies:,} "
            f"policies on the round_to {result.round_to} lattice within budget",
            f"channels {'/'.join(map(str, bound.channels))}: FLOPs {bound.flops_ratio:.4f}, predicted latency "
            f"{bound.predicted_latency_ratio:.4f} ({bound.predicted_latency_ratio / bound.flops_ratio:.2f} x), "
            f"measured **{measured}** (batch {max(int(b) for b in result.latency_ms)})", ""))
    verdict = f"Latency target {'met' if b64 <= 1.25 * result.flops_ratio else 'missed'}"
    if bound is not None and bound.measured_latency_ratio is not None and b64 > 1.25 * result.flops_ratio:
        best = bound.measured_latency_ratio / bound.flops_ratio
        predicted = bound.predicted_latency_ratio / bound.flops_ratio
        verdict += (f" (by the latency table, no policy on the round_to {result.round_to} lattice does better than "
                    f"{predicted:.2f} x at this budget; the policy it predicts best measures {best:.2f} x)")
    rows += [
        ("test accuracy: base", f"{100 * result.base_test:.2f}%", ""),
        ("test accuracy: pruned, no fine-tuning", f"{100 * result.pruned_test:.2f}%", ""),
        (f"test accuracy: after {result.finetune_epochs} epochs of fine-tuning",
         f"**{100 * result.finetuned_test:.2f}%** ({drop:.2f} points below base)", "within 2 points"),
    ]
    lines += markdown_table(("", "value", "target"), rows)
    lines += [
        "",
        f"{verdict}; accuracy target "
        f"{'met' if drop <= 2 else 'missed'}.",
    ]
    return "\n".join(lines) + "\n"


def finetune_report(root: Path, *, budget: float, evaluations: int, epochs: int, round_to: int, threads: int,
                    data_dir: str | None, command: str, markdown: Path, console: Console) -> None:
    """Runs :func:`finetune_bench`, prints its section and writes it to ``markdown`` (``finetune-r<round_to>``)."""
    torch.set_num_threads(threads)
    result = finetune_bench(root, budget=budget, evaluations=evaluations, epochs=epochs, round_to=round_to,
                            data_dir=data_dir, log=console.print)
    body = finetune_markdown(result, command=command, machine=machine())
    console.print(body)
    update_section(markdown, f"finetune-r{round_to}", body,
                   title=f"Deployable model: resnet20 / fashion-mnist, budget {budget:g} FLOPs, round_to {round_to}")


__all__ = ["FinetuneResult", "LatticeBound", "finetune_bench", "finetune_markdown", "finetune_report", "lattice_bound"]
