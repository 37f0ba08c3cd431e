"""The FastAPI application: :func:`create_app` wires the database, the executor, the scheduler and the routes."""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from search.service.db import close_database, open_database
from search.service.executor import Executor, LocalProcessExecutor
from search.service.manager import ConflictError, NotFoundError, SearchManager
from search.service.routes import searches_router
from search.service.scheduler import Scheduler
from search.service.schemas import Health, settings_model
from search.service.security import BodyLimit, require_token
from search.service.settings import ServiceConfig
from search.service.validation import SettingsError
from search.service.web import add_web

log = logging.getLogger(__name__)
API_VERSION = "1.0.0"


def create_app(config: ServiceConfig, *, executor: Executor | None = None) -> FastAPI:
    """The service for ``config``; the scheduler runs while the app's lifespan does (uvicorn, ``TestClient``).

    Args:
        config: The service's settings.
        executor: Where searches run (None: a Ray job each with ``config.ray_address``
            (:class:`~search.service.ray_jobs.RayJobExecutor`), else :class:`LocalProcessExecutor`, a process each).
    """
    Path(config.state_dir).mkdir(parents=True, exist_ok=True)
    config.runs_dir.mkdir(parents=True, exist_ok=True)
    sessions = open_database(config.database_url)
    executor = executor or _default_executor(config)
    manager = SearchManager(config, sessions, executor)
    scheduler = Scheduler(manager)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(scheduler.start)
        try:
            yield
        finally:
            app.state.stopping.set()
            # Ray jobs go on without the service (a restarted one follows them); local processes are stopped.
            await run_in_threadpool(lambda: scheduler.stop(interrupt=not executor.outlives_service))
            close_database(sessions)

    app = FastAPI(title="amc-search service", version=API_VERSION, lifespan=lifespan, openapi_url=None,
                  docs_url=None, redoc_url=None,
                  description="Submit, watch, cancel, resume and fetch pruning-policy searches. Every route but "
                              "/healthz needs 'Authorization: Bearer <token>'.")
    app.state.config = config
    app.state.manager = manager
    app.state.scheduler = scheduler
    app.state.stopping = threading.Event()  # set when the server begins to stop: the event streams end
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.include_router(searches_router(settings_model(max_evaluations=config.max_evaluations)))
    add_web(app, config)  # the page at /, optuna-dashboard at /dashboard
    _add_error_handlers(app)

    @app.get("/healthz", response_model=Health, tags=["service"], summary="Liveness (no token needed)")
    def healthz() -> Health:
        return Health(status="ok")

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_token)])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    return app


def _default_executor(config: ServiceConfig) -> Executor:
    if config.ray_address is None:
        return LocalProcessExecutor(config.python, workdir=config.workdir)
    from search.service.ray_jobs import RayJobExecutor

    return RayJobExecutor(config.ray_address, python=config.python, workdir=config.workdir,
                          stop_wait=config.cancel_timeout)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(ConflictError)
    async def conflict(request: Request, exc: ConflictError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(SettingsError)
    async def bad_setting(request: Request, exc: SettingsError) -> JSONResponse:
        return _invalid(exc.field, exc.reason)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = exc.errors()[0]
        loc = list(error.get("loc", ()))
        if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
            loc = loc[1:]
        return _invalid(str(loc[0]) if loc else "body", error.get("msg", "invalid"))


def _invalid(field: str, reason: str) -> JSONResponse:
    return JSONResponse({"detail": f"{field}: {reason}", "field": field, "reason": reason}, status_code=422)
