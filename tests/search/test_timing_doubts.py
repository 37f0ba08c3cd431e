"""Implausible timings are flagged, not shown as facts (issue 32, point 10); the outputs name their phases."""

from __future__ import annotations

import logging

import pytest

import amc.cost.timing
from amc.context import ContextConfig
from amc.cost.timing import TIMING_HINT, spread, timing_doubts
from amc.evaluation.compare import ModelStats, TimingDoubt, comparison_doubts
from search.config import SearchConfig
from search.report import write_html
from search.runner import run_search


def _stats(name: str, flops: int, latency: dict[int, float], spreads: dict[int, float] | None = None) -> ModelStats:
    return ModelStats(name=name, params=flops // 10, flops=flops, size_bytes=flops, latency_ms=latency,
                      test_accuracy=0.9, latency_spread=spreads or {})


def test_spread_is_the_range_over_the_median():
    assert spread([1.0, 1.0, 1.0]) == 0.0 and spread([2.0]) == 0.0
    assert spread([1.0, 2.0, 1.5]) == pytest.approx(1.0 / 1.5)


def test_the_issues_timing_is_flagged_and_a_plausible_one_is_not():
    # apply_policy.py printed 256 ms (base) against 3.7 ms (pruned) at batch 64 for 0.29 of the FLOPs.
    doubts = timing_doubts(label="batch 64", base_ms=256.0, pruned_ms=3.7, flops_ratio=0.29)
    assert len(doubts) == 1 and "faster than the removed work allows" in doubts[0] and "0.014" in doubts[0]
    assert timing_doubts(label="batch 64", base_ms=6.2, pruned_ms=2.4, flops_ratio=0.29) == []
    # A small model at batch 1 is mostly per-call overhead: a ratio near 1 is explained, not flagged.
    assert timing_doubts(label="batch 1", base_ms=0.6, pruned_ms=0.5, flops_ratio=0.29) == []
    slower = timing_doubts(label="batch 1", base_ms=0.6, pruned_ms=0.9, flops_ratio=0.29)
    assert len(slower) == 1 and "slower than the base" in slower[0] and "--round-to 8" in slower[0]
    noisy = timing_doubts(label="batch 1", base_ms=0.6, pruned_ms=0.3, flops_ratio=0.29, base_spread=0.8)
    assert len(noisy) == 1 and "base model's latency at batch 1 varied by 80%" in noisy[0]
    assert "idle machine" in TIMING_HINT and "--threads 1" in TIMING_HINT


def test_comparison_doubts_name_the_batch():
    base = _stats("base", 1000, {1: 0.6, 64: 256.0})
    pruned = _stats("pruned", 290, {1: 0.4, 64: 3.7}, {1: 0.9})
    doubts = comparison_doubts(base, pruned)
    assert [d.batch for d in doubts] == [1, 64]
    assert "pruned model's latency at batch 1 varied" in doubts[0].reason
    assert comparison_doubts(base, _stats("pruned", 290, {1: 0.4, 64: 80.0})) == []


def test_report_html_marks_doubted_cells_and_says_how_to_time(tmp_path):
    png = tmp_path / "report.png"
    png.write_bytes(b"\x89PNG")
    base, pruned = _stats("base", 1000, {1: 0.6, 64: 256.0}), _stats("pruned", 290, {1: 0.4, 64: 3.7})
    path = write_html(tmp_path / "report.html", png, title="t", summary=[("a", "b")], comparison=[base, pruned],
                      doubts=[TimingDoubt(64, "latency ratio 0.014 at batch 64")], hint=TIMING_HINT)
    html = path.read_text()
    assert "256.000 (?)" in html and "3.700 (?)" in html and "0.014 (?)" in html  # batch 64 marked, ratio row
    assert "0.600 (?)" not in html and "0.667" in html  # batch 1 is not doubted
    assert "not to be trusted" in html and "latency ratio 0.014 at batch 64" in html and "--threads 1" in html
    plain = write_html(tmp_path / "plain.html", png, title="t", summary=[], comparison=[base, pruned]).read_text()
    assert "(?)" not in plain and "not to be trusted" not in plain


def test_a_search_with_an_implausible_timing_flags_it(tmp_path, amc_cache, monkeypatch, caplog):
    real = amc.cost.timing.compare_latency_samples

    def implausible(models, input_shape, *, batch_size=1, **kwargs):  # the base 70x slower at batch 64
        if batch_size != 64:
            return real(models, input_shape, batch_size=batch_size, **kwargs)
        return {name: [256.0, 250.0, 260.0] if name == "base" else [3.7, 3.6, 3.8] for name in models}

    monkeypatch.setattr(amc.cost.timing, "compare_latency_samples", implausible)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        run_search(SearchConfig(budget=0.5, strategy="random", evaluations=3, out=str(out), progress=False,
                                export=False, context=ContextConfig(cache_dir=str(amc_cache))))
    warning = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("report.html:"))
    assert "batch 64" in warning and "faster than the removed work allows" in warning and TIMING_HINT in warning
    html = (out / "report.html").read_text()
    assert "256.000 (?)" in html and "not to be trusted" in html
    # Every phase after the search names itself in run.log (and on the progress line).
    log = (out / "run.log").read_text()
    for phase in ("outputs: uniform baseline", "outputs: best policy", "outputs: test accuracy",
                  "outputs: writing policy.json", "outputs: drawing report.png", "outputs: timing the base and pruned",
                  "outputs: writing report.html"):
        assert phase in log
