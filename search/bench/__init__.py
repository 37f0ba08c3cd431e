"""The benchmarks behind ``scripts/bench.py`` and ``scripts/lottery.py``: one module per benchmark.

Each module runs its benchmark and has a ``*_report`` function that prints the result to a console and
writes its section of ``BENCHMARKS.md`` (through :mod:`search.bench.markdown`). The product
(:mod:`search.runner` and the strategies) never imports this package.
"""

# The headline benchmark's rows (search.bench.headline.ROWS), here so that bench.py's parser lists them
# without importing torch.
HEADLINE_ROWS = ("uniform", "tp-global", "default", "random", "sensitivity", "optuna-tpe", "ddpg", "oracle")
