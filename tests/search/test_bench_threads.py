"""``scripts/bench.py threads`` mechanics (its figures come from the real run) and the ``--threads`` default."""

from __future__ import annotations

import time

import pytest

import search.bench.threads as bench
from search.bench.threads import ThreadsRow, busy_loop, phases, threads_report
from search.cli.bench import main
from search.launch import command_line
from search.options import SearchOptions, options

LOG = """2026-12-07 11:00:00,000 INFO search.runner: search optuna, budget 0.300 flops, 15 evaluations (0 done before)
2026-12-07 11:00:12,500 INFO search.outputs: outputs: uniform baseline: validation accuracy
2026-12-07 11:00:13,000 INFO search.outputs: outputs: uniform baseline: validation accuracy took 0.5 s
2026-12-07 11:00:20,250 INFO search.outputs: best policy: val 0.9 test 0.9 cost ratio 0.29 (runs/x)
"""


def test_phases_split_the_run_log():
    assert phases(LOG) == (pytest.approx(12.5), pytest.approx(7.75))


def test_the_busy_loop_is_bounded_and_stoppable():
    start = time.monotonic()
    loop = busy_loop(0.3)
    assert loop.wait(timeout=30) == 0 and time.monotonic() - start < 30  # ends by itself
    loop = busy_loop(600)
    loop.kill()
    assert loop.wait(timeout=10) != 0


def test_the_report_adds_before_and_after_and_resumes(tmp_path, monkeypatch, capsys):
    calls = []

    def cell(model, threads, load, root, *, evaluations, cell_timeout):
        calls.append((model, load, threads))
        slow = threads > 1 and load == "loaded"
        return ThreadsRow(model, threads, load, 200.0 if slow else 20.0, 15.0, 4.0, 1.0, evaluations, 0.9, 2.5,
                          timed_out=slow)

    monkeypatch.setattr(bench, "torch_default_threads", lambda: 2)
    monkeypatch.setattr(bench, "run_cell", cell)
    monkeypatch.setattr(bench, "_warm_up", lambda model, root: None)
    markdown = tmp_path / "BENCHMARKS.md"
    run = dict(models=("cnn",), threads=(1,), evaluations=3, cell_timeout=200.0, command="bench.py threads",
               markdown=markdown, console=bench.Console(width=200))
    threads_report(tmp_path / "root", **run)
    assert calls == [("cnn", "idle", 1), ("cnn", "idle", 2), ("cnn", "loaded", 1), ("cnn", "loaded", 2)]
    text = markdown.read_text()
    assert "<!-- bench:threads -->" in text and "| cnn | 1 (after: the default now) | none | 20.0 |" in text
    assert "| cnn | 2 (before: torch's default) | one busy loop | > 200 |" in text
    assert "- cnn: idle 20.0 s with 2 thread(s) against 20.0 s with 1, 1.0x; beside a busy loop > 200 s" in text
    assert "the benchmark's own previous cells included" in text  # the load column is explained
    threads_report(tmp_path / "root", **run)  # every cell saved: nothing runs again
    assert len(calls) == 4


def test_the_bench_refuses_an_unknown_model_in_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["threads", "--models", "cnn,vgg"])
    assert exc.value.code == 2 and "unknown model 'vgg'" in capsys.readouterr().err


def test_one_thread_is_the_default_of_the_cli_and_the_service():
    threads = options()["threads"]
    assert threads.default == 1 and SearchOptions().threads == 1  # the service's JSON body and TOML: the same model
    assert SearchOptions().to_config().context.latency.threads == 1  # a latency table is timed as the search runs
    assert "BENCHMARKS.md, threads" in " ".join(command_line().format_help().split())
