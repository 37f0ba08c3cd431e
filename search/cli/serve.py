"""Serve the search service over HTTP (FastAPI on uvicorn).

    python scripts/serve.py                                   # http://127.0.0.1:8000, state in runs/service
    python scripts/serve.py --max-concurrent 2 --state-dir /srv/amc
    python scripts/serve.py --host 0.0.0.0 --token-file /etc/amc/token   # beyond loopback: a token file is required
    python scripts/serve.py --db postgresql://amc@dbhost/amc             # a shared database
    python scripts/serve.py --ray-address http://127.0.0.1:8265           # each search a Ray job on that cluster
    python scripts/serve.py --models-dir /srv/models --allow-factory 'mypkg.*'  # hf: models there, mypkg's factories

Every route but /healthz needs 'Authorization: Bearer <token>'. Without --token-file a token is
generated at first start into <state-dir>/token (printed once). Stopping the server (Ctrl-C) stops the
running searches after they write their best policy so far; they become 'interrupted' and continue
with POST /v1/searches/<id>/resume. With --ray-address the searches are Ray jobs: they go on while the
service is stopped, and the restarted service follows them again. A request may name built-in models and
timm:NAME; hf:PATH only under --models-dir, and package.module:factory (models, datasets) only where
--allow-factory allows it: a factory runs whatever code its module holds.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from search.cli.common import OneLineParser, int_at_least, number_in


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="serve.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int_at_least(0), default=8000, help="port (8000)")
    p.add_argument("--state-dir", dest="state_dir", default="runs/service",
                   help="the service's folder: database, token, runs/<id>/ (runs/service)")
    p.add_argument("--db", help="SQLAlchemy URL of the service database (sqlite:///<state-dir>/service.db)")
    p.add_argument("--token-file", dest="token_file", help="file holding the bearer token (default: generated)")
    p.add_argument("--max-concurrent", dest="max_concurrent", type=int_at_least(1), default=1,
                   help="searches running at once; the others wait in order (1)")
    p.add_argument("--max-evaluations", dest="max_evaluations", type=int_at_least(1), default=10_000,
                   help="largest evaluations a request may ask for (10000)")
    p.add_argument("--poll-interval", dest="poll_interval", type=number_in(0, 60), default=0.5,
                   help="seconds between two looks at the running searches (0.5)")
    p.add_argument("--ray-address", dest="ray_address",
                   help="run each search as a job on the Ray cluster whose job server (dashboard) is at this URL, "
                        "e.g. http://127.0.0.1:8265; the run folders must be on storage the head node shares "
                        "(default: a local process each)")
    p.add_argument("--models-dir", dest="models_dir",
                   help="folder of the save_pretrained folders a request may name as hf:PATH (default: no hf: model)")
    p.add_argument("--allow-factory", dest="allow_factory", action="append", default=[], metavar="PATTERN",
                   help="accept package.module:factory models and datasets matching this glob, e.g. 'mypkg.*' "
                        "(repeatable; default: none, since a factory runs any code its module holds)")
    p.add_argument("--log-level", dest="log_level", choices=("debug", "info", "warning", "error"), default="info")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from search.service.settings import is_loopback

    if not is_loopback(args.host) and args.token_file is None:
        print(f"serve.py: error: --host {args.host!r} reaches beyond this machine: pass --token-file with the "
              "token clients must send (or listen on 127.0.0.1)", file=sys.stderr)
        return 2
    from amc.errors import AmcError
    from search.service.settings import TOKEN_FILE, ServiceConfig, load_or_create_token

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        token, generated = load_or_create_token(args.state_dir, args.token_file)
        config = ServiceConfig(token=token, state_dir=args.state_dir, db_url=args.db, host=args.host, port=args.port,
                               max_concurrent=args.max_concurrent, max_evaluations=args.max_evaluations,
                               poll_interval=args.poll_interval, ray_address=args.ray_address,
                               models_dir=str(Path(args.models_dir).resolve()) if args.models_dir else None,
                               allow_factory=tuple(args.allow_factory))
        from search.service.app import create_app

        app = create_app(config)
    except AmcError as exc:
        print(f"serve.py: error: {exc}", file=sys.stderr)
        return 2
    where = args.token_file or f"{args.state_dir}/{TOKEN_FILE}"
    print(f"serve.py: http://{args.host}:{args.port} (state in {args.state_dir}); "
          + (f"generated the bearer token {token} into {where}" if generated else f"bearer token in {where}"),
          file=sys.stderr, flush=True)
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.stopping.set()  # the event streams end, so the connections close and the shutdown goes on
            super().handle_exit(sig, frame)

    try:
        Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                              timeout_graceful_shutdown=5)).run()
    except KeyboardInterrupt:  # uvicorn raises the Ctrl-C again once it has shut down
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
