"""The demo app, migrated: every worker is disposable, the state lives in Redis and S3.

Compare with ``before/app.py`` (the same app written the stateful way) and read
docs/migration.md for each step:

* photos go to a :class:`~statekit.blobs.BlobStore` (S3) and are shown through
  presigned URLs — any instance serves them, none keeps them;
* sessions are server-side in Redis (``flask_statekit.sessions``): any worker reads
  them, ``session.rotate()`` on login, "log out everywhere" revokes them all;
* the slow report is cached in ``statekit.cache``, computed once for the cluster
  (stampede-protected) and the same for every worker;
* the users count is computed once per interval by the broadcaster
  (:mod:`examples.flask_app.jobs`) and pushed to every worker;
* ``/healthz`` and ``/readyz`` come from ``flask_statekit`` (statekit.lifecycle).

Nothing connects at import or in :func:`create_app`; the first request does.
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask, abort, jsonify, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from flask_statekit import StateKit, get_state
from flask_statekit.blobs import blob_url, save_upload
from flask_statekit.broadcast import shared_value
from flask_statekit.cache import cache

from . import db

__all__ = ["create_app"]

MAX_PHOTO = 8 * 1024 * 1024
REPORT_TTL = 30


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The app factory. ``STATEKIT_REDIS_URL`` and ``STATEKIT_BLOBS_URL`` (set by
    ``statekit dev``), ``DATABASE_URL`` and ``SECRET_KEY`` come from the environment."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=os.environ.get("SECRET_KEY", "statekit-demo-not-a-secret"),
        MAX_CONTENT_LENGTH=MAX_PHOTO + 64 * 1024,
        # the demo is served over plain http on localhost; set it to 1 behind TLS
        STATEKIT_SESSION_COOKIE_SECURE=os.environ.get("STATEKIT_SESSION_COOKIE_SECURE", "0"),
    )
    app.config.update(config or {})
    StateKit(app)
    app.add_template_filter(db.clock, "clock")
    db.init_db()  # CREATE TABLE IF NOT EXISTS: the app's own schema, not statekit state
    _routes(app)
    return app


def _users_count() -> dict[str, Any]:
    users_count = shared_value("users_count")
    value = users_count.get() or {}
    updated = users_count.updated_at
    return {
        "value": value.get("value", 0),
        "computed_by": value.get("computed_by", "-"),
        "version": updated or 0.0,
        "age": (time.time() - updated) if updated else 0.0,
    }


def _slow_report() -> dict[str, Any]:
    def compute() -> dict[str, Any]:
        time.sleep(1.0)  # a report that takes a while
        with db.connect() as conn:
            rows = db.joins_per_minute(conn)
        return {"rows": rows, "computed_at": time.time(), "computed_by": os.getpid()}

    # one computation for the cluster; the other workers wait for it or get the last value
    report: dict[str, Any] = cache.get_or_set("report:joins", compute, ttl=REPORT_TTL)
    return report


def _log_in(name: str) -> None:
    with db.connect() as conn:
        db.add_user(conn, name)
    session.clear()
    session.rotate()  # a new session id on login: no session fixation
    session["_user_id"] = name
    session["values"] = {}


def _save_photo() -> str:
    # streamed to the blob store; 400/413/415 (and nothing stored) when it is not a photo
    blob = save_upload("photo", max_size=MAX_PHOTO, allowed_types=["image/*"])
    with db.connect() as conn:
        db.add_photo(conn, session.get("_user_id", ""), blob.key, blob.filename or "photo")
    return blob.key


def _routes(app: Flask) -> None:  # noqa: C901 -- one page and its API
    @app.get("/")
    def index() -> str:
        session["visits"] = session.get("visits", 0) + 1
        user = session.get("_user_id")
        photos = []
        if user:
            with db.connect() as conn:
                photos = [{"name": name, "url": blob_url(key, expires=300)}
                          for key, name in db.photos_of(conn, user)]
        count = _users_count()
        with db.connect() as conn:
            queries = db.queries_since(conn, time.time() - 60)
        return render_template(
            "index.html", variant="statekit", pid=os.getpid(), user=user, visits=session["visits"],
            users_count=count["value"], users_count_age=count["age"], users_count_by=count["computed_by"],
            queries_last_minute=queries, photos=photos, report=_slow_report(),
        )

    @app.post("/login")
    def login() -> Response:
        name = request.form.get("user", "").strip()[:64]
        if name:
            _log_in(name)
        return redirect(url_for("index"))

    @app.post("/logout")
    def logout() -> Response:
        session.clear()
        return redirect(url_for("index"))

    @app.post("/logout-everywhere")
    def logout_everywhere() -> Response:
        user = session.get("_user_id")
        if user:
            get_state().sessions.revoke_user(user)
        session.clear()
        return redirect(url_for("index"))

    @app.post("/photos")
    def upload() -> Response:
        if session.get("_user_id"):
            _save_photo()
        return redirect(url_for("index"))

    # The route contract `statekit phoenix` drives (see statekit/phoenix.py).

    @app.post("/api/login")
    def api_login() -> Response:
        name = request.form.get("user", "").strip()[:64]
        if not name:
            abort(400)
        _log_in(name)
        return jsonify(user=name, pid=os.getpid())

    @app.post("/api/logout")
    def api_logout() -> Response:
        session.clear()
        return jsonify(user=None, pid=os.getpid())

    @app.get("/api/session")
    def api_session() -> Response:
        return jsonify(user=session.get("_user_id"), values=session.get("values", {}),
                       visits=session.get("visits", 0), pid=os.getpid())

    @app.post("/api/session")
    def api_session_write() -> Response:
        values = dict(session.get("values", {}))
        values[request.form["key"]] = request.form["value"]
        session["values"] = values
        return jsonify(ok=True, pid=os.getpid())

    @app.post("/api/photos")
    def api_upload() -> tuple[Response, int]:
        return jsonify(id=_save_photo(), pid=os.getpid()), 201

    @app.get("/api/photos/<path:key>")
    def api_photo(key: str) -> Response:
        return redirect(blob_url(key, expires=300))

    @app.get("/api/shared")
    def api_shared() -> Response:
        count = _users_count()
        return jsonify(name="users_count", value=count["value"], version=count["version"], pid=os.getpid())
