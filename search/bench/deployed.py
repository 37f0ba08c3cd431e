"""Deployed latency of a searched policy (``scripts/bench.py deployed``): the exported program against the base.

The policy's ``pruned.pt2`` (the file next to ``policy.json``, or the pruned model exported again) is loaded
back and timed with the base model exported the same way (:func:`amc.pruning.export.export_program`) and with both
PyTorch modules, all four in the same interleaved rounds (median of repeats), so a spell of the machine hits
all alike. :func:`in_fresh_processes` repeats that in new processes, one after the other: on a noisy machine
the ratio moves between processes more than within one.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from search.bench.common import BenchError
from search.bench.markdown import ResultTable

log = logging.getLogger(__name__)
MODELS = ("base", "pruned", "base_exported", "pruned_exported")


@dataclass(frozen=True)
class DeployedLatency:
    """Median latencies in ms of the four models (:data:`MODELS`), timed in one process."""

    batch_size: int
    program: str  # which pruned program was timed: the .pt2 file, or a fresh export (and why)
    ms: dict[str, float]

    @property
    def eager_ratio(self) -> float:
        return self.ms["pruned"] / self.ms["base"]

    @property
    def exported_ratio(self) -> float:
        return self.ms["pruned_exported"] / self.ms["base_exported"]


def deployed_latency(policy_path: str | os.PathLike, *, batch_size: int = 1, threads: int = 1, repeats: int = 21,
                     sample_time: float = 0.1, export_again: bool = False) -> DeployedLatency:
    """Times the policy's exported program against the base model exported the same way, in this process.

    ``export_again``: time a fresh export of the pruned model instead of the ``pruned.pt2`` next to the policy
    (for a run written by an older version, or with ``--no-export``; a missing file is exported anyway).
    """
    from amc.apply import apply_policy
    from amc.pruning.export import export_program, export_pt2
    from amc.cost.timing import compare_latency

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        applied = apply_policy(policy_path, export=False, progress=False)
        ctx = applied.context
        example = ctx.data.val.tensors[0][:2]
        base_program = export_program(ctx.model, example).module()
        path = Path(policy_path).parent / "pruned.pt2"
        reason = "--export-again" if export_again else None if path.exists() else f"{path} does not exist"
        if reason is None:
            pruned_program = torch.export.load(path).module()
            if _has_batch_norm(pruned_program) and not _has_batch_norm(base_program):
                log.warning("%s keeps its batch norms (written before the export folded them): timing a fresh, "
                            "folded export, as the base is exported", path)
                reason = f"{path} has unfolded batch norms"
        if reason is not None:
            with tempfile.TemporaryDirectory(prefix="amc-deployed-") as tmp:
                pruned_program = torch.export.load(export_pt2(applied.model, example, Path(tmp) / "p.pt2")).module()
        label = str(path) if reason is None else f"fresh export ({reason})"
        models = {"base": ctx.model, "pruned": applied.model, "base_exported": base_program,
                  "pruned_exported": pruned_program}
        ms = compare_latency(models, ctx.graph.input_shape, batch_size=batch_size, threads=threads, repeats=repeats,
                             min_run_time=sample_time)
    finally:
        torch.set_num_threads(previous_threads)
    return DeployedLatency(batch_size, label, ms)


def _has_batch_norm(program: torch.nn.Module) -> bool:
    return any("batch_norm" in str(node.target) for node in program.graph.nodes if node.op == "call_function")


def in_fresh_processes(policy_path: str | os.PathLike, processes: int, **kwargs) -> list[DeployedLatency]:
    """:func:`deployed_latency` in ``processes`` new Python processes, run one after the other (never at once).

    Raises:
        RuntimeError: A timing process failed; its exit code and its last error line are named.
    """
    code = ("import dataclasses, json, sys\n"
            "from search.bench.deployed import deployed_latency\n"
            "done = deployed_latency(sys.argv[1], **json.loads(sys.argv[2]))\n"
            "print(json.dumps(dataclasses.asdict(done)))\n")
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
    results = []
    for _ in range(processes):
        done = subprocess.run([sys.executable, "-c", code, str(policy_path), json.dumps(kwargs)], env=env,
                              capture_output=True, text=True, check=False)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            last = (done.stderr.strip().splitlines() or ["no error output"])[-1]
            raise RuntimeError(f"the timing process failed (exit {done.returncode}): {last}")
        results.append(DeployedLatency(**json.loads(lines[-1])))
    return results


def deployed_report(policy: Path, *, processes: int, batch: int, threads: int, repeats: int, sample_time: float,
                    export_again: bool, console: Console) -> None:
    """Times ``policy`` in ``processes`` fresh processes and prints the table and the ratios' ranges
    (against the budget, when the policy's budget is a latency budget).

    Raises:
        BenchError: ``policy`` is not a policy file.
        RuntimeError: A timing process failed.
    """
    try:
        saved = json.loads(policy.read_text())
    except ValueError as exc:
        raise BenchError(f"{policy} is not a policy file ({exc}): pass the policy.json a search wrote") from None
    budget = saved.get("budget") if saved.get("resource") == "latency" else None  # a latency budget only
    results = in_fresh_processes(policy, processes, batch_size=batch, threads=threads, repeats=repeats,
                                 sample_time=sample_time, export_again=export_again)
    rows = tuple((str(i), *(f"{r.ms[k]:.3f}" for k in ("base", "pruned")), f"{r.eager_ratio:.4f}",
                  *(f"{r.ms[k]:.3f}" for k in ("base_exported", "pruned_exported")), f"{r.exported_ratio:.4f}")
                 for i, r in enumerate(results, 1))
    table = ResultTable(f"deployed latency of {policy} at batch {batch} ({threads} thread(s)): median of {repeats} "
                        f"interleaved rounds of {sample_time:g} s, one process per row",
                        ("process", "base ms", "pruned ms", "eager ratio", "base .pt2 ms", "pruned .pt2 ms",
                         "exported ratio"), rows)
    console.print(table.rich())
    console.print(f"timed program: {results[0].program}")
    ratios = {"eager": [r.eager_ratio for r in results], "exported": [r.exported_ratio for r in results]}
    for name, values in ratios.items():
        over = sum(v > budget for v in values) if budget is not None else 0
        console.print(f"{name} ratio {min(values):.4f}-{max(values):.4f} over {len(values)} process(es)"
                      + (f"; {over} above the budget {budget:g}" if budget is not None else ""))
