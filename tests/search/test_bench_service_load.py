"""``scripts/bench.py service-load`` on tiny numbers: a real server, its queue and open-loop polling (acceptance 7).

Two searches through ``--max-concurrent 1`` (one waits in the queue), then 2 s of polling at 20/s.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from search.bench.service_load import LoadResult, LoadSettings, Polling, _max_overlap, service_load_report


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_service_load_keeps_the_queue_and_answers_every_poll(amc_cache: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # A cache of this test's own (the session's is shared with other test workers): the session's cnn.
    cache = tmp_path / "cache"
    cache.mkdir()
    for checkpoint in amc_cache.glob("cnn-*.pt"):
        shutil.copy2(checkpoint, cache)
    monkeypatch.setenv("AMC_CACHE_DIR", str(cache))  # the server's searches load the session's cnn
    markdown = tmp_path / "BENCHMARKS.md"
    cached = sorted(cache.iterdir())
    settings = LoadSettings(searches=2, max_concurrent=1, evaluations=1, seconds=2.0, rate=20.0, timeout=240.0)
    result = service_load_report(settings, command="bench.py service-load (test)", markdown=markdown,
                                 console=Console(file=io.StringIO()))
    assert sorted(cache.iterdir()) == cached  # the searches loaded the cached cnn: none trained its own
    assert result.problems() == []
    assert result.states == {"succeeded": 2} and result.submit_errors == 0
    assert (result.max_running_sampled, result.max_running_recorded) == (1, 1) and result.in_order
    assert result.samples >= 2  # the queue was looked at while it drained
    polling = result.polling
    assert (polling.requests, polling.errors) == (40, 0)
    assert 0 < polling.p50 <= polling.p95 <= polling.p99 <= polling.max
    assert polling.achieved_rate == pytest.approx(20, rel=0.2)
    section = markdown.read_text()
    assert "## Service load" in section and f"| {polling.p99:.1f} |" in section and "Machine: " in section


def test_a_broken_invariant_is_a_problem() -> None:
    polling = Polling(requests=10, errors=1, error_kinds={"HTTP 500": 1}, p50=1, p95=2, p99=3, max=4,
                      achieved_rate=10, max_lag_ms=0, load_average=1.0, niceness=0)
    result = LoadResult(settings=LoadSettings(searches=3, max_concurrent=2), submit_errors=0, burst_seconds=1,
                        drain_seconds=2, states={"succeeded": 2, "failed": 1}, samples=5, max_running_sampled=2,
                        max_running_recorded=3, in_order=False, polling=polling)
    problems = " | ".join(result.problems())
    for words in ("not every search succeeded", "more than --max-concurrent 2 ran at once", "submission order",
                  "1 status requests failed"):
        assert words in problems


def test_overlap_counts_an_end_before_a_start_at_the_same_moment() -> None:
    rows = [{"started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:00:02+00:00"},
            {"started_at": "2026-01-01T00:00:01+00:00", "finished_at": "2026-01-01T00:00:03+00:00"},
            {"started_at": "2026-01-01T00:00:02+00:00", "finished_at": "2026-01-01T00:00:04+00:00"},
            {"started_at": None, "finished_at": "2026-01-01T00:00:00+00:00"}]  # cancelled while queued
    assert _max_overlap(rows) == 2
    assert _max_overlap(rows[:1] + rows[2:3]) == 1
