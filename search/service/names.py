"""The names a search's settings give, resolved at submission as the run will resolve them.

A built-in model must be a key of :data:`amc.models.MODELS` (what :func:`amc.models.build_model` builds);
a built-in dataset one of :data:`amc.data.names.DATASETS` (the option's own reader checks that); a
``package.module:factory`` (``model`` or ``dataset``) must import and name a callable in the search
processes' interpreter and working folder. The factory is imported in a short-lived process of that
interpreter, so the user's module never runs inside the service, and nothing is built, trained or loaded.
A name that passes here can still fail in the run (a factory that raises when called); one that fails
here would have failed the run at its start.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

log = logging.getLogger(__name__)
IMPORT_TIMEOUT_S = 60.0  # a factory whose module takes longer to import is let through (the run will tell)
# Runs in the search processes' interpreter: imports the module of ``package.module:factory``, checks the factory.
_IMPORT_CHECK = """\
import importlib, sys
spec = sys.argv[1]
module, _, name = spec.partition(":")
try:
    loaded = importlib.import_module(module)
except BaseException as exc:
    text = str(exc).strip().splitlines()
    sys.stdout.write(f"cannot import module {module!r} of {spec!r} ({type(exc).__name__}: {text[0] if text else ''})\\n")
    sys.exit(3)
if not callable(getattr(loaded, name, None)):
    sys.stdout.write(f"module {module!r} has no callable {name!r} ({spec!r}); name a factory function\\n")
    sys.exit(4)
"""


class SettingsError(Exception):
    """A setting that cannot be used: ``field`` names it, ``reason`` says why (answered as HTTP 422)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def check_names(options: dict[str, Any], *, python: str | None = None, workdir: str = ".") -> None:
    """Resolves the model and dataset names of resolved ``options``.

    Args:
        options: Every option's value (:class:`search.options.SearchOptions`, dumped).
        python: The search processes' interpreter (None: this one).
        workdir: Their working folder (a factory's module is looked up from there, as the run does).

    Raises:
        SettingsError: An unknown built-in model, or a factory that cannot be imported.
    """
    model = options.get("model")
    if isinstance(model, str) and ":" not in model:
        from amc.models import MODELS  # the registry build_model reads

        if model not in MODELS:
            raise SettingsError("model", f"unknown model {model!r}: use one of {', '.join(sorted(MODELS))} or "
                                         "package.module:factory for your own")
    for key in ("model", "dataset"):
        value = options.get(key)
        if isinstance(value, str) and ":" in value:
            _check_factory(key, value, python=python or sys.executable, workdir=workdir)


def _check_factory(key: str, spec: str, *, python: str, workdir: str) -> None:
    try:
        done = subprocess.run([python, "-c", _IMPORT_CHECK, spec], cwd=workdir, capture_output=True, text=True,
                              timeout=IMPORT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        log.warning("importing %s %r took more than %.0f s: not checked at submission", key, spec, IMPORT_TIMEOUT_S)
        return
    except OSError as exc:
        raise SettingsError(key, f"cannot check {spec!r}: the search interpreter {python!r} does not start "
                                 f"({exc.strerror}); fix the service's --python") from None
    if done.returncode == 0:
        return
    lines = [line for line in (done.stdout or done.stderr).splitlines() if line.strip()]
    reason = lines[-1] if lines else f"checking {spec!r} failed (exit {done.returncode})"
    if done.returncode != 4:  # not importable where the searches run
        reason += f"; the searches run {python} in {workdir}: put the module on its PYTHONPATH there"
    raise SettingsError(key, reason)
