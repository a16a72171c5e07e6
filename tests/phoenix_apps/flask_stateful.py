"""A Flask app that keeps phoenix's three kinds of state in its processes, each lost in a
way that never answers 404 and never returns a changed value (tests/test_phoenix_review.py):

* sessions in a module-level dict; an unknown session answers 401, as a login_required does;
* photos in the working directory of the instance that took them; a photo the instance
  does not have fails with a 500 (``open()`` raising), not a 404;
* a users count kept per worker (logins it served), its version the start of the current
  2 s period: every worker shows the same version with its own value.
"""

from __future__ import annotations

import os
import secrets
import time

from flask import Flask, jsonify, request

app = Flask(__name__)
SESSIONS: dict[str, dict[str, object]] = {}
LOGINS = [0]


@app.get("/healthz")
def healthz() -> str:
    return "ok"


@app.post("/api/login")
def login() -> object:
    user = request.form.get("user")
    if not user:
        return "user?", 400
    sid = secrets.token_hex(8)
    SESSIONS[sid] = {"user": user, "values": {}}
    LOGINS[0] += 1
    response = jsonify(user=user)
    response.set_cookie("sid", sid)
    return response


@app.route("/api/session", methods=["GET", "POST"])
def session() -> object:
    data = SESSIONS.get(request.cookies.get("sid", ""))
    if data is None:
        return jsonify(error="login required"), 401
    if request.method == "POST":
        if "key" not in request.form:
            return "key?", 400
        data["values"][request.form["key"]] = request.form.get("value", "")  # type: ignore[index]
        return jsonify(ok=True)
    return jsonify(user=data["user"], values=data["values"], pid=os.getpid())


@app.post("/api/photos")
def upload() -> object:
    photo = request.files.get("photo")
    if photo is None:
        return "photo?", 400
    blob_id = secrets.token_hex(8)
    os.makedirs("uploads", exist_ok=True)
    photo.save(os.path.join("uploads", blob_id))
    return jsonify(id=blob_id), 201


@app.get("/api/photos/<blob_id>")
def photo(blob_id: str) -> object:
    with open(os.path.join("uploads", os.path.basename(blob_id)), "rb") as f:
        return f.read(), 200, {"Content-Type": "image/png"}


@app.get("/api/shared")
def shared() -> object:
    return jsonify(value=LOGINS[0], version=float(int(time.time()) // 2 * 2), pid=os.getpid())
