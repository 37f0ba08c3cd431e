"""The command lines: argument parsing and one call each (``scripts/*.py`` and the ``amc-*`` commands).

Each module's ``main(argv=None) -> int`` is what ``python scripts/<name>.py`` runs and what the console
entry point of ``pyproject.toml`` (``amc-search``, ``amc-apply``, ``amc-bench``, ``amc-lottery``,
``amc-sensitivity``) calls.
"""
