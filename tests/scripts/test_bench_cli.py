"""``scripts/bench.py headline`` refuses bad options on one line, before any work starts.

In-process (:func:`search.cli.bench.main`, what the script runs): each case in a fresh process paid Python and
torch's start-up, ~3 s, for an argument check; the script's own start is tested in ``test_bench_deployed``.
"""

from __future__ import annotations

import pytest

from tests.search.helpers import refusal


@pytest.mark.parametrize(("args", "expected"), [
    (["--budgets", "abc"], "argument --budgets: must be a number in (0, 1] (fraction of the base FLOPs), got 'abc'"),
    (["--budgets", "0.3,1.5"], "got '1.5' (in '0.3,1.5')"),
    (["--budgets", "0.3,"], "must be a comma-separated list such as 0.3,0.5, got '0.3,'"),
    (["--seeds", "0,x"], "argument --seeds: must be an integer >= 0, got 'x' (in '0,x')"),
    (["--evaluations", "0"], "argument --evaluations: must be an integer >= 1, got '0'"),
])
def test_headline_refuses_bad_options(args, expected, tmp_path, capsys):
    code, lines = refusal(["headline", *args, "--root", str(tmp_path / "root")], capsys)
    assert code == 2
    assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "root").exists()  # nothing started


def test_comma_list_parses_every_item():
    from search.cli.common import comma_list, int_at_least, number_in

    assert comma_list(number_in(0, 1))("0.3, 0.5") == (0.3, 0.5)
    assert comma_list(int_at_least(0))("2") == (2,)


@pytest.mark.parametrize(("args", "expected"), [
    (["--sample-time", "0"], "argument --sample-time: must be a number in (0, 10] (seconds per sample), got '0'"),
    (["--repeats", "0"], "argument --repeats: must be an integer >= 1, got '0'"),
    (["--round-to", "x"], "argument --round-to: must be an integer >= 1, got 'x'"),
])
def test_latency_bench_refuses_bad_options(args, expected, tmp_path, capsys):
    markdown = tmp_path / "B.md"
    code, lines = refusal(["latency", *args, "--markdown", str(markdown)], capsys)
    assert code == 2
    assert len(lines) == 1 and expected in lines[0], lines
    assert not markdown.exists()  # nothing started


def test_gpu_and_memory_benches_refuse_what_they_cannot_run(tmp_path, capsys, monkeypatch):
    """``bench.py gpu`` without CUDA, ``bench.py memory`` without fashion-mnist: one line, exit 2, nothing written."""
    import torch

    from search.cli import bench

    markdown = tmp_path / "B.md"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["gpu", "--root", str(tmp_path / "gpu"), "--markdown", str(markdown)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench.py gpu: error: no CUDA device on this machine"), lines
    assert bench.main(["memory", "--fashion-dir", str(tmp_path / "nowhere"), "--root", str(tmp_path / "memory"),
                       "--markdown", str(markdown)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "lacks the fashion-mnist train IDX files" in lines[0], lines
    assert not markdown.exists() and not (tmp_path / "gpu").exists()
