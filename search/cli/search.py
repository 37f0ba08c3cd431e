"""Search per-layer pruning ratios that keep the most accuracy under a resource budget.

    python scripts/search.py --budget 0.3                      # keep <= 30% of the base model's FLOPs
    python scripts/search.py --budget 0.5 --strategy optuna --sampler tpe --evaluations 200
    python scripts/search.py --config run.toml --resume --out runs/my-run

Options given on the command line override those of ``--config`` (a TOML file whose keys are the
long option names, e.g. ``budget = 0.3``, ``strategy = "optuna"``).

Ctrl-C stops a search, writes its best policy so far and exits with status 130; ``--resume --out RUN``
continues it (with the same options). A bad option is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from search import launch
from search.options import ConfigFileError, SearchOptions, defaults

__all__ = ["DEFAULTS", "ConfigFileError", "build_config", "build_parser", "main", "resolve_options"]

DEFAULTS = defaults()


def build_parser() -> argparse.ArgumentParser:
    """``scripts/search.py``'s parser, derived from :class:`~search.options.SearchOptions`."""
    return launch.command_line(prog="search.py", description=__doc__)


def resolve_options(argv: list[str] | None) -> SearchOptions:
    """Defaults, then ``--config``, then the command line."""
    return launch.resolve_options(argv, build_parser())


def build_config(options: SearchOptions | dict[str, Any]):
    """Frozen configs from the resolved options."""
    if not isinstance(options, SearchOptions):
        options = SearchOptions.model_validate(options)
    return options.to_config()


def main(argv: list[str] | None = None) -> int:
    return launch.main(argv, prog="search.py", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
