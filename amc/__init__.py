"""AMC-style pruning core: models, data, layer discovery, cost models, pruning and evaluation.

This package never imports ``envs``, ``search``, gymnasium, stable-baselines3, optuna or ray.
"""

from __future__ import annotations

__version__ = "0.1.0"
