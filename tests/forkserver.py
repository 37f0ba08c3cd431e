"""Script processes for the tests, forked from a server that has already imported the project.

A test that runs ``python scripts/search.py ...`` pays ~4.5 s of imports (torch, torch._dynamo, which
``FlopCounterMode`` and ``torch.export`` load, scikit-learn, matplotlib, the project) before the script
does anything; the suite starts ~50 such processes. :func:`run` and :class:`Process` are drop-in
replacements of ``subprocess.run`` and ``subprocess.Popen`` for ``[sys.executable, "<script>.py", *args]``:
the process is still a new process of its own (its own pid, signals, exit status, file descriptors,
working directory and environment), but it is forked from a server of this test worker that imported those
modules once and ran nothing else. The script then runs as ``__main__``, exactly as ``python script.py``.

The server is single-threaded and never runs torch code, so forking it is safe. It starts with one
intra-op thread; a command whose environment asks for another thread count (or any command that is not a
Python script) runs through ``subprocess`` instead, as does everything when ``AMC_TEST_FORKSERVER=0``.
The tests that need a process that imported nothing (``test_export``: a ``.pt2`` loads without the
project) use ``subprocess`` directly.
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What a search, apply_policy.py, sensitivity.py, lottery.py or bench.py imports before its first line of work.
PRELOAD = ("torch", "torch._dynamo", "torch.export", "sklearn.model_selection", "sklearn.datasets", "numpy",
           "matplotlib.figure", "matplotlib.backends.backend_agg", "optuna", "torch_pruning", "gymnasium",
           "stable_baselines3", "rich.progress", "rich.logging", "amc.context", "amc.data.datasets", "amc.pruning.export",
           "amc.evaluation.compare", "amc.cost.latency", "amc.data.factory", "amc.data.imagefolder", "search.runner", "search.outputs", "search.report",
           "search.strategies.optuna_search", "search.strategies.rl", "search.cli.search", "search.cli.apply", "search.cli.sensitivity",
           "search.cli.lottery", "search.cli.bench", "search.cli.serve", "search.service.worker")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


# ----------------------------------------------------------------------------------------------- server

def _send(conn: socket.socket, message: dict) -> None:
    data = json.dumps(message).encode()
    conn.sendall(struct.pack("!I", len(data)) + data)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


def _serve(path: str) -> dict:
    """Accepts requests until stdin closes; returns (in the forked child only) the request it is to run."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ)  # the test worker's end: EOF means it is gone
    children: dict[int, socket.socket] = {}
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        for key, _ in selector.select(timeout=0.02):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                head, fds, _, _ = socket.recv_fds(conn, 4, 3)
                request = json.loads(_recv_exact(conn, struct.unpack("!I", head)[0]))
                pid = os.fork()
                if pid == 0:  # the child: drop the server's sockets, take the caller's descriptors
                    selector.close()
                    listener.close()
                    for other in children.values():
                        other.close()
                    conn.close()
                    for target, fd in enumerate(fds):
                        os.dup2(fd, target)
                        os.close(fd)
                    return request
                for fd in fds:
                    os.close(fd)
                children[pid] = conn
                try:
                    _send(conn, {"pid": pid})
                except OSError:
                    pass  # the caller is gone; the child is reaped below all the same
            elif not os.read(sys.stdin.fileno(), 1024):
                os.unlink(path)
                raise SystemExit(0)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                try:
                    _send(conn, {"returncode": os.waitstatus_to_exitcode(status)})
                except OSError:
                    pass  # the caller is gone
                conn.close()


def _become(request: dict, base_path: list[str]) -> str:
    """Turns the forked child into ``python <script> <args>`` (or ``python -m <module> <args>``) run in ``cwd``
    with ``env``; returns the script ("-m" for a module)."""
    if request["session"]:
        os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    script = request["argv"][1]
    sys.argv = request["argv"][1:]
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    # ``python script.py``: the script's folder first; ``python -m module``: the working folder.
    first = os.getcwd() if script == "-m" else os.path.dirname(os.path.abspath(script))
    sys.path[:] = [first, *extra, *base_path]
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a new interpreter installs it
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import torch

    torch.set_num_threads(1)
    return script


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    _own = {p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    _base = [p for p in sys.path[1:] if p not in _own]
    sys.path.insert(0, str(REPO))
    _request = _serve(sys.argv[2])
    del sys.path[0]
    import runpy

    if _become(_request, _base) == "-m":
        sys.argv = sys.argv[1:]  # [module, *args]; run_module sets argv[0] to the module's file
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(sys.argv[0], run_name="__main__")
    sys.exit(0)


# ----------------------------------------------------------------------------------------------- client

class _Server:
    """The fork server process; ``wait=False`` returns at once (the socket exists once it has imported)."""

    def __init__(self, *, wait: bool = True) -> None:
        self.folder = tempfile.mkdtemp(prefix="amc-forkserver-", dir="/tmp" if os.path.isdir("/tmp") else None)
        self.path = os.path.join(self.folder, "socket")
        env = {**os.environ, **dict.fromkeys(THREAD_VARS, "1")}
        env.pop(SHARED_ENV, None)
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", self.path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, env=env)
        atexit.register(self.close)
        if wait:
            line = self.proc.stdout.readline()
            if line != b"ready\n":
                self.proc.kill()
                raise RuntimeError(f"the test fork server did not start (exit {self.proc.wait()})")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # the server exits on EOF
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.stdout.close()
        try:
            os.rmdir(self.folder)
        except OSError:
            pass


class _Shared:
    """The session's server, started by the xdist controller (``SHARED_ENV`` names its socket): both test
    workers fork from it, so its imports are paid once."""

    def __init__(self, path: str, timeout: float = 120) -> None:
        self.path = path
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):  # bound once the server has imported everything
            if time.monotonic() > deadline:
                raise RuntimeError(f"the session's test fork server did not start: no socket {path} after {timeout} s")
            time.sleep(0.05)

    def close(self) -> None:
        pass  # the controller's


def start_shared() -> _Server:
    """A server for the whole session (the xdist controller calls this; workers find it through the env)."""
    server = _Server(wait=False)
    os.environ[SHARED_ENV] = server.path
    return server


def _get_server():
    global _server
    with _server_lock:
        if _server is None:
            shared = os.environ.get(SHARED_ENV)
            _server = _Shared(shared) if shared else _Server()
        return _server


SHARED_ENV = "AMC_TEST_FORKSERVER_SOCKET"
_server: _Server | _Shared | None = None
_server_lock = threading.Lock()


def _forkable(argv: list[str], env: dict[str, str] | None) -> bool:
    if os.environ.get("AMC_TEST_FORKSERVER") == "0":
        return False
    env = os.environ if env is None else env
    if any(env.get(var) not in (None, "1") for var in THREAD_VARS) or env.get("OMP_NUM_THREADS") != "1":
        return False
    if len(argv) < 2 or argv[0] != sys.executable:
        return False
    return argv[1].endswith(".py") or (argv[1] == "-m" and len(argv) >= 3)


def _stream(spec, mode: str):
    """(descriptor for the child, our end or None, whether we opened the child's descriptor)."""
    if spec is None:
        return {"r": 0, "w": 1}[mode], None, False
    if spec == subprocess.DEVNULL:
        return os.open(os.devnull, os.O_RDWR), None, True
    if spec == subprocess.PIPE:
        read, write = os.pipe()
        return (write, read, True) if mode == "w" else (read, write, True)
    return (spec if isinstance(spec, int) else spec.fileno()), None, False


class Process:
    """``subprocess.Popen(argv, cwd=, env=, stdout=, stderr=, text=, start_new_session=)`` for a Python script or
    module, forked from the worker's fork server (``subprocess.Popen`` itself when it cannot be); stdin is
    ``/dev/null``. ``stderr=subprocess.STDOUT`` works."""

    def __init__(self, argv, *, cwd=None, env=None, stdout=None, stderr=None, text: bool = False,
                 start_new_session: bool = False) -> None:
        self.args = [str(a) for a in argv]
        if not _forkable(self.args, env):
            self._popen = subprocess.Popen(self.args, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=text,
                                           stdin=subprocess.DEVNULL, start_new_session=start_new_session)
            self.pid, self.stdout, self.stderr = self._popen.pid, self._popen.stdout, self._popen.stderr
            return
        self._popen = None
        server = _get_server()
        stdin_fd, _, stdin_opened = _stream(subprocess.DEVNULL, "r")
        out_fd, out_ours, out_opened = _stream(stdout, "w")
        if stderr == subprocess.STDOUT:
            err_fd, err_ours, err_opened = out_fd, None, False
        else:
            err_fd, err_ours, err_opened = _stream(stderr, "w")
        request = json.dumps({"argv": self.args, "cwd": str(cwd or os.getcwd()),
                              "env": dict(os.environ if env is None else env),
                              "session": start_new_session}).encode()
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._conn.connect(server.path)
            socket.send_fds(self._conn, [struct.pack("!I", len(request))], [stdin_fd, out_fd, err_fd])
            self._conn.sendall(request)
            self.pid = self._read()["pid"]
        finally:
            for fd, opened in ((stdin_fd, stdin_opened), (out_fd, out_opened), (err_fd, err_opened)):
                if opened:
                    os.close(fd)
        self.returncode: int | None = None

        def wrap(fd):
            if fd is None:
                return None
            return open(fd, "r" if text else "rb", closefd=True)

        self.stdout, self.stderr = wrap(out_ours), wrap(err_ours)

    def _read(self, timeout: float | None = None) -> dict | None:
        self._conn.settimeout(timeout)
        try:
            head = _recv_exact(self._conn, 4)
        except TimeoutError:
            return None
        finally:
            self._conn.settimeout(None)
        return json.loads(_recv_exact(self._conn, struct.unpack("!I", head)[0]))

    @property
    def _code(self) -> int | None:
        return self._popen.returncode if self._popen is not None else self.returncode

    def poll(self) -> int | None:
        if self._popen is not None:
            return self._popen.poll()
        if self.returncode is None:
            message = self._read(timeout=0.0001)
            if message is not None:
                self.returncode = message["returncode"]
                self._conn.close()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self._popen is not None:
            return self._popen.wait(timeout)
        if self.returncode is None:
            message = self._read(timeout)
            if message is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = message["returncode"]
            self._conn.close()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self._popen is not None:
            self._popen.send_signal(sig)
        elif self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def communicate(self, timeout: float | None = None) -> tuple:
        """Reads stdout and stderr to their end and waits for the exit, like ``Popen.communicate``."""
        if self._popen is not None:
            return self._popen.communicate(timeout=timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        chunks = {f: [] for f in (self.stdout, self.stderr) if f is not None}
        with selectors.DefaultSelector() as selector:
            for f in chunks:
                os.set_blocking(f.fileno(), False)
                selector.register(f.fileno(), selectors.EVENT_READ, f)
            while selector.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                for key, _ in selector.select(left):
                    data = os.read(key.fd, 1 << 16)
                    if data:
                        chunks[key.data].append(data)
                    else:
                        selector.unregister(key.fd)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        out = []
        for f in (self.stdout, self.stderr):
            if f is None:
                out.append(None)
                continue
            data = b"".join(chunks[f])
            out.append(data.decode() if "b" not in f.mode else data)
            f.close()
        return tuple(out)


def run(argv, *, cwd=None, env=None, capture_output: bool = False, text: bool = False, timeout: float | None = None,
        stdout=None, stderr=None) -> subprocess.CompletedProcess:
    """``subprocess.run`` for a Python script, forked from the worker's fork server (see :class:`Process`)."""
    if capture_output:
        stdout = stderr = subprocess.PIPE
    proc = Process(argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=text)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc._code, out, err)


def spawn_worker(argv, *, cwd, env, stdout) -> Process:
    """The service's :class:`~search.service.executor.LocalProcessExecutor` ``spawn``: its worker process
    (a session of its own, stderr into stdout), forked from the fork server."""
    return Process(argv, cwd=cwd, env=env, stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True)
