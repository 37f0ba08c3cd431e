"""Project exception hierarchy.

Every error a user can cause is an :class:`AmcError` whose message names the bad value and says how to
fix it. Internal invariants use ``assert``.
"""

from __future__ import annotations


class AmcError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(AmcError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class DataError(AmcError):
    """A dataset is missing, malformed or unknown."""


class ModelError(AmcError):
    """A model name, factory or checkpoint cannot be used."""


class UnsupportedModelError(ModelError):
    """The model contains a structure the pruner or cost model cannot handle exactly."""


class PolicyError(AmcError, ValueError):
    """A pruning policy is malformed or does not fit the model it is applied to."""


class BudgetError(ConfigError):
    """A resource budget cannot be met under the given constraints."""
