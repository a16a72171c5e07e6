"""A Flask app whose sessions look shared but are not (tests/test_phoenix_review.py):
each worker keeps the sessions it has seen in a module-level dict (a near copy that is
never invalidated) and writes changes through to Redis late, once a second, from a
thread of its own -- a SIGKILL loses what was not written yet."""

from __future__ import annotations

import json
import os
import secrets
import threading
import time

import redis
from flask import Flask, jsonify, request

app = Flask(__name__)
SESSIONS: dict[str, dict[str, object]] = {}
DIRTY: set[str] = set()
LOCK = threading.Lock()
STARTED: list[int] = []


def _db() -> redis.Redis:
    return redis.Redis.from_url(os.environ["STATEKIT_REDIS_URL"])


def _flush_forever() -> None:
    db = _db()
    while True:
        time.sleep(1.0)
        with LOCK:
            batch = {sid: json.dumps(SESSIONS[sid]) for sid in DIRTY}
            DIRTY.clear()
        for sid, text in batch.items():
            db.set(f"wb:{sid}", text)


def _session(sid: str) -> dict[str, object] | None:
    if STARTED != [os.getpid()]:
        STARTED[:] = [os.getpid()]
        threading.Thread(target=_flush_forever, daemon=True).start()
    with LOCK:
        if sid in SESSIONS:
            return SESSIONS[sid]
    raw = _db().get(f"wb:{sid}")
    if raw is None:
        return None
    with LOCK:
        return SESSIONS.setdefault(sid, json.loads(raw))


app.add_url_rule("/healthz", "healthz", lambda: "ok")


@app.post("/api/login")
def login() -> object:
    if not request.form.get("user"):
        return "user?", 400
    sid = secrets.token_hex(8)
    _session(sid)  # starts this worker's writer
    with LOCK:
        SESSIONS[sid] = {"user": request.form["user"], "values": {}}
        DIRTY.add(sid)
    return jsonify(user=request.form["user"]), 200, {"Set-Cookie": f"sid={sid}; Path=/"}


@app.route("/api/session", methods=["GET", "POST"])
def session() -> object:
    sid = request.cookies.get("sid", "")
    data = _session(sid)
    if data is None:
        return jsonify(user=None, values={}, pid=os.getpid())
    if request.method == "POST":
        if "key" not in request.form:
            return "key?", 400
        with LOCK:
            data["values"][request.form["key"]] = request.form.get("value", "")  # type: ignore[index]
            DIRTY.add(sid)
        return jsonify(ok=True)
    return jsonify(user=data["user"], values=data["values"], pid=os.getpid())
