"""The web page at ``/`` and optuna-dashboard at ``/dashboard``.

The page (``static/``: an HTML file, three small ES modules, a style sheet; nothing loads from
elsewhere) holds no data: it asks for the token once, keeps it in the tab's ``sessionStorage`` and
sends it as ``Authorization: Bearer`` on every call to the ``/v1`` API, the event stream included
(read with ``fetch``, since ``EventSource`` cannot send headers) and the artifacts (fetched, then
shown from a ``blob:`` URL). The ``/v1`` API itself accepts nothing but that header.

A browser cannot add that header when it navigates to ``/dashboard``, so signing in also calls
``POST /ui/session`` (with the header), which sets a cookie that only the dashboard accepts: HttpOnly
(no script reads it), SameSite=Strict (no other site's page sends it), expiring after
:data:`SESSION_S`, and an HMAC of its expiry keyed by the token (no server state; a new token voids
it). The dashboard is read-only here: its requests other than GET and HEAD (delete a study, write a
note, ...) are refused, so a cookie can change nothing, and the service stays the owner of its
studies; its page gets a style that hides the controls which would send them (:data:`READ_ONLY_STYLE`).
optuna-dashboard's bundled front end asks for ``/api/...``, ``/static/...`` and ``/csv/...`` at the
site's root, so those paths go to it too; the page's own files are under ``/ui/``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from pathlib import Path

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from search.service.security import require_token
from search.service.settings import ServiceConfig

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).with_name("static")
FILES = {"app.js": "text/javascript", "api.js": "text/javascript", "search.js": "text/javascript",
         "charts.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}  # /ui/<name>
COOKIE = "amc_dashboard"
SESSION_S = 8 * 3600
DASHBOARD_PATHS = ("/dashboard", "/api", "/static", "/csv")
# The dashboard's controls that would change a study (create, delete, rename, notes, artifacts), hidden from
# its page: the gate refuses those requests anyway (405), and a button that only fails misleads. MUI marks
# each icon with data-testid="<Name>Icon"; the buttons that carry no icon have an aria-label.
_WRITE_ICONS = ("AddBox", "Delete", "DriveFileRenameOutline", "Edit", "ModeEdit", "UploadFile", "RestoreFromTrash",
                "Save")
_WRITE_LABELS = ("delete study", "rename study", "delete artifact", "skip trial")
READ_ONLY_STYLE = (
    "<style id=\"amc-read-only\">"
    + ", ".join([f':is(button, [role=menuitem]):has(svg[data-testid="{name}Icon"])'
                 for name in _WRITE_ICONS] + [f'[aria-label="{label}"]' for label in _WRITE_LABELS])
    + " { display: none !important; }</style>")
# The page runs only its own script. Inline styles are allowed because a blob: document (report.html,
# opened from the page) inherits this policy, and the report styles itself inline; it runs no script.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data: blob:; connect-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def add_web(app: FastAPI, config: ServiceConfig) -> None:
    """Serves the page at ``/`` and its files at ``/ui/``, and mounts the dashboard (see the module)."""
    app.include_router(_page_router())
    gate = DashboardGate(token=config.token, database_url=config.database_url)
    for prefix in DASHBOARD_PATHS:
        app.mount(prefix, gate)


def _page_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    @router.get("/favicon.ico")
    def favicon() -> FileResponse:  # browsers ask for it on every page: without it, a 404 each time
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml",
                            headers={"Cache-Control": "max-age=86400"})

    @router.get("/ui/{name}")
    def page_file(name: str = PathParam(max_length=20)) -> Response:
        if name not in FILES:
            return Response(json.dumps({"detail": f"no page file {name!r}"}), status_code=404,
                            media_type="application/json")
        return FileResponse(STATIC_DIR / name, media_type=FILES[name], headers=PAGE_HEADERS)

    @router.post("/ui/session", status_code=204, dependencies=[Depends(require_token)])
    def open_session(request: Request) -> Response:
        """Sets the dashboard's cookie; the bearer header is required, so no other site can call this."""
        token = request.app.state.config.token
        expires = int(time.time()) + SESSION_S
        response = Response(status_code=204)
        response.set_cookie(COOKIE, session_value(token, expires), max_age=SESSION_S, path="/", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    @router.delete("/ui/session", status_code=204)
    def close_session() -> Response:
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    return router


def session_value(token: str, expires: int) -> str:
    """The dashboard cookie valid until ``expires`` (Unix seconds): ``<expires>.<HMAC-SHA256 of it>``."""
    mac = hmac.new(token.encode(), f"amc-dashboard-session:{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


def session_valid(token: str, value: str | None, *, now: float | None = None) -> bool:
    """``value`` is a dashboard cookie made with ``token`` and not expired."""
    if not value or value.count(".") != 1:
        return False
    expires, _ = value.split(".")
    if not (expires.isascii() and expires.isdigit()) or len(expires) > 12:
        return False
    if int(expires) < (time.time() if now is None else now):
        return False
    return secrets.compare_digest(value.encode(), session_value(token, int(expires)).encode())


class DashboardGate:
    """ASGI app in front of optuna-dashboard: the cookie (or the bearer header), GET and HEAD only.

    The dashboard (``optuna_dashboard.wsgi`` on the service database, through ``a2wsgi``) is built at
    its first request, so a service whose dashboard nobody opens never imports it.
    """

    def __init__(self, *, token: str, database_url: str) -> None:
        self.token = token
        self.database_url = database_url
        self._app: ASGIApp | None = None
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope)
        if not (session_valid(self.token, request.cookies.get(COOKIE)) or self._bearer_ok(request)):
            await _answer(send, 401, "sign in on the service's page (/) first: the dashboard needs its session "
                                     "cookie, or 'Authorization: Bearer <token>'")
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _answer(send, 405, "the dashboard is read-only here: the service owns its studies (cancel or "
                                     "delete a search through /v1/searches)", allow="GET, HEAD")
            return
        try:
            app = self._app or await anyio.to_thread.run_sync(self._build)
        except ImportError as exc:
            await _answer(send, 503, f"optuna-dashboard is not installed ({exc.name}): "
                                     "pip install -c constraints.txt -e '.[service]'")
            return
        path = scope["path"]
        page = scope["method"] == "GET" and (path == "/dashboard" or path.startswith("/dashboard/"))
        # Its routes are absolute: give it the whole path. Its page gets the style that hides the write controls.
        await app({**scope, "root_path": ""}, receive, _with_read_only_style(send) if page else send)

    def _bearer_ok(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(given.encode(), self.token.encode())

    def _build(self) -> ASGIApp:
        with self._lock:
            if self._app is None:
                import optuna
                from a2wsgi import WSGIMiddleware
                from optuna_dashboard import wsgi

                self._app = WSGIMiddleware(wsgi(optuna.storages.RDBStorage(self.database_url)))
                log.info("optuna-dashboard serves the studies of %s", self.database_url.split("@")[-1])
            return self._app


def _with_read_only_style(send: Send) -> Send:
    """``send`` of the dashboard's page with :data:`READ_ONLY_STYLE` put before its ``</head>`` (an HTML
    answer that is not compressed; anything else passes as it is)."""
    start: dict | None = None
    body = bytearray()

    async def patched(message: dict) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            headers = {k.lower(): v for k, v in message.get("headers", [])}
            if headers.get(b"content-type", b"").startswith(b"text/html") and b"content-encoding" not in headers:
                start = message
                return
        elif message["type"] == "http.response.body" and start is not None:
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            page = bytes(body).replace(b"</head>", READ_ONLY_STYLE.encode() + b"</head>", 1)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(page)).encode())]})
            await send({"type": "http.response.body", "body": page})
            return
        await send(message)

    return patched


async def _answer(send: Send, status: int, detail: str, *, allow: str | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if allow:
        headers.append((b"allow", allow.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
