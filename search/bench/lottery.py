"""Lottery-ticket benchmark (``scripts/lottery.py``): iterative magnitude pruning with rewinding vs random re-init.

Each seed trains the dense network, then prunes ``prune_per_round`` of the remaining weights per round,
rewinds the survivors to their initial (or ``rewind_epoch``) values and retrains; the control trains the
same mask from a fresh random init (:mod:`amc.analysis.lottery`). Rows go to ``<out>/lottery.csv`` (one per seed
and round); a rerun with the same settings skips the seeds already there.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from search.bench.common import BenchError
from search.bench.markdown import ResultTable, markdown_table, update_section

CSV_NAME = "lottery.csv"
SETTINGS_NAME = "settings.json"
FIELDS = ("seed", "round", "sparsity", "ticket_val", "ticket_test", "random_val", "random_test", "seconds")
HEADER = ("round", "sparsity", "ticket test %", "random re-init test %", "ticket − random (pts)", "seeds")


@dataclass(frozen=True)
class LotterySettings:
    """One lottery experiment (the options of ``scripts/lottery.py`` other than where results go)."""

    model: str = "cnn"
    dataset: str = "digits"
    data_dir: str | None = None
    rounds: int = 5
    prune_per_round: float = 0.2
    rewind_epoch: int = 0
    epochs: int = 15
    lr: float = 0.05
    batch_size: int = 64
    output_layer_rate: float = 0.5
    per_layer: bool = False
    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int = 1

    def rows_key(self) -> dict:
        """What the rows depend on: a rerun into the same folder must use the same values (``settings.json``)."""
        return {"model": self.model, "dataset": self.dataset, "data_dir": self.data_dir, "rounds": self.rounds,
                "prune_per_round": self.prune_per_round, "rewind_epoch": self.rewind_epoch, "epochs": self.epochs,
                "lr": self.lr, "batch_size": self.batch_size, "output_layer_rate": self.output_layer_rate,
                "global_pruning": not self.per_layer}

    def command(self) -> str:
        """The command with every setting spelled out (without --out, --markdown and --quiet)."""
        parts = ["python scripts/lottery.py", f"--model {self.model}", f"--dataset {self.dataset}"]
        if self.data_dir:
            parts.append(f"--data-dir {self.data_dir}")
        parts += [f"--rounds {self.rounds}", f"--prune-per-round {self.prune_per_round:g}",
                  f"--rewind-epoch {self.rewind_epoch}", f"--epochs {self.epochs}", f"--lr {self.lr:g}",
                  f"--batch-size {self.batch_size}", f"--output-layer-rate {self.output_layer_rate:g}"]
        if self.per_layer:
            parts.append("--per-layer")
        parts += [f"--seeds {','.join(map(str, self.seeds))}", f"--threads {self.threads}"]
        return " ".join(parts)


class SettingsError(BenchError):
    """The output folder cannot be used (reported like a bad argument: one line, exit code 2)."""


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: (int(v) if k in ("seed", "round") else float(v) if v != "" else None) for k, v in row.items()}
                for row in csv.DictReader(f)]


def write_rows(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for row in sorted(rows, key=lambda r: (r["seed"], r["round"])):
            writer.writerow({k: "" if row[k] is None else row[k] for k in FIELDS})
    os.replace(tmp, path)  # atomic: an interrupted run never leaves half a seed


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}"


def summary(rows: list[dict], seeds: tuple[int, ...]) -> list[tuple[str, ...]]:
    """One line per round: round, sparsity, ticket test, random re-init test, ticket - random, seeds."""
    lines = []
    for round_ in sorted({r["round"] for r in rows}):
        at = [r for r in rows if r["round"] == round_ and r["seed"] in seeds]
        ticket = [r["ticket_test"] for r in at]
        random = [r["random_test"] for r in at if r["random_test"] is not None]
        gap = [r["ticket_test"] - r["random_test"] for r in at if r["random_test"] is not None]
        lines.append((str(round_), f"{100 * statistics.fmean(r['sparsity'] for r in at):.1f}%", _mean_std(ticket),
                      _mean_std(random), _mean_std(gap), str(len(at))))
    return lines


def markdown_body(settings: LotterySettings, lines: list[tuple[str, ...]], seconds: float) -> str:
    s = settings
    rewind = "the initial weights" if s.rewind_epoch == 0 else f"the weights after epoch {s.rewind_epoch}"
    pruning = "per layer" if s.per_layer else "one global magnitude threshold over all conv/linear weights"
    return "\n".join([
        f"Command: `{s.command()}`  ",
        (f"Seeds {', '.join(map(str, s.seeds))}; {s.model} on {s.dataset}; {s.rounds} rounds removing "
        f"{100 * s.prune_per_round:g}% of the remaining weights each ({pruning}; the final classifier at "
        f"{s.output_layer_rate:g}x that rate); survivors rewound to {rewind} (biases and BatchNorm too) and "
        f"retrained for {s.epochs - s.rewind_epoch} epochs (SGD, one-cycle schedule of {s.epochs} epochs, "
        f"lr {s.lr:g}, batch {s.batch_size}). Random re-init: the same mask on a fresh, differently seeded "
        f"init, trained identically; round 0 is the dense network (its control: another init). Test accuracy "
        f"in %, mean ± sample std over the seeds; sparsity = zero fraction of all conv/linear weights. "
        f"{seconds / 60:.1f} min of compute with {s.threads} torch thread(s)."),
        "",
        *markdown_table(HEADER, lines),
        "",
    ])


def _finished_rows(out: Path, settings: LotterySettings) -> list[dict]:
    """The rows already in ``out`` (checked against ``settings.json``, written there on first use).

    Raises:
        SettingsError: ``out`` holds rows of other settings, is not writable, or holds malformed files.
    """
    key = settings.rows_key()
    settings_path, csv_path = out / SETTINGS_NAME, out / CSV_NAME
    try:
        out.mkdir(parents=True, exist_ok=True)
        if settings_path.is_file():
            saved = json.loads(settings_path.read_text())
            if saved != key:
                changed = ", ".join(f"{k} {saved.get(k)!r} there, {v!r} now" for k, v in key.items()
                                    if saved.get(k) != v)
                raise SettingsError(f"{out} holds rows of other settings ({changed}); use another --out")
        else:
            settings_path.write_text(json.dumps(key, indent=2) + "\n")
        rows = read_rows(csv_path)
    except OSError as exc:
        raise SettingsError(f"cannot use --out {str(out)!r} ({exc}); pass a writable folder") from exc
    except (ValueError, KeyError) as exc:
        raise SettingsError(f"{csv_path} or {settings_path} is malformed ({exc}); use another --out") from exc
    complete = {s for s in {r["seed"] for r in rows}
                if {r["round"] for r in rows if r["seed"] == s} == set(range(settings.rounds + 1))}
    return [r for r in rows if r["seed"] in complete]  # rows of an interrupted seed are redone


def lottery_report(settings: LotterySettings, *, out: Path, markdown: Path | None, progress: bool,
                   console: Console) -> None:
    """Runs the seeds not yet in ``out``, prints the table and, with ``markdown``, writes its ``lottery`` section.

    Raises:
        SettingsError: ``out`` cannot be used (see :func:`_finished_rows`).
        amc.errors.AmcError: An unknown model or dataset, or another bad setting.
    """
    import torch

    from amc.data.datasets import load_dataset
    from amc.analysis.lottery import LotteryConfig, LotteryExperiment, run_lottery
    from amc.train import TrainConfig

    torch.set_num_threads(settings.threads)
    train = TrainConfig(epochs=settings.epochs, lr=settings.lr, batch_size=settings.batch_size)
    configs = {seed: LotteryConfig(rounds=settings.rounds, prune_per_round=settings.prune_per_round,
                                   rewind_epoch=settings.rewind_epoch, train=train,
                                   global_pruning=not settings.per_layer,
                                   output_layer_rate=settings.output_layer_rate, seed=seed)
               for seed in settings.seeds}
    data = load_dataset(settings.dataset, root=settings.data_dir)
    LotteryExperiment(settings.model, data, configs[settings.seeds[0]]).build(0)  # an unknown model fails now

    csv_path = out / CSV_NAME
    rows = _finished_rows(out, settings)
    complete = {r["seed"] for r in rows}
    start = time.perf_counter()
    for seed in settings.seeds:
        if seed in complete:
            console.print(f"seed {seed}: already in {csv_path}, skipped")
            continue
        seed_start = time.perf_counter()
        rounds = run_lottery(settings.model, data, configs[seed], progress=progress)
        rows += [{"seed": seed, **{k: getattr(r, k) for k in FIELDS[1:]}} for r in rounds]
        write_rows(csv_path, rows)
        console.print(f"seed {seed}: done in {time.perf_counter() - seed_start:.1f} s; final ticket test "
                      f"{rounds[-1].ticket_test:.4f}, random re-init {rounds[-1].random_test:.4f} "
                      f"at sparsity {rounds[-1].sparsity:.3f}")
    lines = summary(rows, settings.seeds)
    title = f"Lottery tickets: {settings.model} / {settings.dataset}, mean ± std over seeds {list(settings.seeds)}"
    console.print(ResultTable(title, HEADER, tuple(lines)).rich())
    compute = sum(r["seconds"] for r in rows if r["seed"] in settings.seeds)
    console.print(f"rows in {csv_path}; {compute:.1f} s of compute ({time.perf_counter() - start:.1f} s this run)")
    if markdown is not None:
        rewind = "rewind to init" if settings.rewind_epoch == 0 else f"rewind to epoch {settings.rewind_epoch}"
        update_section(markdown, "lottery", markdown_body(settings, lines, compute),
                       title=f"Lottery tickets: {settings.model} / {settings.dataset}, {rewind}")
        console.print(f"wrote the 'lottery' section of {markdown}")
