"""The process a service search runs in: ``scripts/search.py``'s run (:func:`search.launch.main`) plus an exit
record.

    python -m search.service.worker --exit-file runs/<id>/service-exit.json --attempt 1 -- --budget 0.3 ...

SIGTERM (what ``ray job stop`` and a system shutdown send) is handled like Ctrl-C: the search stops and
writes its best policy so far. The exit status goes to ``--exit-file`` (with the attempt number), so a
service that restarted while this process ran still learns how it ended.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from search.service.executor import cancel_requested

log = logging.getLogger(__name__)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _preload_report() -> None:
    """Imports the report's plotting library now, so that a cancelled search writes its report and exits
    without paying for the import then (about a second on an idle machine, several under load)."""
    import matplotlib.backends.backend_agg
    import matplotlib.figure  # noqa: F401 (search.report draws on a Figure with the Agg canvas)


def write_exit(path: Path, attempt: int, code: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"attempt": attempt, "exit_code": code}) + "\n")
    os.replace(tmp, path)  # atomic: a reader sees the old record or the new one


def main(argv: list[str] | None = None) -> int:
    """Runs the search of ``argv`` and records its exit status."""
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="search.service.worker")
    parser.add_argument("--exit-file", required=True)
    parser.add_argument("--attempt", type=int, required=True)
    args = parser.parse_args(argv[:split])
    signal.signal(signal.SIGTERM, _interrupt)
    # The service cancels with SIGINT. A process started by one that ignores SIGINT (a test runner's worker,
    # a shell's background job) inherits the ignore, and Python then installs no Ctrl-C handler: the cancel
    # would be lost until the service's cancel_timeout kills the search. Handle it explicitly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # A cancel that came before the handler above was lost as a signal; its record was written first.
        if cancel_requested(Path(args.exit_file).parent, args.attempt):
            raise KeyboardInterrupt
        from search.launch import (
            main as search_main,  # a stop may come while torch loads
        )

        _preload_report()

        code = search_main(argv[split + 1:])
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:  # stopped before the search began, or while its outputs were written
        code = 130
    except BaseException:
        write_exit(Path(args.exit_file), args.attempt, 1)
        raise
    write_exit(Path(args.exit_file), args.attempt, code)
    return code


def exit_now(code: int) -> None:
    """Ends the process without the interpreter's teardown (1-3 s of freeing torch and friends, more under
    load), so that a cancelled search reads ``cancelled`` soon after its best policy is written. Everything
    that matters is on disk by now (history rows are fsynced, the outputs and the exit file written); a Ray
    driver still connected is shut down first."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
