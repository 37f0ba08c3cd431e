"""The latency cost model: table mechanics, cache trust, monotonicity, calibration fit, search integration.

Timings here use tiny run times: the tests check mechanisms, never speed (the accuracy of the
prediction is measured by ``scripts/bench.py latency``).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from amc.context import ContextConfig, build_context
from amc.cost import latency, lookup, timing
from amc.cost.latency import LatencyConfig, LatencyCost, build_latency_cost, cache_path
from amc.errors import BudgetError, ConfigError
from amc.graph.discover import discover
from envs.projection import BudgetProjector

# Its module fixtures are costly: one xdist worker runs the whole module (make test uses --dist loadgroup).
pytestmark = pytest.mark.xdist_group("latency")

FAST = dict(passes=1, grid=3, min_run_time=0.001, model_run_time=0.005, calibration_keeps=(0.5,), calibration_random=2,
            calibration_rounds=2)


@pytest.fixture(scope="module")
def resnet(small_model):
    model, example = small_model("resnet20")
    return model, discover(model, example[:1])


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("latency")


@pytest.fixture(scope="module")
def cost(resnet, table_dir) -> LatencyCost:
    model, graph = resnet
    return build_latency_cost(model, graph, LatencyConfig(cache_dir=str(table_dir), **FAST), progress=False)


def test_table_has_one_entry_per_module_and_base_is_the_unpruned_prediction(cost, resnet):
    _, graph = resnet
    assert [m["name"] for m in cost.table["modules"]] == [r.name for r in graph.modules]
    assert cost.base == pytest.approx(cost.cost([1.0] * len(graph)))
    assert cost.ratio([1.0] * len(graph)) == pytest.approx(1.0)
    assert cost.measured_base > 0 and cost.gamma > 0 and cost.alpha >= 0
    assert len(cost.calibration) == 1 + 1 + 2  # base, one uniform, two random models


def test_second_build_reads_the_cache_without_timing(cost, resnet, table_dir, monkeypatch):
    model, graph = resnet

    def no_timing(*args, **kwargs):
        raise AssertionError("the cached table was measured again")

    monkeypatch.setattr(latency, "_measure_entries", no_timing)
    again = build_latency_cost(model, graph, LatencyConfig(cache_dir=str(table_dir), **FAST), progress=False)
    assert again.base == cost.base
    assert again.table["modules"] == cost.table["modules"]


@pytest.mark.parametrize("damage", ["garbage", "foreign-device", "foreign-threads", "negative", "wrong-grid",
                                    "missing-field"])
def test_corrupt_or_foreign_cache_is_rebuilt(cost, resnet, table_dir, damage, caplog, monkeypatch):
    model, graph = resnet
    config = LatencyConfig(cache_dir=str(table_dir), **FAST)
    path = cache_path(graph, config)
    table = json.loads(path.read_text())
    if damage == "garbage":
        path.write_text("{not json")
    else:
        if damage == "foreign-device":
            table["key"]["device"] = "cpu:some other machine"
        elif damage == "foreign-threads":
            table["key"]["threads"] += 7
        elif damage == "negative":
            table["modules"][0]["ms"][0][0] = -1.0
        elif damage == "wrong-grid":
            table["modules"][1]["out_grid"] = table["modules"][1]["out_grid"][:-1]
        else:
            del table["gamma"]
        path.write_text(json.dumps(table))
    measured = []
    original = latency._measure_entries
    monkeypatch.setattr(latency, "_measure_entries", lambda *a, **k: measured.append(1) or original(*a, **k))
    with caplog.at_level(logging.WARNING, logger="amc.cost.latency"):
        rebuilt = build_latency_cost(model, graph, config, progress=False)
    assert measured == [1], "the damaged table was trusted"
    assert "rebuilding" in caplog.text
    entries = lookup.table_entries(model, graph, config.grid)[0]
    assert json.loads(path.read_text())["key"] == latency._cache_key(graph, config, entries)  # rewritten, good
    assert rebuilt.base > 0


def test_cache_key_names_device_torch_threads_batch_and_model(resnet):
    _, graph = resnet
    key = latency._cache_key(graph, LatencyConfig(batch_size=64, threads=2))
    assert key["device"].startswith("cpu:") and key["torch"] and key["threads"] == 2
    assert key["batch_size"] == 64 and key["model"] == graph.fingerprint and key["input_shape"] == [1, 16, 16]
    assert cache_path(graph, LatencyConfig(batch_size=1)) != cache_path(graph, LatencyConfig(batch_size=64))
    assert cache_path(graph, LatencyConfig(threads=1)) != cache_path(graph, LatencyConfig(threads=2))


def test_vectorised_paths_agree(cost, resnet):
    _, graph = resnet
    rng = np.random.default_rng(0)
    for _ in range(20):
        keep = rng.uniform(0.2, 1.0, len(graph))
        assert cost.cost_of(keep) == pytest.approx(cost.cost(keep.tolist()))
        t = int(rng.integers(len(graph)))
        candidates = np.linspace(0.05, 1.0, 25)
        curve = cost.costs_varying(keep, t, candidates)
        probe = keep.copy()
        probe[t] = candidates[7]
        assert curve[7] == pytest.approx(cost.cost(probe.tolist()))


def test_bilinear_interpolation_is_exact_on_a_plane():
    outs, ins = np.array([2.0, 5.0, 9.0]), np.array([1.0, 4.0])
    plane = 0.5 * outs[:, None] + 2.0 * ins[None, :] + 1.0
    out_q, in_q = np.arange(2, 10), np.arange(1, 5)
    full = lookup.bilinear(plane, outs, ins, out_q, in_q)
    assert np.allclose(full, 0.5 * out_q[:, None] + 2.0 * in_q[None, :] + 1.0)


def test_calibration_fit_recovers_scale_and_overhead():
    table = np.array([1.0, 2.0, 3.5, 5.0, 8.0])
    points = [{"measured_ms": 1.5 * t + 0.25, "table_ms": t} for t in table]
    alpha, gamma = latency._fit_remainder(points)
    assert gamma == pytest.approx(1.5) and alpha == pytest.approx(0.25)
    # A negative intercept is not allowed (it would let a tiny model cost less than nothing).
    alpha, gamma = latency._fit_remainder([{"measured_ms": 2 * t - 1, "table_ms": t} for t in table])
    assert alpha == 0.0 and gamma > 0
    # At that cap measured - (measured / table) * table rounds to -2.2e-16 for ~4% of values (as in a suite
    # run): a table whose alpha is below 0 is refused when read back, so it was measured again every time.
    bases = [(m, t) for m in np.linspace(1, 10, 200) for t in np.linspace(1, 10, 37)]
    assert any(m - (m / t) * t < 0 for m, t in bases)  # such values are among these
    for m, t in bases:
        alpha, gamma = latency._fit_remainder([{"measured_ms": m, "table_ms": t},
                                               {"measured_ms": 3 * m, "table_ms": t + 0.5}])
        assert alpha >= 0.0 and gamma == m / t


def test_calibration_fit_passes_through_the_base_model():
    """The base model (the first point) is the reference of every ratio: the fit reproduces its measurement
    exactly, even when it runs faster than the line through the pruned models (as measured: 0.2-2.6%)."""
    table = np.array([8.0, 1.0, 2.0, 3.5, 5.0])
    measured = 1.5 * table + 0.25
    measured[0] *= 0.97
    points = [{"measured_ms": m, "table_ms": t} for m, t in zip(measured, table)]
    alpha, gamma = latency._fit_remainder(points)
    assert gamma * table[0] + alpha == pytest.approx(measured[0])
    # the slope still follows the pruned models (a line through the base with their least-squares slope)
    d_t, d_m = table[1:] - table[0], measured[1:] - measured[0]
    assert gamma == pytest.approx(np.dot(d_t, d_m) / np.dot(d_t, d_t))
    predicted_ratio = (gamma * table[1:] + alpha) / (gamma * table[0] + alpha)
    free_gamma, free_alpha = 1.5, 0.25  # what a free fit of the pruned models alone gives
    free_ratio = (free_gamma * table[1:] + free_alpha) / (free_gamma * table[0] + free_alpha)
    true_ratio = measured[1:] / measured[0]
    # the pinned fit's ratios are closer to the measured ones than the free line's
    assert np.abs(predicted_ratio / true_ratio - 1).mean() < np.abs(free_ratio / true_ratio - 1).mean()
    # measurements that do not grow with the table: the base's own scale, through the base
    alpha, gamma = latency._fit_remainder([{"measured_ms": 2.0, "table_ms": t} for t in (4.0, 1.0, 2.0)])
    assert gamma == pytest.approx(0.5) and alpha == 0.0


def _synthetic_cost(model, graph) -> LatencyCost:
    """A latency cost from a made-up, noise-free table (ms = 1e-4 * out * in + 0.01 per entry)."""
    entries, _ = lookup.table_entries(model, graph, 4)
    modules = [{"name": e.name, "out_grid": list(e.out_grid), "in_grid": list(e.in_grid),
                "ms": [[1e-4 * o * max(i, 1) + 0.01 for i in e.in_grid] for o in e.out_grid]} for e in entries]
    table = {"modules": modules, "alpha": 0.05, "gamma": 1.0, "measured_base_ms": 1.0, "calibration": []}
    return LatencyCost(graph, table, config=LatencyConfig())


def test_unreachable_latency_budget_names_the_smallest(resnet):
    cost = _synthetic_cost(*resnet)  # timed tables are noisy: min_keep could even look slower than the base
    smallest = BudgetProjector(cost, 1.0).smallest_budget
    assert 0 < smallest < 1
    with pytest.raises(BudgetError, match=r"use a budget >= 0\.\d+") as info:
        BudgetProjector(cost, smallest / 2)
    assert "latency" in str(info.value)
    projector = BudgetProjector(cost, min(1.0, smallest + 0.05))
    keep = projector.project(np.random.default_rng(1).uniform(0.2, 1, len(cost.graph)).tolist())
    assert cost.ratio(keep) <= smallest + 0.05 + 1e-9


def test_bad_latency_settings_are_refused():
    with pytest.raises(ConfigError, match="batch size"):
        LatencyConfig(batch_size=0)
    with pytest.raises(ConfigError, match="threads"):
        LatencyConfig(threads=0)
    with pytest.raises(ConfigError, match="device"):
        LatencyConfig(device="tpu")
    with pytest.raises(ConfigError, match="grid"):
        LatencyConfig(grid=1)
    with pytest.raises(ConfigError, match="calibration_rounds must be a positive integer, got 0"):
        LatencyConfig(calibration_rounds=0)


def test_weight_granularity_has_no_latency_budget(digits, amc_cache):
    from amc.evaluation.evaluator import EvalConfig

    ctx = build_context(ContextConfig(cache_dir=str(amc_cache), resource="latency",
                                      eval=EvalConfig(granularity="weight")), progress=False)
    with pytest.raises(ConfigError, match="granularity channel"):
        ctx.cost_model()


def test_context_builds_the_latency_cost_once(amc_cache, tmp_path):
    ctx = build_context(ContextConfig(cache_dir=str(amc_cache), resource="latency",
                                      latency=LatencyConfig(cache_dir=str(tmp_path), **FAST)), progress=False)
    first = ctx.cost_model(progress=False)
    assert isinstance(first, LatencyCost) and ctx.cost_model() is first
    assert ctx.cost_model("flops").resource == "flops"


def test_keep_freed_memory_applies_on_linux():
    with timing.freed_memory_kept() as applied:
        assert applied is True


@pytest.mark.parametrize("environment", [None, "65536"])
def test_freed_memory_is_kept_only_while_timing(monkeypatch, environment):
    """The malloc settings are set once for nested timings and restored after the outermost one: to the
    user's ``MALLOC_*_THRESHOLD_`` when set, else glibc's defaults."""
    calls = []
    monkeypatch.setattr(timing, "_mallopt", lambda values: calls.append(dict(values)) or True)
    for variable in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        if environment is None:
            monkeypatch.delenv(variable, raising=False)
        else:
            monkeypatch.setenv(variable, environment)
    with timing.freed_memory_kept() as outer:
        with timing.freed_memory_kept() as inner:
            assert outer is True and inner is True
        assert len(calls) == 1
    restored = int(environment or 128 * 1024)
    assert calls == [{-3: 1 << 30, -1: 1 << 30}, {-3: restored, -1: restored}]
    compare_calls = len(calls)
    timing.compare_latency({"m": torch.nn.Linear(2, 2)}, (2,), repeats=2, min_run_time=0.001)
    assert len(calls) == compare_calls + 2  # one scope around the interleaved rounds


def _independent_prediction(cost: LatencyCost, keep) -> float:
    """gamma * sum of per-module bilinear lookups + alpha, with scipy instead of the dense tables."""
    from scipy.interpolate import RegularGridInterpolator

    out, inp = cost._shapes(np.asarray(cost.graph.channels(keep), dtype=np.float64))
    total = 0.0
    for o, i, entry in zip(out, inp, cost.table["modules"]):
        ms = np.asarray(entry["ms"])
        outs, ins = np.asarray(entry["out_grid"], float), np.asarray(entry["in_grid"], float)
        if len(outs) == 1:
            ms, outs = np.vstack([ms, ms]), np.array([outs[0], outs[0] + 1])
        if len(ins) == 1:
            ms, ins = np.hstack([ms, ms]), np.array([ins[0], ins[0] + 1])
        total += float(RegularGridInterpolator((outs, ins), ms)([[o, min(max(i, ins[0]), ins[-1])]])[0])
    return cost.gamma * total + cost.alpha


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "cnn"])
def test_prediction_equals_an_independent_lookup(name, small_model, tmp_path):
    model, example = small_model(name)
    graph = discover(model, example[:1], round_to=2)
    cost = build_latency_cost(model, graph, LatencyConfig(cache_dir=str(tmp_path), **FAST), progress=False)
    rng = np.random.default_rng(3)
    for _ in range(10):
        keep = rng.uniform(0.2, 1.0, len(graph)).tolist()
        assert cost.cost(keep) == pytest.approx(_independent_prediction(cost, keep), rel=1e-9)


def test_grouped_convs_are_timed_with_their_groups(tmp_path):
    import torch
    from torch import nn

    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=4), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 3))
    graph = discover(model.eval(), torch.zeros(1, 4, 6, 6))
    entries, _ = lookup.table_entries(model, graph, 3)
    grouped = next(e for e in entries if e.name == "0")
    assert grouped.config[5] == 4
    module, shape = lookup.standalone_module(grouped.config, grouped.out_grid[-1], grouped.in_grid[-1])
    assert module.groups == 4 and module.weight.shape == model[0].weight.shape and shape == (4, 6, 6)


def test_grid_follows_the_rounding_lattice():
    assert lookup.channel_grid(8, 32, 8, 8) == (8, 16, 24, 32)  # round_to 8: only the counts the search reaches
    assert lookup.channel_grid(1, 16, 20, 1) == tuple(range(1, 17))
    grid = lookup.channel_grid(8, 128, 8, 8)
    assert len(grid) <= 8 and grid[0] == 8 and grid[-1] == 128 and all(g % 8 == 0 for g in grid)


def test_same_shapes_other_stride_is_a_foreign_table(tmp_path):
    import torch
    from torch import nn

    def net(stride):
        return nn.Sequential(nn.Conv2d(1, 8, 3, stride=stride, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()

    config = LatencyConfig(cache_dir=str(tmp_path), **FAST)
    first, second = net(1), net(2)
    g1, g2 = discover(first, torch.zeros(1, 1, 8, 8)), discover(second, torch.zeros(1, 1, 8, 8))
    assert g1.fingerprint == g2.fingerprint  # parameter shapes alike: the fingerprint cannot tell them apart
    build_latency_cost(first, g1, config, progress=False)
    measured = []
    original = latency._measure_entries
    try:
        latency._measure_entries = lambda *a, **k: measured.append(1) or original(*a, **k)
        build_latency_cost(second, g2, config, progress=False)
    finally:
        latency._measure_entries = original
    assert measured == [1]


def test_exported_programs_can_be_timed(small_model, tmp_path):
    import torch

    from amc.cost.timing import compare_latency
    from amc.pruning.export import export_pt2

    model, example = small_model("cnn")
    program = torch.export.load(export_pt2(model, example, tmp_path / "m.pt2")).module()
    ms = compare_latency({"eager": model, "exported": program}, tuple(example.shape[1:]), repeats=1,
                         min_run_time=0.01)
    assert set(ms) == {"eager", "exported"} and all(v > 0 for v in ms.values())


class _SpellyTimer:
    """A stand-in for ``torch.utils.benchmark.Timer``: every run takes ``ms`` (a function of the module
    timed), except during a spell, when the whole machine runs ``factor`` times slower or faster."""

    def __init__(self, ms, spell: range, factor: float) -> None:
        self.ms, self.spell, self.factor, self.runs = ms, spell, factor, 0

    def __call__(self, fn, threads, calls: int = 1):
        timer = self

        class Measured:
            def blocked_autorange(self, min_run_time):
                scale = timer.factor if timer.runs in timer.spell else 1.0
                timer.runs += 1
                return type("M", (), {"median": 1e-3 * calls * scale * timer.ms(fn)})()

        return Measured()


@pytest.mark.parametrize("factor", [0.5, 3.0])
def test_a_spell_of_the_machine_moves_no_table_entry(resnet, tmp_path, monkeypatch, factor):
    """This VM switches between speeds 30-50% apart every few seconds: an entry is the median of its
    passes, so one pass timed in a fast or slow spell changes nothing (the minimum would take a fast one)."""
    model, graph = resnet
    entries, _ = lookup.table_entries(model, graph, 3)
    points = len({(e.config, o, i) for e in entries for o in e.out_grid for i in e.in_grid})

    def ms(fn):  # deterministic per configuration: the module's weight count
        return 1e-3 * sum(p.numel() for p in fn.__defaults__[0].parameters()) + 0.01

    def table(spell):
        monkeypatch.setattr(timing, "make_timer", _SpellyTimer(ms, spell, factor))
        config = LatencyConfig(grid=3, passes=3)
        return latency._measure_entries(entries, config, progress=False)

    calm = table(range(0))
    assert table(range(points, 2 * points)) == calm  # the whole second pass in a spell
    assert table(range(2 * points + 3, 3 * points - 3)) == calm  # most of the last pass
    assert table(range(0, 2 * points)) != calm  # two of three passes in the spell: it counts, as it should


def test_a_spell_during_interleaved_timing_moves_no_model(monkeypatch):
    from amc.cost.timing import compare_latency

    models = {"base": torch.nn.Linear(4, 4), "pruned": torch.nn.Linear(4, 2)}
    cost = {id(m): ms for m, ms in zip(models.values(), (2.0, 1.0))}

    def ms(fn):
        return next(cost[id(c.cell_contents)] for c in fn.__closure__ if isinstance(c.cell_contents, torch.nn.Module))

    timer = _SpellyTimer(ms, range(4, 10), 1.6)
    monkeypatch.setattr(timing, "make_timer", timer)
    measured = compare_latency(models, (4,), repeats=9, min_run_time=0.01)
    assert measured == {"base": pytest.approx(2.0), "pruned": pytest.approx(1.0)}  # 3 of 9 rounds slow


def _module_ms(fn) -> float:
    """A deterministic stand-in latency for whatever ``fn`` runs: its module's weight count (entries bind the
    module as a default argument, whole-model timings in their closure)."""
    cells = list(fn.__defaults__ or ()) + [c.cell_contents for c in (fn.__closure__ or ())]
    module = next(c for c in cells if isinstance(c, torch.nn.Module))
    return 1e-3 * sum(p.numel() for p in module.parameters()) + 0.01


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_spell_over_a_third_of_the_build_moves_neither_table_nor_calibration(resnet, tmp_path, monkeypatch, where):
    """The calibration rounds are spread over the table's passes. Were they all timed after the table (as
    before), a spell over the last third of the build would have hit every one of them and set the scale."""
    model, graph = resnet
    config = LatencyConfig(grid=3, passes=3, calibration_rounds=9, calibration_keeps=(0.5,), calibration_random=1,
                           cache_dir=str(tmp_path))
    entries, _ = lookup.table_entries(model, graph, config.grid)
    points = len({(e.config, o, i) for e in entries for o in e.out_grid for i in e.in_grid})
    runs = 3 * points + 9 * 3  # table entries of 3 passes, 9 rounds over 3 calibration models
    third = range(0, runs // 3) if where == "first" else range(runs - runs // 3, runs)

    def build(spell):
        timer = _SpellyTimer(_module_ms, spell, 2.0)
        monkeypatch.setattr(timing, "make_timer", timer)
        cost = build_latency_cost(model, graph, config, progress=False, use_cache=False)
        assert timer.runs == runs
        return cost.table

    calm, spelled = build(range(0)), build(third)
    assert spelled["modules"] == calm["modules"]
    assert [p["measured_ms"] for p in spelled["calibration"]] == [p["measured_ms"] for p in calm["calibration"]]
    assert (spelled["alpha"], spelled["gamma"]) == (calm["alpha"], calm["gamma"])


def test_calibration_rounds_run_between_the_entries_of_every_pass(resnet, monkeypatch):
    model, graph = resnet
    config = LatencyConfig(grid=3, passes=2, calibration_rounds=4, calibration_keeps=(), calibration_random=0)
    entries, _ = lookup.table_entries(model, graph, config.grid)
    order = []
    monkeypatch.setattr(timing, "make_timer", _SpellyTimer(lambda fn: order.append(fn.__defaults__ is None) or 1.0,
                                                        range(0), 1.0))
    calibration = latency._Calibration(model, graph, config)
    latency._measure_entries(entries, config, progress=False, calibration=calibration)
    at = [i for i, whole in enumerate(order) if whole]  # positions of the 4 base-model samples
    steps = len(order) - 4
    assert len(at) == 4 and len(calibration.samples[0]) == 4 and steps > 20
    entries_before = [i - k for k, i in enumerate(at)]  # table entries timed before each round
    share = steps / 4  # each round sits in the middle of its quarter of the entries
    assert all(abs(n - (k + 0.5) * share) <= 1 for k, n in enumerate(entries_before)), (entries_before, steps)
    assert entries_before[1] < steps / 2 < entries_before[2]  # two rounds in each of the two passes
