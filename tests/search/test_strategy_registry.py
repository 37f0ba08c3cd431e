"""The strategy registry: every ``--strategy`` name resolves to a registered :class:`Strategy` class."""

from __future__ import annotations

import subprocess
import sys

import pytest

from amc.errors import ConfigError
from search import strategies

# Every --strategy the command line has offered, in its order.
STRATEGIES = ("ddpg", "td3", "sac", "optuna", "random", "uniform", "sensitivity", "tp-global")


def test_every_command_line_strategy_is_registered_under_its_name() -> None:
    assert strategies.names() == STRATEGIES
    for name in strategies.names():
        cls = strategies.get(name)
        assert issubclass(cls, strategies.Strategy) and cls.name == name
        assert cls.batch_size(1) >= 1 and cls.batch_size(4) >= 4


def test_the_loop_reads_each_strategy_from_its_class() -> None:
    assert {n for n in STRATEGIES if strategies.get(n).single_policy} == {"uniform", "sensitivity", "tp-global"}
    assert {n for n in STRATEGIES if strategies.get(n).runs_own_ladder} == {"optuna"}
    # Batches as before the registry: random 16 per worker, sensitivity at least 16 curve points.
    assert [strategies.get("random").batch_size(w) for w in (1, 2)] == [1, 32]
    assert [strategies.get("sensitivity").batch_size(w) for w in (1, 2, 5)] == [16, 16, 20]
    assert [strategies.get("optuna").batch_size(w) for w in (1, 3)] == [1, 3]


def test_an_unknown_name_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown --strategy 'nope'.*ddpg"):
        strategies.get("nope")


def test_a_name_cannot_be_registered_twice() -> None:
    class Other(strategies.Strategy):
        name = "uniform"

    strategies.get("uniform")
    with pytest.raises(ValueError, match="registered twice"):
        strategies.register(Other)


def test_the_names_cost_no_heavy_import() -> None:
    code = ("import sys; from search import strategies; strategies.names(); "
            "print(sorted(m for m in ('torch', 'optuna', 'stable_baselines3') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_torch_free_name_lists_match_what_optuna_builds() -> None:
    import optuna

    from search.ladder import make_pruner
    from search.strategies.optuna_search import SAMPLERS as BUILT
    from search.values import PRUNERS, SAMPLERS

    assert SAMPLERS == tuple(BUILT)
    assert all(isinstance(make_pruner(name, 2), optuna.pruners.BasePruner) for name in PRUNERS)
    with pytest.raises(ValueError, match="halving, hyperband"):
        make_pruner("median", 2)
