"""Threads benchmark (``scripts/bench.py threads``): the default search by torch thread count, idle and loaded.

Each cell is one ``scripts/search.py`` in a fresh process: the README's default search (cnn on digits, the
default score) with ``--evaluations N --threads T``, on an otherwise idle machine and beside one competing
CPU-bound process (a bounded Python busy loop this benchmark starts before the cell and stops after it).
Thread counts: the ones asked for, plus torch's own default (what ``search.py`` used before it had a
default, "before") and the option's default now ("after"). A second model (resnet20 on the same data, a
short base training) shows whether the answer depends on the model's size.

Wall time is split with the run's ``run.log``: the search loop (from its "search ..." line to the first
"outputs:" line) and the outputs (test accuracy, export, report timing, up to "best policy:"); the rest is
start-up (imports, data, base model) and exit. Every finished cell is saved in ``<root>/results.json`` at
once; a rerun skips it (resumable). A cell that runs past ``cell_timeout`` is stopped and shown as "> N s".
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from rich.console import Console

from search.bench.markdown import ResultTable, update_section

REPO = Path(__file__).resolve().parents[2]
LOADS = ("idle", "loaded")
# Extra options of each model's cells (cnn: the README's default search).
MODELS = {"cnn": (), "resnet20": ("--model", "resnet20", "--epochs", "10")}
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # the cells set --threads themselves


@dataclass(frozen=True)
class ThreadsRow:
    """One cell: a search with ``threads`` torch threads, ``load`` idle or beside a busy loop."""

    model: str
    threads: int
    load: str
    wall_s: float
    search_s: float
    outputs_s: float
    median_evaluation_s: float
    evaluations: int
    best_val_accuracy: float
    load_average: float  # the machine's 1-minute load average before the cell (other users included)
    timed_out: bool = False


def torch_default_threads() -> int:
    """Torch's intra-op thread count in a fresh process without ``OMP_NUM_THREADS``: ``search.py``'s count before
    ``--threads`` had a default."""
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True,
                          text=True, check=True, env=_environment())
    return int(done.stdout.strip().splitlines()[-1])


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _THREAD_VARIABLES} | {"PYTHONPATH": str(REPO)}


def busy_loop(seconds: float) -> subprocess.Popen:
    """One competing CPU-bound process that ends by itself after ``seconds`` (stop it earlier with ``kill``)."""
    code = f"import time\nend = time.monotonic() + {seconds!r}\nwhile time.monotonic() < end:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stamp(line: str) -> float:
    """The time of a ``run.log`` line (``2026-12-07 11:23:39,123 INFO ...``), in seconds."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def phases(run_log: str) -> tuple[float, float]:
    """Seconds of the search loop and of the outputs, read from a run's ``run.log`` text."""
    lines = run_log.splitlines()
    start = next(_stamp(x) for x in lines if " search.runner: search " in x)
    outputs = next(_stamp(x) for x in lines if " search.outputs: outputs: " in x)
    end = next(_stamp(x) for x in lines if " search.outputs: best policy: " in x)
    return outputs - start, end - outputs


def run_cell(model: str, threads: int, load: str, root: Path, *, evaluations: int, cell_timeout: float) -> ThreadsRow:
    """One search in a fresh process (beside a busy loop when ``load`` is "loaded")."""
    from search.history import read_history

    out = root / "runs" / f"{model}-{load}-t{threads}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, str(REPO / "scripts" / "search.py"), *MODELS[model], "--evaluations", str(evaluations),
               "--threads", str(threads), "--out", str(out), "--quiet"]
    load_average = os.getloadavg()[0]
    competitor = busy_loop(cell_timeout + 60) if load == "loaded" else None
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, env=_environment(), capture_output=True, text=True,
                              timeout=cell_timeout)
    except subprocess.TimeoutExpired:
        return ThreadsRow(model, threads, load, cell_timeout, float("nan"), float("nan"), float("nan"), 0,
                          float("nan"), load_average, timed_out=True)
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    wall = time.perf_counter() - start
    if done.returncode != 0:
        from search.bench.common import BenchError

        raise BenchError(f"the {model} search with --threads {threads} ({load}) failed (exit {done.returncode}): "
                         f"{' | '.join(done.stderr.strip().splitlines()[-3:])}")
    search_s, outputs_s = phases((out / "run.log").read_text())
    records = [r for r in read_history(out / "history.csv") if r.rung == 0]
    policy = json.loads((out / "policy.json").read_text())
    return ThreadsRow(model, threads, load, wall, search_s, outputs_s, statistics.median(r.seconds for r in records),
                      len(records), policy["metrics"]["val_accuracy"], load_average)


def _warm_up(model: str, root: Path) -> None:
    """A short search that trains and caches the model's base (not timed)."""
    out = root / "runs" / f"{model}-warm-up"
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, str(REPO / "scripts" / "search.py"), *MODELS[model], "--evaluations", "2",
                    "--threads", "1", "--out", str(out), "--quiet", "--no-export"], cwd=REPO, env=_environment(),
                   capture_output=True, check=True)


def threads_bench(root: Path, *, models: Sequence[str], threads: Sequence[int], evaluations: int, cell_timeout: float,
                  on_row: Callable[[ThreadsRow], None] = lambda row: None) -> list[ThreadsRow]:
    """Every (model, load, threads) cell; finished cells come from ``root/results.json``."""
    root.mkdir(parents=True, exist_ok=True)
    results_path = root / "results.json"
    saved = json.loads(results_path.read_text()) if results_path.exists() else {}
    rows = []
    for model in models:
        warmed = False
        for load in LOADS:
            for count in threads:
                key = f"{model}/{load}/{count}"
                settings = {"evaluations": evaluations, "cell_timeout": cell_timeout}
                if key in saved and saved[key]["settings"] == settings:
                    row = ThreadsRow(**saved[key]["row"])
                else:
                    if not warmed:
                        _warm_up(model, root)
                        warmed = True
                    row = run_cell(model, count, load, root, evaluations=evaluations, cell_timeout=cell_timeout)
                    saved[key] = {"settings": settings, "row": asdict(row)}
                    results_path.write_text(json.dumps(saved, indent=2) + "\n")
                rows.append(row)
                on_row(row)
    return rows


def _seconds(value: float, row: ThreadsRow) -> str:
    return f"> {row.wall_s:.0f}" if row.timed_out else f"{value:.1f}"


def _verdicts(rows: Sequence[ThreadsRow], *, before: int, after: int | None) -> list[str]:
    """One line per model: wall time before (torch's default) against after (the default now), idle and loaded."""
    if not after or after == before:
        return []
    cell = {(r.model, r.load, r.threads): r for r in rows}
    lines = []
    for model in dict.fromkeys(r.model for r in rows):
        parts = []
        for load in LOADS:
            old, new = cell.get((model, load, before)), cell.get((model, load, after))
            if old and new:
                speed = "" if old.timed_out or new.timed_out else f", {old.wall_s / new.wall_s:.1f}x"
                parts.append(f"{'idle' if load == 'idle' else 'beside a busy loop'} {_seconds(old.wall_s, old)} s "
                             f"with {before} thread(s) against {_seconds(new.wall_s, new)} s with {after}{speed}")
        if parts:
            lines.append(f"- {model}: " + "; ".join(parts) + ".")
    finished = [r for r in rows if not r.timed_out]
    fastest = {(r.model, r.load): min((x for x in finished if (x.model, x.load) == (r.model, r.load)),
                                      key=lambda x: x.wall_s).threads for r in finished}
    counts = sorted(set(fastest.values()))
    if counts:
        lines += ["", f"Fastest in every (model, load) pair: {' or '.join(f'--threads {n}' for n in counts)}; "
                      f"`--threads` defaults to {after}, the count the service's searches run with."]
    return lines


def threads_report(root: Path, *, models: Sequence[str], threads: Sequence[int], evaluations: int,
                   cell_timeout: float, command: str, markdown: Path, console: Console) -> None:
    """Runs :func:`threads_bench` (torch's default and the option's default added), prints its table and writes
    the ``threads`` section of ``markdown``."""
    from search.bench.common import machine
    from search.options import defaults

    before, after = torch_default_threads(), defaults()["threads"]
    counts = sorted({*threads, before, *([after] if after else [])})

    def label(count: int) -> str:
        return str(count) + "".join(f" ({what})" for what, n in (("before: torch's default", before),
                                                                  ("after: the default now", after)) if n == count)

    rows = threads_bench(root, models=models, threads=counts, evaluations=evaluations, cell_timeout=cell_timeout,
                         on_row=lambda r: console.print(f"{r.model} {r.load} --threads {r.threads}: "
                                                        + (f"> {r.wall_s:.0f} s" if r.timed_out else
                                                           f"{r.wall_s:.1f} s")))
    cells = tuple((r.model, label(r.threads), "one busy loop" if r.load == "loaded" else "none",
                   _seconds(r.wall_s, r), _seconds(r.search_s, r), _seconds(r.outputs_s, r),
                   "" if r.timed_out else f"{r.median_evaluation_s:.2f}", str(r.evaluations),
                   "" if r.timed_out else f"{100 * r.best_val_accuracy:.2f}", f"{r.load_average:.1f}")
                  for r in rows)
    table = ResultTable("default search by torch threads, idle and beside a busy loop",
                        ("model", "--threads", "competing process", "wall s", "search loop s", "outputs s",
                         "median evaluation s", "evaluations", "best val acc", "load average before"), cells,
                        console_headers=("model", "threads", "competing", "wall s", "search s", "outputs s",
                                         "median eval s", "evals", "best val", "load avg"))
    console.print(table.rich())
    lines = [f"Command: `{command}`  ",
             f"Machine: {machine()}; {os.cpu_count()} cores (the load average column: the machine's 1-minute load "
             "before each cell, the benchmark's own previous cells included; \"none\" means no competing process of "
             "this benchmark)  ",
             (f"Setup: `scripts/search.py --evaluations {evaluations} --threads T` in a fresh process per cell, "
              f"models {', '.join(models)} (cnn: the README's default search, cnn on digits with the default score; "
              "resnet20: the same with `--model resnet20 --epochs 10`, its base trained by an untimed warm-up run). "
              "Loaded: one competing single-threaded busy loop for the whole cell. One run per cell; wall time "
              "includes start-up (imports, data, the cached base model) and the outputs (test accuracy, "
              f"`pruned.pt2`, report timing). Cells past {cell_timeout:.0f} s were stopped."), "",
             *table.markdown(), "", *_verdicts(rows, before=before, after=after), ""]
    update_section(markdown, "threads", "\n".join(lines), title="Threads: the default search, idle and loaded")


__all__ = ["ThreadsRow", "busy_loop", "phases", "run_cell", "threads_bench", "threads_report", "torch_default_threads"]
