"""The node's HTTP API as a Starlette application (:func:`create_app`).

Routes (every one but ``/health``, ``/ready`` and ``/login`` needs the token,
see :mod:`pacs_node.api.auth`; JSON unless said otherwise)::

    GET  /health                         liveness: the process answers
    GET  /ready                          readiness: database, model, DICOM SCP (503 + reasons)
    GET  /metrics                        Prometheus text format (pacs_node.api.metrics)
    GET  /api/studies?limit=             the worklist: studies by triage rank, then arrival
    GET  /api/studies/{study_uid}        one study, every job with measurements
    GET  /api/jobs?state=&limit=&offset= jobs, latest first
    GET  /api/jobs/{id}                  one job: state, flag, priority, measurements, exports
    GET  /api/jobs/{id}/thumbnail.png    key image of the SC "AI summary" series (404: none)
    GET  /worklist                       the worklist page (pacs_node/api/static)
    GET  /worklist/{asset}               its script and style sheet
    GET  /login, POST /login             token form; sets the session cookie
    POST /logout                         ends the session

Handlers are plain (synchronous) functions run in Starlette's thread pool;
each opens one short read-only session. Patient name and ID appear only in
the study JSON (behind the token) and never in a log line.
"""

from __future__ import annotations

import dataclasses
import enum
import html
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from pacs_node.api.auth import SESSION_COOKIE, ApiToken, TokenMiddleware
from pacs_node.api.metrics import NodeCollector
from pacs_node.api.thumbnail import ThumbnailCache
from storage import JobState, NotFoundError, ResultStore, exports_for_job
from storage.models import JobRow
from storage.queries import (
    JobOverview,
    StudyOverview,
    get_study_overview,
    job_overview,
    key_image_object,
    list_job_overviews,
    worklist,
)

LOGGER = logging.getLogger(__name__)

__all__ = ["RESEARCH_USE_LINE", "ReadinessCheck", "create_app"]

#: Shown on the worklist page and returned with the worklist.
RESEARCH_USE_LINE = "RESEARCH USE ONLY, NOT FOR DIAGNOSIS."

#: A readiness check: a name and a function returning ``None`` when ready or
#: the reason why not.
ReadinessCheck = tuple[str, Callable[[], "str | None"]]

_PACKAGE = "pacs_node.api"
_ASSETS: Mapping[str, str] = {
    "worklist.js": "text/javascript; charset=utf-8",
    "worklist.css": "text/css; charset=utf-8",
}
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_PAGE_HEADERS = {
    **_SECURITY_HEADERS,
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
}
_LOGIN_HEADERS = {
    **_SECURITY_HEADERS,
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
}


def to_json(value: Any) -> Any:
    """Plain JSON data: dataclasses as dicts, datetimes as ISO 8601, enums as values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def job_json(job: JobOverview) -> dict[str, Any]:
    """The JSON form of a job (``flag``/``priority``/``rank`` at the top for clients)."""
    data = to_json(job)
    triage = job.triage
    data["flag"] = triage.flag if triage else None
    data["priority"] = triage.priority if triage else None
    data["rank"] = triage.rank if triage else None
    data["thumbnail_url"] = f"/api/jobs/{job.id}/thumbnail.png" if job.has_key_image else None
    return data


def study_json(study: StudyOverview) -> dict[str, Any]:
    """The JSON form of a worklist entry: the study, its key job's decision, its jobs."""
    key = study.key_job
    triage = key.triage if key else None
    return {
        "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "study_date": study.study_date,
        "study_description": study.study_description,
        "patient": {"id": study.patient_id, "name": study.patient_name},
        "received_at": study.received_at.isoformat(),
        "updated_at": study.updated_at.isoformat(),
        "key_job_id": key.id if key else None,
        "state": key.state.value if key else None,
        "flag": triage.flag if triage else None,
        "priority": triage.priority if triage else None,
        "rank": triage.rank if triage else None,
        "text": triage.text if triage else None,
        "predicted_class": (key.measurements or {}).get("predicted_class") if key else None,
        "thumbnail_url": (
            f"/api/jobs/{key.id}/thumbnail.png" if key and key.has_key_image else None
        ),
        "jobs": [job_json(job) for job in study.jobs],
    }


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise _BadRequest(f'query parameter "{name}" should be an integer') from None
    if not low <= value <= high:
        raise _BadRequest(f'query parameter "{name}" should be {low}-{high}')
    return value


class _BadRequest(ValueError):
    pass


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"error": detail}, status_code=status, headers=_SECURITY_HEADERS)


def _static_text(name: str) -> str:
    return resources.files(_PACKAGE).joinpath("static").joinpath(name).read_text(encoding="utf-8")


def _login_page(message: str = "") -> str:
    return _static_text("login.html").replace(
        "__MESSAGE__", html.escape(message)
    ).replace("__RESEARCH_USE__", html.escape(RESEARCH_USE_LINE))


def create_app(
    session_factory: sessionmaker[Session],
    result_store: ResultStore,
    token: ApiToken,
    *,
    clock: Callable[[], datetime],
    checks: Sequence[ReadinessCheck] = (),
    intended_use: str = "",
    worklist_refresh: float = 10.0,
) -> Starlette:
    """Build the HTTP application of a node.

    Parameters
    ----------
    session_factory: sqlalchemy.orm.sessionmaker
        The node's sessions (read-only use).
    result_store: storage.ResultStore
        Where the result objects (and their SC key images) are.
    token: ApiToken
        The access token (:func:`pacs_node.api.auth.load_or_create_token`).
    clock: Callable[[], datetime]
        Current time, timezone-aware.
    checks: Sequence[ReadinessCheck]
        Readiness checks besides the database (model loaded, SCP listening).
    intended_use: str
        The model's intended-use statement, shown on the worklist page.
    worklist_refresh: float
        Seconds between two refreshes of the worklist page.

    Returns
    -------
    starlette.applications.Starlette
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(session_factory, clock))
    thumbnails = ThumbnailCache()

    def database_check() -> str | None:
        try:
            with session_factory() as session:
                session.execute(select(JobRow.id).limit(1)).all()
        except SQLAlchemyError as exc:
            LOGGER.warning("readiness: database unreachable: %s", type(exc).__name__)
            return f"database unreachable: {type(exc).__name__}"
        return None

    all_checks: list[ReadinessCheck] = [("database", database_check), *checks]

    def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers=_SECURITY_HEADERS)

    def ready(request: Request) -> Response:
        results = {name: check() for name, check in all_checks}
        reasons = [reason for reason in results.values() if reason]
        body = {
            "ready": not reasons,
            "checks": {name: reason or "ok" for name, reason in results.items()},
        }
        if reasons:
            body["reasons"] = reasons
        return JSONResponse(body, status_code=503 if reasons else 200, headers=_SECURITY_HEADERS)

    def metrics(request: Request) -> Response:
        return Response(
            generate_latest(registry),
            media_type=CONTENT_TYPE_LATEST,
            headers={"Cache-Control": "no-store"},
        )

    def studies(request: Request) -> Response:
        try:
            limit = _int_param(request, "limit", 100, 1, 1000)
        except _BadRequest as exc:
            return _error(400, str(exc))
        with session_factory() as session:
            entries = worklist(session, limit=limit)
        return JSONResponse(
            {
                "research_use": RESEARCH_USE_LINE,
                "generated_at": clock().isoformat(),
                "studies": [study_json(entry) for entry in entries],
            },
            headers={**_SECURITY_HEADERS, "Cache-Control": "no-store"},
        )

    def study(request: Request) -> Response:
        uid = request.path_params["study_uid"]
        try:
            with session_factory() as session:
                entry = get_study_overview(session, uid)
        except NotFoundError:
            return _error(404, f"study {uid} not found")
        data = study_json(entry)
        data["jobs"] = [job_json(job) for job in entry.jobs]
        return JSONResponse(data, headers={**_SECURITY_HEADERS, "Cache-Control": "no-store"})

    def jobs(request: Request) -> Response:
        try:
            limit = _int_param(request, "limit", 100, 1, 1000)
            offset = _int_param(request, "offset", 0, 0, 10**9)
            state_text = request.query_params.get("state")
            try:
                state = None if state_text is None else JobState(state_text)
            except ValueError:
                raise _BadRequest(
                    'query parameter "state" should be one of '
                    + ", ".join(s.value for s in JobState)
                ) from None
        except _BadRequest as exc:
            return _error(400, str(exc))
        with session_factory() as session:
            found = list_job_overviews(session, state=state, limit=limit, offset=offset)
        return JSONResponse(
            {"jobs": [job_json(job) for job in found]},
            headers={**_SECURITY_HEADERS, "Cache-Control": "no-store"},
        )

    def job(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            with session_factory() as session:
                found = job_overview(session, job_id)
                exports = exports_for_job(session, job_id)
        except NotFoundError:
            return _error(404, f"job {job_id} not found")
        data = job_json(found)
        data["exports"] = [
            {
                "destination": e.destination,
                "status": e.status.value,
                "attempt_count": e.attempt_count,
                "delivered_at": to_json(e.delivered_at),
                "last_error": e.last_error,
            }
            for e in exports
        ]
        return JSONResponse(data, headers={**_SECURITY_HEADERS, "Cache-Control": "no-store"})

    def thumbnail(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        with session_factory() as session:
            row = key_image_object(session, job_id)
            found = None if row is None else (row.sop_instance_uid, row.file_path)
        if found is None:
            return _error(404, f"job {job_id} has no key image")
        sop_uid, relative = found
        path = result_store.root / relative
        try:
            png = thumbnails.get(sop_uid, path)
        except (OSError, ValueError) as exc:
            LOGGER.warning("thumbnail of job %d (SOP %s): %s", job_id, sop_uid, exc)
            return _error(404, f"the key image of job {job_id} cannot be shown")
        return Response(
            png,
            media_type="image/png",
            headers={**_SECURITY_HEADERS, "Cache-Control": "private, max-age=3600"},
        )

    def worklist_page(request: Request) -> Response:
        page = (
            _static_text("worklist.html")
            .replace("__REFRESH_MS__", str(int(worklist_refresh * 1000)))
            .replace("__RESEARCH_USE__", html.escape(RESEARCH_USE_LINE))
            .replace("__INTENDED_USE__", html.escape(intended_use))
        )
        return Response(page, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    def asset(request: Request) -> Response:
        name = request.path_params["asset"]
        if name not in _ASSETS:
            return _error(404, "not found")
        return Response(
            _static_text(name),
            media_type=_ASSETS[name],
            headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"},
        )

    def root(request: Request) -> Response:
        return RedirectResponse("/worklist", status_code=303)

    def login_form(request: Request) -> Response:
        return Response(_login_page(), media_type="text/html; charset=utf-8",
                        headers=_LOGIN_HEADERS)

    async def login(request: Request) -> Response:
        body = (await request.body())[:8192].decode("utf-8", errors="replace")
        candidate = (parse_qs(body).get("token") or [""])[0].strip()
        if not candidate or not token.matches(candidate):
            LOGGER.warning("worklist login refused from %s",
                           request.client.host if request.client else "?")
            return Response(
                _login_page("Wrong token."),
                status_code=401,
                media_type="text/html; charset=utf-8",
                headers=_LOGIN_HEADERS,
            )
        response = RedirectResponse("/worklist", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            token.session_value,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    def logout(request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    routes = [
        Route("/", root, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/api/studies", studies, methods=["GET"]),
        Route("/api/studies/{study_uid}", study, methods=["GET"]),
        Route("/api/jobs", jobs, methods=["GET"]),
        Route("/api/jobs/{job_id:int}", job, methods=["GET"]),
        Route("/api/jobs/{job_id:int}/thumbnail.png", thumbnail, methods=["GET"]),
        Route("/worklist", worklist_page, methods=["GET"]),
        Route("/worklist/{asset}", asset, methods=["GET"]),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(TokenMiddleware, token=token)])
