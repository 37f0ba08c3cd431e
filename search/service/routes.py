"""``/v1/searches``: one router, thin; the work is the manager's (:mod:`search.service.manager`)."""

# No ``from __future__ import annotations``: FastAPI reads the body's type, built at run time, from the signature.
import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel

from search.history import read_history
from search.service.db import ACTIVE, SearchRow, SearchState
from search.service.manager import ARTIFACTS, NotFoundError, SearchManager
from search.service.progress import record_dict
from search.service.schemas import (
    Artifact,
    ArtifactList,
    EvaluationPage,
    InvalidSetting,
    Problem,
    Search,
    SearchList,
    Summary,
)
from search.service.summary import search_summary
from search.service.security import require_token
from search.service.validation import validate_settings

SearchId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", description="the id POST /v1/searches returned")]
ERRORS = {401: {"model": Problem, "description": "missing or wrong bearer token"},
          404: {"model": Problem, "description": "no such search"},
          422: {"model": InvalidSetting, "description": "a bad setting or parameter: which, and why"}}
RETRY_MS = 2000  # the event stream's first message: how long a client waits before it reconnects


def get_manager(request: Request) -> SearchManager:
    return request.app.state.manager


def existing_search(search_id: SearchId, manager: SearchManager = Depends(get_manager)) -> SearchRow:
    """The search ``search_id``; a dependency, so that a stream of no search is a 404 before it starts."""
    return manager.get(search_id)


def searches_router(settings_model: type[BaseModel]) -> APIRouter:
    """The routes; ``settings_model`` is the submit body (:func:`search.service.schemas.settings_model`)."""
    router = APIRouter(prefix="/v1/searches", tags=["searches"], dependencies=[Depends(require_token)],
                       responses={401: ERRORS[401], 422: ERRORS[422]})

    @router.post("", status_code=201, response_model=Search, summary="Submit a search",
                 responses={200: {"model": Search, "description": "a search submitted before with this "
                                  "Idempotency-Key"},
                            400: {"model": Problem, "description": "the body cannot be read as JSON"},
                            409: {"model": Problem, "description": "Idempotency-Key reused with other settings"},
                            413: {"model": Problem, "description": "request body too large"}})
    def submit(body: settings_model, response: Response, request: Request,  # type: ignore[valid-type]
               idempotency_key: str | None = Header(None, max_length=200, description="a retry with the same key "
                                                     "returns the same search"),
               manager: SearchManager = Depends(get_manager)) -> Search:
        """The settings are ``scripts/search.py``'s long options (``{"budget": 0.3, "strategy": "random"}``)."""
        config = request.app.state.config
        settings = validate_settings(body.model_dump(exclude_unset=True), max_evaluations=config.max_evaluations,
                                     python=config.python, workdir=config.workdir, names=config.names)
        digest = hashlib.sha256(json.dumps(settings.given, sort_keys=True).encode()).hexdigest()
        row, created = manager.submit(settings, idempotency_key=idempotency_key, request_hash=digest)
        if not created:
            response.status_code = 200
        return Search.of(row)

    @router.get("", response_model=SearchList, summary="List searches (in queue order)")
    def list_searches(request: Request,
                      state: SearchState | None = Query(None, description="only searches in this state"),
                      limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=10**9),
                      manager: SearchManager = Depends(get_manager)) -> SearchList:
        _whole_numbers(request, "limit", "offset")
        return SearchList(searches=[Search.of(r) for r in manager.list(state=state, limit=limit, offset=offset)])

    @router.get("/{search_id}", response_model=Search, responses={404: ERRORS[404]}, summary="A search")
    def get_search(search_id: SearchId, manager: SearchManager = Depends(get_manager)) -> Search:
        return Search.of(manager.get(search_id))

    @router.get("/{search_id}/evaluations", response_model=EvaluationPage, responses={404: ERRORS[404]},
                summary="The search's history.csv rows")
    def evaluations(search_id: SearchId, request: Request,
                    offset: int = Query(0, ge=0, le=10**9, description="skip the first N rows (a row count, as "
                                        "in GET /v1/searches; not an event id)"),
                    after: int = Query(0, ge=0, le=10**9, deprecated=True,
                                       description="the same as offset (its former name); offset wins when both are given"),
                    limit: int = Query(1000, ge=1, le=10_000),
                    manager: SearchManager = Depends(get_manager)) -> EvaluationPage:
        """Rows of ``history.csv`` from row ``offset`` (0-based): ``?offset=50`` starts at the 51st row."""
        _whole_numbers(request, "offset", "after", "limit")
        skip = after if "after" in request.query_params and "offset" not in request.query_params else offset
        row = manager.get(search_id)
        records = read_history(f"{row.run_dir}/history.csv")[skip: skip + limit]
        return EvaluationPage(evaluations=[record_dict(r) for r in records], next=skip + len(records))

    @router.get("/{search_id}/summary", response_model=Summary, responses={404: ERRORS[404]},
                summary="What the search view shows beside the rows")
    def summary(search_id: SearchId, manager: SearchManager = Depends(get_manager)) -> Summary:
        """Base and uniform accuracy, the per-layer widths of the best policy against the base and the uniform
        policy, elapsed time and an estimate of the time left (``report.html``'s facts; null until known)."""
        return search_summary(manager.get(search_id))

    @router.get("/{search_id}/artifacts", response_model=ArtifactList, responses={404: ERRORS[404]},
                summary="The files of the run folder a client may fetch (only those written)")
    def artifacts(search_id: SearchId, manager: SearchManager = Depends(get_manager)) -> ArtifactList:
        return ArtifactList(artifacts=[Artifact(name=name, media_type=ARTIFACTS[name], bytes=size)
                                       for name, size in manager.artifacts(search_id)])

    @router.get("/{search_id}/events", summary="Live progress (server-sent events)",
                response_class=EventSourceResponse, dependencies=[Depends(existing_search)],
                responses={200: {"description": "events 'state' and 'evaluation', each with its id; the stream ends "
                                 "when the search stops"},
                           **{code: _as_json(answer) for code, answer in ERRORS.items()}})
    async def events(request: Request, search_id: SearchId,
                     last_event_id: str | None = Header(None, max_length=18,
                                                        description="resume after this event id"),
                     after: int = Query(0, ge=0, le=10**18, description="start after this event id (an id: "
                                        "what Last-Event-ID holds; not a row count)"),
                     manager: SearchManager = Depends(get_manager)) -> AsyncIterator[ServerSentEvent]:
        """The search's events after ``after`` (or the ``Last-Event-ID`` header), then each new one as it comes."""
        # FastAPI frames each event and sends a keep-alive comment (": ping") after 15 s without one.
        if last_event_id and last_event_id.isascii() and last_event_id.isdigit():
            after = int(last_event_id)
        interval = request.app.state.config.poll_interval
        stopping = request.app.state.stopping
        yield ServerSentEvent(retry=RETRY_MS)
        while not stopping.is_set():  # the server is stopping: end here, a client reconnects with Last-Event-ID
            try:
                row = await run_in_threadpool(manager.get, search_id)
            except NotFoundError:
                return  # deleted
            batch = await run_in_threadpool(manager.events, search_id, after=after)
            for event in batch:
                yield ServerSentEvent(id=str(event.id), event=event.kind, raw_data=json.dumps(event.data))
                after = event.id
            if batch:
                continue
            if row.state not in ACTIVE:  # read before the events: its last event is in the batch just sent
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(interval)

    @router.get("/{search_id}/artifacts/{name}", summary="A file of the run folder", response_class=FileResponse,
                responses={200: {"content": {t: {} for t in sorted(set(ARTIFACTS.values()))}},
                           404: {"model": Problem, "description": f"not one of {', '.join(ARTIFACTS)}, or "
                                 "not written (yet)"}})
    def artifact(search_id: SearchId, name: Annotated[str, Path(max_length=100)],
                 manager: SearchManager = Depends(get_manager)) -> FileResponse:
        path, media_type = manager.artifact(search_id, name)
        return FileResponse(path, media_type=media_type, filename=name)

    @router.post("/{search_id}/cancel", status_code=202, response_model=Search, summary="Cancel a search",
                 responses={404: ERRORS[404], 409: {"model": Problem, "description": "already finished"}})
    def cancel(search_id: SearchId, manager: SearchManager = Depends(get_manager)) -> Search:
        """A running search stops after writing its best policy so far (state ``cancelling``, then ``cancelled``)."""
        return Search.of(manager.cancel(search_id))

    @router.post("/{search_id}/resume", status_code=202, response_model=Search, summary="Resume a search",
                 responses={404: ERRORS[404], 409: {"model": Problem, "description": "not resumable"}})
    def resume(search_id: SearchId, manager: SearchManager = Depends(get_manager)) -> Search:
        """An interrupted or cancelled search continues where it stopped, up to its evaluations (a failed one
        would fail again: fix the cause and submit it anew)."""
        return Search.of(manager.resume(search_id))

    @router.delete("/{search_id}", status_code=204, summary="Delete a finished search",
                   responses={404: ERRORS[404], 409: {"model": Problem, "description": "still queued or running"}})
    def delete(search_id: SearchId, manager: SearchManager = Depends(get_manager)) -> Response:
        manager.delete(search_id)
        return Response(status_code=204)

    return router


def _whole_numbers(request: Request, *names: str) -> None:
    """422 unless each query parameter given is written as a whole number (pydantic's lax mode takes ``0.0``)."""
    for name in names:
        text = request.query_params.get(name)
        if text is not None and not (text.isascii() and text.isdigit()):
            raise RequestValidationError([{"type": "int_type", "loc": ("query", name), "input": text,
                                           "msg": f"must be a whole number like 10, got {text!r}"}])


def _as_json(answer: dict) -> dict:
    """An error answer of the event stream, documented as the JSON it is (FastAPI would list its model under
    ``text/event-stream``, the stream's media type)."""
    schema = {"$ref": f"#/components/schemas/{answer['model'].__name__}"}
    return {"description": answer["description"], "content": {"application/json": {"schema": schema}}}
