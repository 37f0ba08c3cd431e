"""Memory benchmark (``scripts/bench.py memory``): a 60,000-image folder streamed against the in-memory loader.

fashion-mnist's IDX files are written out once as PNGs (``<root>/pngs/{train,test}/<class>/``, 70,000
files; resumable: a class folder is finished when its ``.done`` marker exists). Then the same search
runs twice in fresh processes under ``/usr/bin/time -v``: on the image folder (``--dataset
imagefolder``, streamed through DataLoaders) and on today's in-memory loader (``--dataset
fashion-mnist``: every split a tensor). Each run trains its base model from an empty cache first, so
the peak includes base training, the search and the final test-set passes. Every finished run is
saved in ``<root>/results.json`` at once; a rerun skips it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from search.bench.common import BenchError
from search.bench.markdown import ResultTable, update_section

FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
LIMIT_MB = 2048  # the driver's peak RSS the streamed search must stay under (issue 20)
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class MemoryRow:
    loader: str
    images: int  # train + test images the loader reads
    peak_rss_mb: float
    wall_s: float
    base_val_accuracy: float
    best_val_accuracy: float
    evaluations: int
    held_mb: float = float("nan")  # what the loaded splits hold (RSS after loading minus before), alone
    load_peak_mb: float = float("nan")  # the peak while loading, above the RSS before


def loader_cost(args: list[str]) -> dict[str, float]:
    """RSS the data loader alone adds, measured in a fresh process (``python -m search.bench.memory``)."""
    done = subprocess.run([sys.executable, "-m", "search.bench.memory", *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        raise BenchError(f"measuring the loader {args} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure_loader(argv: list[str]) -> None:
    """``python -m search.bench.memory <dataset> <data-dir> [<dataset-kwargs JSON>]``: prints held and peak MB."""
    import PIL.Image  # noqa: F401 - imported before the baseline, like everything the loaders import
    import sklearn.model_selection  # noqa: F401

    from amc.data.datasets import load_dataset

    def status_mb(key: str) -> float:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith(key)).split()[1]) / 1024

    name, root, *rest = argv
    with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets the peak (VmHWM) to the current RSS
        f.write("5")
    before = status_mb("VmRSS")
    data = load_dataset(name, root=root, kwargs=json.loads(rest[0]) if rest else None, workers=2)
    held, peak = status_mb("VmRSS") - before, status_mb("VmHWM") - before
    print(json.dumps({"held_mb": held, "load_peak_mb": peak, "train": len(data.train)}))


def write_pngs(fashion_dir: Path, out: Path, *, console: Console | None = None) -> int:
    """fashion-mnist as PNGs in ``out/{train,test}/<label>-<name>/<index>.png``; returns the image count."""
    import numpy as np
    from PIL import Image

    from amc.data.datasets import read_idx

    total = 0
    for split, prefix in (("train", "train"), ("test", "t10k")):
        paths = {base: next((p for p in (fashion_dir / base, fashion_dir / f"{base}.gz") if p.is_file()), None)
                 for base in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")}
        if None in paths.values():
            raise BenchError(f"{str(fashion_dir)!r} lacks the fashion-mnist {split} IDX files; install them with "
                             "`apt-get install -y dataset-fashion-mnist` or pass --fashion-dir")
        images, labels = (read_idx(p) for p in paths.values())
        for label, name in enumerate(FASHION_CLASSES):
            folder = out / split / f"{label}-{name}"
            idx = np.flatnonzero(labels == label)
            total += len(idx)
            if (folder / ".done").exists():
                continue
            folder.mkdir(parents=True, exist_ok=True)
            for i in idx:
                target = folder / f"{i:05d}.png"
                if not target.exists():
                    tmp = folder / f".{i:05d}.tmp.png"
                    Image.fromarray(images[i]).save(tmp)
                    os.replace(tmp, target)
            (folder / ".done").write_text(f"{len(idx)}\n")
            if console is not None:
                console.print(f"wrote {len(idx)} PNGs to {folder}")
    return total


def _max_rss_mb(stderr: str) -> float:
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    if not match:
        raise BenchError("/usr/bin/time -v printed no 'Maximum resident set size'; install GNU time "
                         "(`apt-get install -y time`)")
    return int(match.group(1)) / 1024


def run_cell(name: str, args: list[str], root: Path, *, threads: int, images: int) -> MemoryRow:
    """One search in a fresh process under ``/usr/bin/time -v``, with an empty base-model cache."""
    time_bin = shutil.which("time") or "/usr/bin/time"
    if not Path(time_bin).is_file():
        raise BenchError("GNU time is not installed: `apt-get install -y time`")
    out, cache = root / "runs" / name, root / "cache" / name
    for path in (out, cache):
        shutil.rmtree(path, ignore_errors=True)
    env = {**os.environ, "AMC_CACHE_DIR": str(cache), "OMP_NUM_THREADS": str(threads)}
    command = [time_bin, "-v", sys.executable, str(REPO / "scripts" / "search.py"), *args, "--out", str(out),
               "--quiet", "--threads", str(threads), "--no-export"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("\t")][-3:]
        raise BenchError(f"the {name} search failed (exit {done.returncode}): {' | '.join(tail)}")
    policy = json.loads((out / "policy.json").read_text())
    metrics = policy["metrics"]
    return MemoryRow(loader=name, images=images, peak_rss_mb=_max_rss_mb(done.stderr), wall_s=wall,
                     base_val_accuracy=metrics["base_val_accuracy"], best_val_accuracy=metrics["val_accuracy"],
                     evaluations=policy["meta"]["evaluations"])


def memory(root: Path, *, fashion_dir: Path, evaluations: int, epochs: int, model: str, val_limit: int,
           threads: int, loader_workers: int, console: Console) -> tuple[list[MemoryRow], int]:
    """Both searches (the PNGs written first); finished runs come from ``root/results.json``."""
    root.mkdir(parents=True, exist_ok=True)
    images = write_pngs(fashion_dir, root / "pngs", console=console)
    results_path = root / "results.json"
    saved = json.loads(results_path.read_text()) if results_path.exists() else {}
    common = ["--model", model, "--epochs", str(epochs), "--evaluations", str(evaluations), "--val-limit",
              str(val_limit), "--budget", "0.5"]
    cells = {
        "imagefolder (streamed)": ["--dataset", "imagefolder", "--data-dir", str(root / "pngs"),
                                   "--dataset-kwargs", '{"size": 28}', "--loader-workers", str(loader_workers)],
        "fashion-mnist (in memory)": ["--dataset", "fashion-mnist", "--data-dir", str(fashion_dir)],
    }
    loaders = {"imagefolder (streamed)": ["imagefolder", str(root / "pngs"), '{"size": 28}'],
               "fashion-mnist (in memory)": ["fashion-mnist", str(fashion_dir)]}
    settings = {"evaluations": evaluations, "epochs": epochs, "model": model, "val_limit": val_limit,
                "threads": threads, "loader_workers": loader_workers}
    rows = []
    for name, args in cells.items():
        if name in saved and saved[name].get("settings") == settings:
            row = MemoryRow(**saved[name]["row"])
            console.print(f"{name}: done before ({row.peak_rss_mb:.0f} MB)")
        else:
            console.print(f"{name}: searching under /usr/bin/time -v ...")
            row = run_cell(name, [*common, *args], root, threads=threads, images=images)
        if math.isnan(row.held_mb):  # the loader alone not measured yet
            cost = loader_cost(loaders[name])
            row = MemoryRow(**{**asdict(row), "held_mb": cost["held_mb"], "load_peak_mb": cost["load_peak_mb"]})
        rows.append(row)
        saved[name] = {"settings": settings, "row": asdict(row)}
        results_path.write_text(json.dumps(saved, indent=2) + "\n")
        console.print(f"{name}: peak RSS {row.peak_rss_mb:.0f} MB in {row.wall_s:.0f} s")
    return rows, images


def memory_report(root: Path, *, fashion_dir: Path, evaluations: int, epochs: int, model: str, val_limit: int,
                  threads: int, loader_workers: int, command: str, markdown: Path, console: Console) -> None:
    """Runs :func:`memory`, prints its table and writes the ``memory`` section of ``markdown``."""
    from search.bench.common import machine

    rows, images = memory(root, fashion_dir=fashion_dir, evaluations=evaluations, epochs=epochs, model=model,
                          val_limit=val_limit, threads=threads, loader_workers=loader_workers, console=console)
    cells = tuple((r.loader, f"{r.images:,}", f"{r.peak_rss_mb:,.0f}", f"{r.held_mb:,.0f}", f"{r.load_peak_mb:,.0f}",
                   f"{r.wall_s:.0f}", f"{100 * r.base_val_accuracy:.2f}", f"{100 * r.best_val_accuracy:.2f}",
                   str(r.evaluations))
                  for r in rows)
    table = ResultTable("driver peak RSS: streamed image folder vs in-memory tensors",
                        ("loader", "images", "search: driver peak RSS (MB)", "loader alone: holds (MB)",
                         "loader alone: peak while loading (MB)", "search wall s", "base val acc", "best val acc",
                         "evaluations"), cells,
                        console_headers=("loader", "images", "peak RSS MB", "holds MB", "load peak MB", "wall s",
                                         "base val", "best val", "evals"))
    console.print(table.rich())
    streamed, in_memory = rows
    verdict = "under" if streamed.peak_rss_mb < LIMIT_MB else "OVER"
    lines = [f"Command: `{command}` (run with `nice -n 10`)  ",
             f"Machine: {machine()}  ",
             (f"Setup: {model} on fashion-mnist, once as {images:,} PNG files (`--dataset imagefolder`, 28x28 "
              "grayscale, decoded by Pillow in DataLoader workers) and once from the IDX files (`--dataset "
              f"fashion-mnist`, today's in-memory loader). Each search trains its base model ({epochs} epoch(s) "
              f"from an empty cache), runs {evaluations} Optuna evaluations at budget 0.5 FLOPs on the first "
              f"{val_limit} validation images, and measures the test set; `--threads {threads} --no-export`. "
              "Search peak: `/usr/bin/time -v`'s maximum resident set size of the search process (its DataLoader "
              "workers are child processes: GNU time reports the largest single process). Loader alone: "
              "`load_dataset` in a fresh process, RSS after it minus before, and the peak while it ran above "
              "the RSS before. Wall times are from a shared machine under other load."), "",
             *table.markdown(), "",
             (f"The streamed search stays {verdict} the 2 GB limit of issue 20 ({streamed.peak_rss_mb:,.0f} MB). "
              "At 28x28 pixels most of either search's peak is not the data: the imports, base training "
              "(autograd), the pruned copies of each candidate and forward passes of 512 test images put both "
              f"searches within {abs(in_memory.peak_rss_mb - streamed.peak_rss_mb):,.0f} MB of each other. "
              f"The loaders alone show the part that grows with the dataset: the in-memory loader holds "
              f"{in_memory.held_mb:,.0f} MB of float32 tensors and needs {in_memory.load_peak_mb:,.0f} MB while it "
              f"builds them; the image folder holds {streamed.held_mb:,.0f} MB (its index of {images:,} file "
              f"names) and peaks at {streamed.load_peak_mb:,.0f} MB while it checks every file and estimates the "
              "normalisation. In the search, the evaluator keeps its validation subset and BN-recalibration "
              "batches; training and the test set are read batch by batch. The in-memory share scales with "
              "pixels times images (100,000 224x224 RGB photos would be 60 GB as float32); the streamed share "
              "with the number of files only."), ""]
    update_section(markdown, "memory", "\n".join(lines), title="Memory: a 60,000-image folder, streamed vs in memory")


__all__ = ["MemoryRow", "loader_cost", "memory", "memory_report", "write_pngs"]


if __name__ == "__main__":
    _measure_loader(sys.argv[1:])
