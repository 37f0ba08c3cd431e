"""A throwaway PostgreSQL server for the tests: ``initdb`` into a temp folder, ``postgres`` on a free loopback port.

The server is a child process of the test session (never the machine's own cluster) and is stopped
through it. PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` user
(``nobody`` without one), its folder handed to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

SETTINGS = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",  # a test server
            "-c", "max_connections=200")


class PostgresUnavailable(Exception):
    """No PostgreSQL here (not installed, or its server does not start): the message says which."""


def postgres_bin() -> Path:
    """The folder of ``initdb`` and ``postgres``: on the PATH, else Debian's newest ``/usr/lib/postgresql/N/bin``."""
    found = shutil.which("initdb")
    if found:
        folder = Path(found).resolve().parent
        if (folder / "postgres").exists():
            return folder
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                     if Path(p).parent.name.isdigit() else 0)
    for folder in reversed(folders):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "postgres").exists():
            return Path(folder)
    raise PostgresUnavailable("PostgreSQL is not installed (no initdb on the PATH nor in /usr/lib/postgresql/*/bin); "
                              "apt-get install postgresql")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One server; :meth:`start` it, :meth:`create_database` per test module, :meth:`stop` at the end.

    Args:
        root: An empty folder the server's user may write (its data, socket and log go there).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = postgres_bin()
        self.user = None if os.geteuid() != 0 else self._unprivileged_user()
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log = root / "postgres.log"

    @staticmethod
    def _unprivileged_user() -> pwd.struct_passwd:
        for name in ("postgres", "nobody"):
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        raise PostgresUnavailable("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")

    def _run_as(self) -> dict:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def start(self, *, timeout: float = 60.0) -> PostgresServer:
        """initdb, then the server on a free port; waits until it takes connections.

        Raises:
            PostgresUnavailable: initdb failed or the server did not come up (the log's end is in the message).
        """
        try:
            import psycopg  # noqa: F401  (the driver, from the service extra)
        except ImportError:
            raise PostgresUnavailable("the psycopg driver is not installed: pip install -c constraints.txt "
                                      "-e '.[service]'") from None
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        done = subprocess.run([str(self.bin / "initdb"), "-D", str(self.root / "data"), "-U", "amc", "--auth=trust",
                               "-E", "UTF8", "--locale=C", "--no-sync"], capture_output=True, text=True, env=env,
                              cwd=self.root, timeout=timeout, check=False, **self._run_as())
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        for _ in range(3):  # a free port may be taken between choosing it and binding it
            self.port = _free_port()
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(
                    [str(self.bin / "postgres"), "-D", str(self.root / "data"), "-p", str(self.port),
                     "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}", *SETTINGS],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.root,
                    **self._run_as())
            if self._wait_ready(timeout):
                return self
        raise PostgresUnavailable(f"the PostgreSQL server did not start; its log ends: {self._log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        import psycopg

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        self.stop()
        return False

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace").strip()[-800:]
        except OSError:
            return "(no log)"

    def url(self, database: str) -> str:
        """SQLAlchemy URL of ``database`` (``postgresql://`` is psycopg 3 in SQLAlchemy 2.1)."""
        return f"postgresql://amc@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self, *, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: clients are disconnected), SIGKILL if it takes longer than ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def start_postgres() -> tuple[PostgresServer, Path]:
    """A started server in a new folder of the system temp dir (pytest's own is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="amc-pg-"))
    try:
        return PostgresServer(root).start(), root
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
