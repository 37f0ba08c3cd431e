"""The service's parts without a server: processes by pid and start time, history tailing, token, checks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amc.errors import ConfigError
from search.cli.search import build_parser
from search.history import COLUMNS, HistoryWriter, Record
from search.service.db import close_database, open_database
from search.service.executor import EXIT_FILE, Exit, Launch, LocalProcessExecutor, process_start_time
from search.service.manager import SearchManager
from search.service.names import NamePolicy
from search.service.progress import HistoryTail
from search.service.scheduler import Scheduler
from search.service.settings import ServiceConfig, is_loopback, load_or_create_token
from search.service.validation import SettingsError, validate_settings
from search.service.worker import main as worker_main
from tests.search.helpers import REPO, subprocess_env
from tests.search.service.helpers import TOKEN

ANY_FACTORY = NamePolicy(allow_factory=("*",))  # factories are refused unless the operator allows them


def _record(index: int, accuracy: float, cost: float = 1.0) -> Record:
    return Record(index=index, strategy="random", step=index, accuracy=accuracy, loss=0.5, cost=cost, cost_ratio=0.3,
                  reward=accuracy, cached=False, seconds=0.1, wall_time=0.1 * index, keep=(0.5, 1.0))


def test_a_pid_counts_only_with_its_start_time(tmp_path: Path) -> None:
    """A pid reused by another process is not the search: never signalled, and its exit is the exit file's."""
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        started = process_start_time(sleeper.pid)
        assert started is not None
        executor = LocalProcessExecutor(sys.executable)  # not its parent: as after a service restart
        reused = {"pid": sleeper.pid, "start_time": started - 1, "attempt": 2, "run_dir": str(tmp_path)}
        (tmp_path / EXIT_FILE).write_text('{"attempt": 2, "exit_code": 3}')
        assert executor.poll(reused) == Exit(3)
        (tmp_path / EXIT_FILE).write_text('{"attempt": 1, "exit_code": 0}')  # an earlier attempt's record
        assert executor.poll(reused) == Exit(None)
        executor.kill(reused)
        executor.cancel(reused)
        time.sleep(0.2)
        assert sleeper.poll() is None  # the other process was left alone
        same = {**reused, "start_time": started}
        assert executor.poll(same) is None
        executor.kill(same)
        assert sleeper.wait(5) == -9
    finally:
        sleeper.kill()


def test_history_tail_reads_complete_rows_once_and_keeps_the_best(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    tail = HistoryTail(path)
    assert tail.read() == []  # no file yet
    writer = HistoryWriter(path)
    writer.append(_record(0, 0.5))
    writer.append(_record(1, 0.7, cost=2.0))
    writer.close()
    with path.open("a") as f:
        f.write("2,random,2,0.7,0.5")  # a row still being written
    assert [r.index for r in tail.read()] == [0, 1]
    assert tail.read() == []
    with path.open("a") as f:
        f.write(",1.0,0.3,0.7,0,0.1,0.2,\"[0.5, 1.0]\"\n")
    assert [r.index for r in tail.read()] == [2]
    assert (tail.count, tail.best.index) == (3, 2)  # same reward as row 1, cheaper
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)


def test_history_tail_gives_each_row_the_best_up_to_it(tmp_path: Path) -> None:
    """Rows read at once each carry the best so far at that row, never a later row's (issue 32, point 7)."""
    path = tmp_path / "history.csv"
    tail = HistoryTail(path)
    writer = HistoryWriter(path)
    for index, accuracy in enumerate((0.5, 0.4, 0.7, 0.6, 0.9)):
        writer.append(_record(index, accuracy))
    writer.close()
    rows = tail.read_with_best()  # the five rows in one read, as a service polling a fast search finds them
    assert [(r.index, b.index) for r, b in rows] == [(0, 0), (1, 0), (2, 2), (3, 2), (4, 4)]
    assert all(best.index <= record.index for record, best in rows)
    assert [b.accuracy for _, b in rows] == [0.5, 0.5, 0.7, 0.7, 0.9]


def test_events_of_rows_read_at_once_carry_the_best_up_to_each(tmp_path: Path) -> None:
    """The scheduler's evaluation events: best_index <= index on each, however many rows one poll finds."""
    config = ServiceConfig(token=TOKEN, state_dir=str(tmp_path))
    sessions = open_database(config.database_url)
    try:
        manager = SearchManager(config, sessions, LocalProcessExecutor(sys.executable))
        row, _ = manager.submit(validate_settings({"strategy": "random", "evaluations": 5}), idempotency_key=None,
                                request_hash="x")
        Path(row.run_dir).mkdir(parents=True)
        writer = HistoryWriter(Path(row.run_dir) / "history.csv")
        accuracies = (0.5, 0.4, 0.7, 0.6, 0.9)
        for index, accuracy in enumerate(accuracies):
            writer.append(_record(index, accuracy))
        writer.close()
        with manager.changing() as session:
            Scheduler(manager)._record_progress(session, session.get(type(row), row.id))
        events = [e.data for e in manager.events(row.id) if e.kind == "evaluation"]
        assert [(e["index"], e["best_index"]) for e in events] == [(0, 0), (1, 0), (2, 2), (3, 2), (4, 4)]
        assert [e["best_accuracy"] for e in events] == [max(accuracies[: i + 1]) for i in range(5)]
    finally:
        close_database(sessions)


def test_token_is_generated_once_and_token_files_are_checked(tmp_path: Path) -> None:
    token, generated = load_or_create_token(tmp_path)
    assert generated and len(token) >= 32
    assert (tmp_path / "token").stat().st_mode & 0o777 == 0o600
    assert load_or_create_token(tmp_path) == (token, False)
    given = tmp_path / "given"
    given.write_text("a-token-of-mine\n")
    assert load_or_create_token(tmp_path, given) == ("a-token-of-mine", False)
    given.write_text("short\n")
    with pytest.raises(ConfigError, match="at least 8"):
        load_or_create_token(tmp_path, given)
    with pytest.raises(ConfigError, match="nosuchfile"):
        load_or_create_token(tmp_path, tmp_path / "nosuchfile")


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True),
                                                ("localhost", True), ("0.0.0.0", False), ("::", False),
                                                ("10.0.0.1", False), ("example.org", False)])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_server_refuses_to_listen_beyond_loopback_without_a_token_file(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "serve.py"), "--host", "0.0.0.0",
                           "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("serve.py: error: --host '0.0.0.0' reaches beyond this machine: pass --token-file")
    assert not (tmp_path / "token").exists()


def test_settings_are_refused_with_the_command_lines_reason(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--budget", "1.5"])
    cli = capsys.readouterr().err
    with pytest.raises(SettingsError) as caught:
        validate_settings({"budget": 1.5})
    assert caught.value.field == "budget"
    assert caught.value.reason in cli
    settings = validate_settings({"budget": 0.4, "strategy": "uniform", "evaluations": 50, "min-keep": 0.3})
    assert settings.given == {"budget": 0.4, "strategy": "uniform", "evaluations": 50, "min_keep": 0.3}
    assert settings.options["criterion"] == "l1" and "out" not in settings.options
    assert settings.evaluations == 1  # uniform evaluates one policy


@pytest.mark.parametrize(("values", "field", "reason"), [
    ({"model": "resnet2000"}, "model", "unknown model 'resnet2000': use one of cnn, convnext, mobilenetv2"),
    ({"model": "nosuchpkg.models:make"}, "model", "cannot import module 'nosuchpkg.models' of 'nosuchpkg.models:make' "
                                                  "(ModuleNotFoundError: No module named 'nosuchpkg')"),
    ({"model": "amc.models:nosuch"}, "model", "module 'amc.models' has no callable 'nosuch'"),
    ({"dataset": "nosuchpkg.data:splits"}, "dataset", "cannot import module 'nosuchpkg.data'"),
    ({"dataset": "cifar100"}, "dataset", "must be one of digits"),
])
def test_names_are_resolved_at_submission(values: dict, field: str, reason: str) -> None:
    """An unknown model, dataset or factory is refused at once (422), not accepted and then failed (issue 32)."""
    with pytest.raises(SettingsError) as caught:
        validate_settings(values, python=sys.executable, workdir=str(REPO), names=ANY_FACTORY)
    assert caught.value.field == field
    assert reason in caught.value.reason
    assert "\n" not in caught.value.reason


def test_names_that_resolve_are_accepted() -> None:
    settings = validate_settings({"model": "resnet20", "dataset": "amc.data.datasets:load_digits"}, workdir=str(REPO),
                                 names=ANY_FACTORY)
    assert settings.options["model"] == "resnet20"
    assert validate_settings({"model": "amc.models:cnn"}, workdir=str(REPO),
                             names=ANY_FACTORY).given == {"model": "amc.models:cnn"}


def test_service_bounds_agree_with_the_options() -> None:
    """The bound a 422 names is one the option takes: evaluations >= 1, so [1, N], not [0, N] (issue 32)."""
    with pytest.raises(SettingsError) as caught:
        validate_settings({"evaluations": 20_000})
    assert caught.value.reason == "must be in [1, 10000] on this service, got 20000"
    with pytest.raises(SettingsError) as caught:
        validate_settings({"warmup": -1})
    assert caught.value.reason == "must be in [0, 10000] on this service, got -1"
    assert validate_settings({"evaluations": 1, "warmup": 0}).options["evaluations"] == 1


def test_worker_records_the_search_exit_status(tmp_path: Path) -> None:
    exit_file = tmp_path / EXIT_FILE
    assert worker_main(["--exit-file", str(exit_file), "--attempt", "3", "--", "--budget", "0"]) == 2
    assert exit_file.read_text().strip() == '{"attempt": 3, "exit_code": 2}'


def _wait_for_exit(executor: LocalProcessExecutor, handle: dict, what: str, timeout: float = 120) -> Exit:
    deadline = time.monotonic() + timeout
    while (ended := executor.poll(handle)) is None:
        assert time.monotonic() < deadline, f"{what} still runs after {timeout:.0f} s"
        time.sleep(0.1)
    return ended


def test_a_cancel_at_once_after_start_is_not_lost(tmp_path: Path, amc_cache: Path) -> None:
    """Under a parent that ignores SIGINT (a test runner's worker, a background shell), the worker inherits
    the ignore until it installs its handler: a SIGINT in that window was lost, and the search ran on. The
    cancel's record is read once the worker can handle it. Without it this search would run its 5000 rows."""
    run_dir = tmp_path / "run"
    executor = LocalProcessExecutor(sys.executable, workdir=REPO, env=subprocess_env(amc_cache))
    argv = ("--strategy", "random", "--budget", "0.5", "--evaluations", "5000", "--score", "bn", "--no-export",
            "--out", str(run_dir))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        handle = executor.start(Launch("s1", 1, argv, run_dir))
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        executor.cancel(handle)  # at once: the interpreter is still starting
        ended = _wait_for_exit(executor, handle, "the cancelled worker")
        assert ended == Exit(130)
        assert json.loads((run_dir / EXIT_FILE).read_text()) == {"attempt": 1, "exit_code": 130}
        history = run_dir / "history.csv"
        assert not history.exists() or len(history.read_text().splitlines()) <= 1  # stopped before its search
    finally:
        executor.kill(handle)  # a failed check leaves no search running (nothing to kill when it passed)

    # A resumed attempt is not stopped by the earlier attempt's cancel.
    second = executor.start(Launch("s1", 2, (*argv[:5], "3", *argv[6:]), run_dir))
    try:
        ended = _wait_for_exit(executor, second, "the second attempt")
    finally:
        executor.kill(second)
    assert ended == Exit(0), executor.logs(second)
