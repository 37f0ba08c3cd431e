"""GPU benchmark (``scripts/bench.py gpu``): a resnet20 search with ``--device cuda`` against the CPU.

Run it on a machine with an NVIDIA GPU and a CUDA build of PyTorch (it refuses, on one line, without
one). Each cell is ``scripts/search.py`` in a fresh process, as a user runs it, on resnet20 /
fashion-mnist at budget 0.5 FLOPs (Optuna TPE, ``--round-to 8``, the full 5,000 validation images):

1. ``--device cuda``: trains the base model on the GPU (``--epochs``, cached in ``<root>/cache``), then
   ``--evaluations`` evaluations;
2. ``--device cpu``: the same search from the same cached base model (the cache key does not depend on
   the device), with ``--cpu-evaluations`` evaluations (the CPU is slow);
3. ``--device cuda --workers 2``: two Ray actors sharing the GPU (``--gpus-per-worker`` 0.5 each).

Evaluations per second come from ``history.csv``: evaluated (not cached) policies divided by the search
loop's wall time, and the mean time of one evaluation. Every finished cell is saved in
``<root>/results.json`` at once; a rerun skips it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from search.bench.common import BenchError
from search.bench.markdown import ResultTable, update_section

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class GpuRow:
    mode: str
    evaluations: int  # evaluated policies (cache hits excluded)
    search_s: float  # the search loop's wall time (history.csv)
    eval_s: float  # mean time of one evaluation where it ran
    total_s: float  # the whole process: data, base model (trained or cached), search, outputs
    base_val_accuracy: float
    best_val_accuracy: float

    @property
    def per_second(self) -> float:
        return self.evaluations / self.search_s if self.search_s else 0.0


def gpu_preflight() -> str:
    """The GPU's description, or :class:`BenchError` when this machine has none."""
    import torch

    if not torch.cuda.is_available():
        raise BenchError(f"no CUDA device on this machine (torch {torch.__version__}, CUDA build "
                         f"{torch.version.cuda or 'none'}): run `python scripts/bench.py gpu` on a machine with an "
                         "NVIDIA GPU and a CUDA build of PyTorch")
    props = torch.cuda.get_device_properties(0)
    return (f"{torch.cuda.get_device_name(0)} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)")


def run_cell(name: str, args: list[str], root: Path, *, threads: int) -> GpuRow:
    from search.history import read_history

    out = root / "runs" / name.replace(" ", "-").replace(",", "")
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "AMC_CACHE_DIR": str(root / "cache"), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(REPO / "scripts" / "search.py"), *args, "--out", str(out), "--quiet",
               "--threads", str(threads), "--no-export"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    total = time.perf_counter() - start
    if done.returncode != 0:
        tail = [line for line in done.stderr.splitlines() if line.strip()][-3:]
        raise BenchError(f"the {name} search failed (exit {done.returncode}): {' | '.join(tail)}")
    records = read_history(out / "history.csv")
    evaluated = [r for r in records if not r.cached]
    metrics = json.loads((out / "policy.json").read_text())["metrics"]
    return GpuRow(mode=name, evaluations=len(evaluated), search_s=records[-1].wall_time - records[0].wall_time
                  + records[0].seconds, eval_s=sum(r.seconds for r in evaluated) / max(1, len(evaluated)),
                  total_s=total, base_val_accuracy=metrics["base_val_accuracy"],
                  best_val_accuracy=metrics["val_accuracy"])


def gpu(root: Path, *, evaluations: int, cpu_evaluations: int, epochs: int, workers: int, threads: int,
        data_dir: str | None, console: Console) -> tuple[str, list[GpuRow]]:
    device = gpu_preflight()
    console.print(f"GPU: {device}")
    root.mkdir(parents=True, exist_ok=True)
    results_path = root / "results.json"
    saved = json.loads(results_path.read_text()) if results_path.exists() else {}
    common = ["--model", "resnet20", "--dataset", "fashion-mnist", "--budget", "0.5", "--round-to", "8",
              "--epochs", str(epochs), "--seed", "0", *(["--data-dir", data_dir] if data_dir else [])]
    cells = {"cuda": ["--device", "cuda", "--evaluations", str(evaluations)],
             "cpu": ["--device", "cpu", "--evaluations", str(cpu_evaluations)]}
    if workers > 1:
        cells[f"cuda, {workers} Ray workers"] = ["--device", "cuda", "--evaluations", str(evaluations),
                                                 "--workers", str(workers), "--threads-per-worker", "1"]
    settings = {"evaluations": evaluations, "cpu_evaluations": cpu_evaluations, "epochs": epochs, "threads": threads,
                "device": device}
    rows = []
    for name, args in cells.items():
        if name in saved and saved[name].get("settings") == settings:
            rows.append(GpuRow(**saved[name]["row"]))
            console.print(f"{name}: done before ({rows[-1].per_second:.2f} evaluations/s)")
            continue
        console.print(f"{name}: searching ...")
        row = run_cell(name, [*common, *args], root, threads=threads)
        rows.append(row)
        saved[name] = {"settings": settings, "row": asdict(row)}
        results_path.write_text(json.dumps(saved, indent=2) + "\n")
        console.print(f"{name}: {row.per_second:.2f} evaluations/s, {row.eval_s:.3f} s each, {row.total_s:.0f} s in all")
    return device, rows


def gpu_report(root: Path, *, evaluations: int, cpu_evaluations: int, epochs: int, workers: int, threads: int,
               data_dir: str | None, command: str, markdown: Path, console: Console) -> None:
    """Runs :func:`gpu`, prints its table and writes the ``gpu`` section of ``markdown``."""
    device, rows = gpu(root, evaluations=evaluations, cpu_evaluations=cpu_evaluations, epochs=epochs,
                       workers=workers, threads=threads, data_dir=data_dir, console=console)
    cpu = next(r for r in rows if r.mode == "cpu")
    cells = tuple((r.mode, str(r.evaluations), f"{r.per_second:.2f}",
                   f"{r.per_second / cpu.per_second:.1f}x" if cpu.per_second else "-", f"{r.eval_s:.3f}",
                   f"{r.total_s:.0f}", f"{100 * r.base_val_accuracy:.2f}", f"{100 * r.best_val_accuracy:.2f}")
                  for r in rows)
    table = ResultTable("resnet20 / fashion-mnist search: --device cuda against the CPU",
                        ("mode", "evaluations", "evals/s", "vs CPU", "mean evaluation s", "process s",
                         "base val acc", "best val acc"), cells,
                        console_headers=("mode", "evals", "evals/s", "vs CPU", "eval s", "process s", "base val",
                                         "best val"))
    console.print(table.rich())
    lines = [f"Command: `{command}`  ",
             f"GPU: {device}; CPU: {os.cpu_count()} cores, `--threads {threads}`  ",
             (f"Setup: resnet20 on fashion-mnist, Optuna TPE at budget 0.5 FLOPs, `--round-to 8`, every candidate "
              f"scored on the 5,000 validation images after adaptive BN; the base model trained once on the GPU "
              f"({epochs} epochs, in the cuda row's process time) and loaded from the cache by the other rows. "
              "evals/s: evaluated policies over the search loop's wall time."), "", *table.markdown(), ""]
    update_section(markdown, "gpu", "\n".join(lines), title="GPU: a resnet20 search with --device cuda")


__all__ = ["GpuRow", "gpu", "gpu_preflight", "gpu_report"]
