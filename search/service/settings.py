"""The service's settings (one frozen dataclass) and its bearer token."""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from amc.errors import ConfigError
from search.service.names import NamePolicy

log = logging.getLogger(__name__)
TOKEN_FILE = "token"


@dataclass(frozen=True)
class ServiceConfig:
    """One search service.

    Attributes:
        token: The bearer token every route but ``/healthz`` requires (:func:`load_or_create_token`).
        state_dir: The service's folder: ``service.db`` (default database), ``token`` and ``runs/<id>/``.
        db_url: SQLAlchemy URL of the service database, which also holds each search's Optuna study
            (None: ``sqlite:///<state_dir>/service.db``; ``postgresql://...`` for a shared one).
        host, port: Where uvicorn listens (``scripts/serve.py``).
        max_concurrent: Searches running at once; the others wait in submission order.
        poll_interval: Seconds between two looks at the running searches (progress, exits).
        max_evaluations: Largest ``evaluations`` a request may ask for.
        max_body_bytes: Largest request body.
        cancel_timeout: Seconds a cancelled search may take to write its best policy before it is killed.
        shutdown_grace: On shutdown, seconds the running searches get to stop (they become ``interrupted``).
        python: Interpreter of the search processes.
        workdir: Working folder of the search processes (relative ``checkpoint``/``data_dir`` start here).
        ray_address: The job server (dashboard) of a Ray cluster, e.g. ``http://127.0.0.1:8265``: each
            search runs there as a Ray job (:mod:`search.service.ray_jobs`); None: a local process each.
        models_dir: The folder ``hf:`` models must lie in (None: no ``hf:`` model is accepted).
        allow_factory: Glob patterns of the ``package.module:factory`` models and datasets accepted (none:
            a request cannot name code to run).
    """

    token: str
    state_dir: str = "runs/service"
    db_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_concurrent: int = 1
    poll_interval: float = 0.5
    max_evaluations: int = 10_000
    max_body_bytes: int = 64 * 1024
    cancel_timeout: float = 60.0
    shutdown_grace: float = 30.0
    python: str = sys.executable
    workdir: str = "."
    ray_address: str | None = None
    models_dir: str | None = None
    allow_factory: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.token, str) or len(self.token) < 8:
            raise ConfigError("the service token must be a string of at least 8 characters; leave --token-file "
                              "out to have one generated")
        for name, value, low in (("--port", self.port, 0), ("--max-concurrent", self.max_concurrent, 1),
                                 ("--max-evaluations", self.max_evaluations, 1),
                                 ("--max-body-bytes", self.max_body_bytes, 1024)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.port > 65535:
            raise ConfigError(f"--port must be at most 65535, got {self.port!r}")
        for name, value in (("--poll-interval", self.poll_interval), ("cancel_timeout", self.cancel_timeout),
                            ("shutdown_grace", self.shutdown_grace)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.ray_address is not None and (not isinstance(self.ray_address, str)
                                             or not self.ray_address.startswith(("http://", "https://"))
                                             or any(c.isspace() for c in self.ray_address)):
            raise ConfigError(f"--ray-address must be the Ray job server's URL, e.g. http://127.0.0.1:8265 (the "
                              f"dashboard's address 'ray start --head' prints), got {self.ray_address!r}")

        if self.models_dir is not None and not Path(self.models_dir).is_dir():
            raise ConfigError(f"--models-dir {str(self.models_dir)!r} is not a folder: name the folder that holds "
                              "the save_pretrained folders of the hf: models this service may load")
        patterns = (self.allow_factory,) if isinstance(self.allow_factory, str) else self.allow_factory
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern or any(c.isspace() for c in pattern) \
                    or not (":" in pattern or "*" in pattern):
                raise ConfigError(f"--allow-factory {pattern!r} matches no package.module:factory name: give a glob "
                                  "such as 'mypkg.*' or 'mypkg.models:build'")

    @property
    def names(self) -> NamePolicy:
        """What the submitted settings may name beyond the built-ins (:func:`search.service.names.check_names`)."""
        patterns = (self.allow_factory,) if isinstance(self.allow_factory, str) else tuple(self.allow_factory)
        return NamePolicy(models_dir=self.models_dir, allow_factory=patterns)

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{(Path(self.state_dir) / 'service.db').resolve()}"

    @property
    def runs_dir(self) -> Path:
        return Path(self.state_dir).resolve() / "runs"


def is_loopback(host: str) -> bool:
    """``host`` only reaches this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_or_create_token(state_dir: str | os.PathLike, token_file: str | os.PathLike | None = None) -> tuple[str, bool]:
    """The service token: read from ``token_file``, else from ``<state_dir>/token``, generated there at first start.

    Returns:
        The token and whether it was generated now.

    Raises:
        ConfigError: ``token_file`` cannot be read or holds no usable token.
    """
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --token-file {str(token_file)!r} ({exc.strerror}); give a file "
                              "holding the token on one line") from None
        if len(token) < 8 or any(c.isspace() for c in token):
            raise ConfigError(f"--token-file {str(token_file)!r} must hold one token of at least 8 characters "
                              "without spaces")
        return token, False
    path = Path(state_dir) / TOKEN_FILE
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # only this user may read it
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True
