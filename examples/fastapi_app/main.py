"""The FastAPI demo app: every worker is disposable, the state lives in Redis and S3.

* photos go to the blob store (``starlette_statekit.uploads``) and are shown through
  presigned URLs: any worker serves them, none keeps them;
* sessions are server-side in Redis (``starlette_statekit.sessions``): any worker
  reads them, the id is rotated on login, "log out everywhere" revokes them all;
* the slow report is cached in the ``AsyncCache`` (``Depends(cache)``), computed once
  for the cluster (stampede-protected) and the same for every worker;
* the users count is computed once per interval by the broadcaster
  (:mod:`examples.fastapi_app.jobs`, run by each worker's lifespan under one lease)
  and read locally by every worker (``Depends(shared_value(...))``);
* ``/healthz``, ``/readyz`` and the drain come from ``starlette_statekit``.

The ``/api/*`` routes are the contract ``statekit phoenix`` drives. Nothing connects
in :func:`create_app`; the first request (or the lifespan) does.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from examples.flask_app import db
from starlette_statekit import StateKit, cache, shared_value
from starlette_statekit.sessions import destroy_session, get_session_store, rotate_session
from starlette_statekit.uploads import blob_url, save_upload
from statekit import AsyncCache
from statekit.broadcast import SharedValue

from .jobs import make_broadcaster

__all__ = ["MAX_PHOTO", "REPORT_TTL", "create_app"]

MAX_PHOTO = 8 * 1024 * 1024
REPORT_TTL = 30
#: the Flask demo's page and stylesheet
FLASK_DEMO = Path(__file__).resolve().parent.parent / "flask_app"

Cache = Annotated[AsyncCache, Depends(cache)]
UsersCount = Annotated[SharedValue[Any], Depends(shared_value("users_count"))]
Name = Annotated[str, Form(max_length=256)]


def create_app(config: dict[str, Any] | None = None) -> FastAPI:
    """The app. ``STATEKIT_REDIS_URL`` and ``STATEKIT_BLOBS_URL`` (set by ``statekit
    dev``), ``DATABASE_URL`` and ``SECRET_KEY`` come from the environment; *config*
    holds ``StateKit`` keywords (``users_count_interval`` goes to the broadcaster)."""
    options = dict(config or {})
    interval = options.pop("users_count_interval", None)
    app = FastAPI(title="statekit demo")
    StateKit(app, broadcaster=make_broadcaster(interval),
             secret_keys=os.environ.get("STATEKIT_SECRET_KEYS") or os.environ.get(
                 "SECRET_KEY", "statekit-demo-not-a-secret"),
             broadcast_defaults={"users_count": {}}, **options)
    db.init_db()  # CREATE TABLE IF NOT EXISTS: the app's own schema, not statekit state
    app.mount("/static", StaticFiles(directory=FLASK_DEMO / "static"), name="static")
    pages = jinja2.Environment(loader=jinja2.FileSystemLoader(FLASK_DEMO / "templates"), autoescape=True)
    pages.filters["clock"] = db.clock
    pages.globals["url_for"] = lambda name, **kw: app.url_path_for(
        name, **({"path": kw["filename"]} if name == "static" else kw))
    _routes(app, pages)
    return app


def _users_count(value: SharedValue[Any]) -> dict[str, Any]:
    shown = value.get() or {}
    updated = value.updated_at
    return {"value": shown.get("value", 0), "computed_by": shown.get("computed_by", "-"),
            "version": updated or 0.0, "age": (time.time() - updated) if updated else 0.0}


async def _slow_report(c: AsyncCache) -> dict[str, Any]:
    async def compute() -> dict[str, Any]:
        await asyncio.sleep(1.0)  # a report that takes a while
        rows = await asyncio.to_thread(_query, db.joins_per_minute)
        return {"rows": rows, "computed_at": time.time(), "computed_by": os.getpid()}

    # one computation for the cluster; the other workers wait for it or get the last value
    report: dict[str, Any] = await c.get_or_set("report:joins", compute, ttl=REPORT_TTL)
    return report


def _query(fn: Any, *args: Any) -> Any:
    with db.connect() as conn:
        return fn(conn, *args)


async def _log_in(request: Request, name: str) -> None:
    await asyncio.to_thread(_query, db.add_user, name)
    request.session.clear()
    await rotate_session(request)  # a new session id on login: no session fixation
    request.session["_user_id"] = name
    request.session["values"] = {}


async def _save_photo(request: Request) -> str:
    # streamed to the blob store; 400/413/415 (and nothing stored) when it is not a photo
    blob = await save_upload(request, "photo", max_size=MAX_PHOTO, allowed_types=["image/*"])
    owner = request.session.get("_user_id", "")
    await asyncio.to_thread(_query, db.add_photo, owner, blob.key, blob.filename or "photo")
    return blob.key


def _routes(app: FastAPI, pages: jinja2.Environment) -> None:  # noqa: C901 -- one page and its API
    @app.get("/", response_class=HTMLResponse, name="index")
    async def index(request: Request, c: Cache, users_count: UsersCount) -> str:
        session = request.session
        session["visits"] = session.get("visits", 0) + 1
        user = session.get("_user_id")
        photos = []
        if user:
            rows = await asyncio.to_thread(_query, db.photos_of, user)
            photos = [{"name": name, "url": await blob_url(request, key, expires=300)} for key, name in rows]
        count = _users_count(users_count)
        queries = await asyncio.to_thread(_query, db.queries_since, time.time() - 60)
        return pages.get_template("index.html").render(
            variant="statekit", pid=os.getpid(), user=user, visits=session["visits"],
            users_count=count["value"], users_count_age=count["age"], users_count_by=count["computed_by"],
            queries_last_minute=queries, photos=photos, report=await _slow_report(c),
        )

    @app.post("/login", name="login")
    async def login(request: Request, user: Name = "") -> RedirectResponse:
        if user.strip():
            await _log_in(request, user.strip()[:64])
        return RedirectResponse("/", status_code=303)

    @app.post("/logout", name="logout")
    async def logout(request: Request) -> RedirectResponse:
        await destroy_session(request)
        return RedirectResponse("/", status_code=303)

    @app.post("/logout-everywhere", name="logout_everywhere")
    async def logout_everywhere(request: Request) -> RedirectResponse:
        user = request.session.get("_user_id")
        if user:
            await get_session_store(request).revoke_user(user)
        await destroy_session(request)
        return RedirectResponse("/", status_code=303)

    @app.post("/photos", name="upload")
    async def upload(request: Request) -> RedirectResponse:
        if request.session.get("_user_id"):
            await _save_photo(request)
        return RedirectResponse("/", status_code=303)

    # The route contract `statekit phoenix` drives (see statekit/phoenix.py).

    @app.post("/api/login")
    async def api_login(request: Request, user: Name = "") -> dict[str, Any]:
        name = user.strip()[:64]
        if not name:
            raise HTTPException(400, "form field 'user' is empty")
        await _log_in(request, name)
        return {"user": name, "pid": os.getpid()}

    @app.post("/api/logout")
    async def api_logout(request: Request) -> dict[str, Any]:
        await destroy_session(request)
        return {"user": None, "pid": os.getpid()}

    @app.get("/api/session")
    async def api_session(request: Request) -> dict[str, Any]:
        session = request.session
        return {"user": session.get("_user_id"), "values": session.get("values", {}),
                "visits": session.get("visits", 0), "pid": os.getpid()}

    @app.post("/api/session")
    async def api_session_write(request: Request, key: Name, value: Name) -> dict[str, Any]:
        values = dict(request.session.get("values", {}))
        values[key] = value
        request.session["values"] = values
        return {"ok": True, "pid": os.getpid()}

    @app.post("/api/photos", status_code=201)
    async def api_upload(request: Request) -> dict[str, Any]:
        return {"id": await _save_photo(request), "pid": os.getpid()}

    @app.get("/api/photos/{key:path}")
    async def api_photo(request: Request, key: str) -> RedirectResponse:
        return RedirectResponse(await blob_url(request, key, expires=300))

    @app.get("/api/shared")
    async def api_shared(users_count: UsersCount) -> JSONResponse:
        count = _users_count(users_count)
        return JSONResponse({"name": "users_count", "value": count["value"], "version": count["version"],
                             "pid": os.getpid()})
