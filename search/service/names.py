"""The names a search's settings give, resolved at submission as the run will resolve them, and only those
the operator lets a token holder run.

A model is accepted when it is

- a built-in model, a key of :data:`amc.models.MODELS` (what :func:`amc.models.build_model` builds) or of
  :data:`amc.models.lm.LANGUAGE_MODELS` (``tiny-lm``: a language model's sparsity search);
- ``timm:NAME``, a model timm has in the search processes' interpreter (``pretrained=False`` always);
- ``hf:PATH``, a ``save_pretrained`` folder (with its ``config.json``) under the operator's models folder
  (``scripts/serve.py --models-dir``; relative paths start at the searches' working folder, as the run's do,
  and links are followed before the check); without a models folder no ``hf:`` model is accepted;
- ``package.module:factory`` only where the operator allows it (``--allow-factory 'mypkg.*'``: glob patterns
  matched against the whole name); a factory runs arbitrary code, so by default none is accepted.

A dataset is a built-in one (the option's own reader checks that), ``imagefolder``, or a factory under the same
rule. An allowed factory must import and name a callable in the search processes' interpreter and working
folder; that import, and timm's model lookup, run in a short-lived process of that interpreter, so neither the
user's module nor timm runs inside the service, and nothing is built, trained or loaded. A name that passes
here can still fail in the run (a factory that raises when called); one that fails here would have failed the
run at its start.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
IMPORT_TIMEOUT_S = 60.0  # a factory whose module takes longer to import is let through (the run will tell)
# Run in the search processes' interpreter. Exit 4: the name is wrong; any other failure: it cannot be looked
# up there (the environment).
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
_TIMM_CHECK = """\
import importlib.util, sys
name = sys.argv[1]
if importlib.util.find_spec("timm") is None:
    sys.stdout.write(f"--model timm:{name} needs timm: pip install -e '.[models]'\\n")
    sys.exit(3)
import timm
if not timm.is_model(name):
    sys.stdout.write(f"timm has no model {name!r}: list them with timm.list_models('*vit*')\\n")
    sys.exit(4)
"""
SOURCES = ("timm", "hf")  # the model sources of amc.models.sources this service checks itself
_WHAT_ELSE = {"model": "a built-in model, timm:NAME or hf:PATH", "dataset": "a built-in dataset or imagefolder"}


class SettingsError(Exception):
    """A setting that cannot be used: ``field`` names it, ``reason`` says why (answered as HTTP 422)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class NamePolicy:
    """Which names beyond the built-ins this service accepts (its operator's choice).

    Attributes:
        models_dir: ``hf:`` paths must lie under this folder (None: no ``hf:`` model is accepted).
        allow_factory: Glob patterns (``fnmatch``) of the ``package.module:factory`` names accepted for
            ``model`` and ``dataset``, e.g. ``("mypkg.*",)``; empty: none.
    """

    models_dir: str | None = None
    allow_factory: tuple[str, ...] = ()

    def allows_factory(self, spec: str) -> bool:
        return any(fnmatch.fnmatchcase(spec, pattern) for pattern in self.allow_factory)


def check_names(options: dict[str, Any], *, python: str | None = None, workdir: str = ".",
                names: NamePolicy = NamePolicy()) -> None:
    """Resolves the model and dataset names of resolved ``options``.

    Args:
        options: Every option's value (:class:`search.options.SearchOptions`, dumped).
        python: The search processes' interpreter (None: this one).
        workdir: Their working folder (a factory's module is looked up from there, as the run does; relative
            ``hf:`` paths start there).
        names: What the operator accepts beyond the built-ins.

    Raises:
        SettingsError: An unknown built-in model, a name the operator does not accept, a timm model or a
            factory that cannot be found, an ``hf:`` folder outside the models folder or without a config.
    """
    python = python or sys.executable
    model = options.get("model")
    if isinstance(model, str):
        prefix, colon, ref = model.partition(":")
        if not colon:
            # the registries build_model and build_lm (a language model's sparsity search) read
            from amc.models import MODELS
            from amc.models.lm import LANGUAGE_MODELS

            if model not in MODELS and model not in LANGUAGE_MODELS:
                raise SettingsError("model", f"unknown model {model!r}: use one of "
                                             f"{', '.join(sorted([*MODELS, *LANGUAGE_MODELS]))}, "
                                             "timm:NAME, hf:PATH or package.module:factory for your own")
        elif prefix == "timm":
            _check_in_child("model", _TIMM_CHECK, ref, python=python, workdir=workdir,
                            where="the searches run {python} in {workdir}: install timm there")
        elif prefix == "hf":
            _check_hf(ref, names, workdir)
    for key in ("model", "dataset"):
        value = options.get(key)
        if isinstance(value, str) and ":" in value and not (key == "model" and value.partition(":")[0] in SOURCES):
            if not names.allows_factory(value):
                raise SettingsError(key, f"{value!r}: this service runs no package.module:factory unless its "
                                         "operator allows it (scripts/serve.py --allow-factory 'PATTERN'); use "
                                         f"{_WHAT_ELSE[key]}")
            _check_in_child(key, _IMPORT_CHECK, value, python=python, workdir=workdir,
                            where="the searches run {python} in {workdir}: put the module on its PYTHONPATH there")


def _check_hf(ref: str, names: NamePolicy, workdir: str) -> None:
    if names.models_dir is None:
        raise SettingsError("model", f"hf:{ref}: this service loads no hf: model unless its operator names a "
                                     "models folder (scripts/serve.py --models-dir DIR)")
    path = Path(ref).expanduser()
    real = os.path.realpath(path if path.is_absolute() else Path(workdir) / path)
    root = os.path.realpath(names.models_dir)
    if not ref or os.path.commonpath([real, root]) != root:
        raise SettingsError("model", f"hf:{ref} is not under this service's models folder {root}: put the "
                                     "save_pretrained folder there and name it by its path")
    if not os.path.isfile(os.path.join(real, "config.json")):
        raise SettingsError("model", f"hf:{ref} has no config.json: name a folder model.save_pretrained(PATH) wrote "
                                     f"under {root}")


def _check_in_child(key: str, script: str, arg: str, *, python: str, workdir: str, where: str) -> None:
    try:
        done = subprocess.run([python, "-c", script, arg], cwd=workdir, capture_output=True, text=True,
                              timeout=IMPORT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        log.warning("looking up %s %r took more than %.0f s: not checked at submission", key, arg, IMPORT_TIMEOUT_S)
        return
    except OSError as exc:
        raise SettingsError(key, f"cannot check {arg!r}: the search interpreter {python!r} does not start "
                                 f"({exc.strerror}); fix the service's --python") from None
    if done.returncode == 0:
        return
    lines = [line for line in (done.stdout or done.stderr).splitlines() if line.strip()]
    reason = lines[-1] if lines else f"checking {arg!r} failed (exit {done.returncode})"
    if done.returncode != 4:  # not found where the searches run
        reason += "; " + where.format(python=python, workdir=workdir)
    raise SettingsError(key, reason)
