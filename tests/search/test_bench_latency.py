"""``scripts/bench.py latency`` mechanics on tiny timings (its accuracy figures come from the real run)."""

from __future__ import annotations

import pytest

import search.bench.latency as bench
from search.bench.latency import latency_accuracy

FAST = dict(passes=1, grid=3, min_run_time=0.001, model_run_time=0.005, calibration_keeps=(0.5,), calibration_random=2,
            calibration_rounds=2)


def test_latency_bench_rows_time_every_policy_and_the_base_together(monkeypatch):
    calls = []
    real = bench.compare_latency

    def spy(models, *args, **kwargs):
        calls.append(sorted(models))
        return real(models, *args, **kwargs)

    monkeypatch.setattr(bench, "compare_latency", spy)
    import amc.cost.latency

    measured = []  # every table build that times its modules (a build read from the cache times none)
    real_measure = amc.cost.latency._measure_entries

    def measure_spy(entries, *args, **kwargs):
        measured.append(len(entries))
        return real_measure(entries, *args, **kwargs)

    monkeypatch.setattr(amc.cost.latency, "_measure_entries", measure_spy)
    seen = []
    rows = list(latency_accuracy(("cnn",), (1, 8), policies=4, repeats=3, sample_time=0.005, round_to=4, table=FAST,
                                 on_policy=lambda model, batch, row: seen.append((model, batch))))
    assert [(r.model, r.batch_size) for r in rows] == [("cnn", 1), ("cnn", 8)]
    assert seen == [("cnn", 1)] * 4 + [("cnn", 8)] * 4
    # One timing call per row, with the base and all four policies in the same interleaved rounds.
    assert calls == [["base", "policy0", "policy1", "policy2", "policy3"]] * 2
    # One timed table per (model, batch size): each second build read its table back (no timing assertion:
    # CI machines under load make build times meaningless; the benchmark reports them).
    assert len(measured) == 2 and all(n > 0 for n in measured)
    for row in rows:
        assert len(row.policies) == 4
        assert row.cached_seconds > 0 and row.build_seconds > 0
        assert row.base_now_ms > 0 and row.base_predicted_ms > 0
        assert row.base_drift == pytest.approx(row.base_now_ms / row.base_measured_ms - 1)
        for p in row.policies:
            # Every policy is feasible and smaller than the base: its predicted ratio is within its budget.
            assert 0 < p.predicted_ratio <= p.budget + 1e-9
            assert p.measured_ms > 0 and p.predicted_ms > 0
            assert p.ratio_error == pytest.approx(p.predicted_ratio / p.measured_ratio - 1)
        assert row.worst_ratio_error >= row.median_ratio_error >= 0
