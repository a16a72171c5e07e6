"""The demo app written the stateful way — the starting point of docs/migration.md.

Every habit here works on a laptop with one process and breaks as soon as there are
several workers, several machines, or a restart:

* uploads go to a local ``uploads/`` folder (only this machine has them; a new
  container starts empty);
* sessions live in each worker's memory (Flask-Session with cachelib's SimpleCache):
  the next request, served by another worker, is logged out;
* the slow report is cached in a module-level dict, different in every worker;
* every worker runs its own timer that queries the users count: N workers, N queries
  per interval, N different answers;
* a ``functools.lru_cache`` keeps database rows in one worker's memory forever.

Run it the classic way, after ``pip install Flask-Session`` (statekit does not need it):
``gunicorn -w 4 examples.flask_app.before.app:app``. ``statekit audit
examples/flask_app/before`` lists each habit with the guide section that fixes it, and
``statekit phoenix examples.flask_app.before.app:app`` shows the lost state.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import uuid

from cachelib import SimpleCache
from flask import (
    Flask,
    abort,
    jsonify,
    redirect,
    render_template,
    request,
    send_from_directory,
    session,
    url_for,
)
from flask_session import Session
from werkzeug.utils import secure_filename

from examples.flask_app import db

app = Flask(__name__, template_folder="../templates", static_folder="../static")
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "before-app-not-a-secret")
app.config["SESSION_TYPE"] = "cachelib"
app.config["SESSION_CACHELIB"] = SimpleCache(threshold=10_000)
app.config["MAX_CONTENT_LENGTH"] = 8 * 1024 * 1024
Session(app)

UPLOAD_FOLDER = os.environ.get("UPLOAD_FOLDER", "uploads")
INTERVAL = float(os.environ.get("USERS_COUNT_INTERVAL", "10"))
REPORT_TTL = 30.0

db.init_db()

report_cache = {}
requests_served = 0
users_count = {"value": 0, "computed_at": 0.0, "computed_by": 0}


def refresh_users_count():
    while True:
        with db.connect() as conn:
            value = db.count_users(conn)
        users_count.update(value=value, computed_at=time.time(), computed_by=os.getpid())
        time.sleep(INTERVAL)


users_count_timer = threading.Thread(target=refresh_users_count, name="users-count", daemon=True)
users_count_timer.start()


@functools.lru_cache(maxsize=1024)
def find_user(name):
    with db.connect() as conn:
        return conn.execute("SELECT name, joined_at FROM users WHERE name = ?", (name,)).fetchone()


def slow_report():
    hit = report_cache.get("joins")
    if hit is not None and time.time() - hit["computed_at"] < REPORT_TTL:
        return hit
    time.sleep(1.0)  # a report that takes a while
    with db.connect() as conn:
        rows = db.joins_per_minute(conn)
    report = {"rows": rows, "computed_at": time.time(), "computed_by": os.getpid()}
    report_cache["joins"] = report
    return report


def save_photo(file):
    os.makedirs(UPLOAD_FOLDER, exist_ok=True)
    key = f"{uuid.uuid4().hex}-{secure_filename(file.filename or 'photo')}"
    file.save(os.path.join(UPLOAD_FOLDER, key))
    with db.connect() as conn:
        db.add_photo(conn, session.get("user", ""), key, file.filename or "photo")
    return key


def log_in(name):
    if find_user(name) is None:
        with db.connect() as conn:
            db.add_user(conn, name)
    session.clear()
    session["user"] = name
    session["values"] = {}


def page_context():
    session["visits"] = session.get("visits", 0) + 1
    user = session.get("user")
    photos = []
    if user:
        with db.connect() as conn:
            photos = [
                {"name": name, "url": url_for("photo", key=key)} for key, name in db.photos_of(conn, user)
            ]
    with db.connect() as conn:
        queries = db.queries_since(conn, time.time() - 60)
    return {
        "variant": "before",
        "pid": os.getpid(),
        "user": user,
        "visits": session["visits"],
        "users_count": users_count["value"],
        "users_count_age": time.time() - users_count["computed_at"],
        "users_count_by": users_count["computed_by"],
        "queries_last_minute": queries,
        "photos": photos,
        "report": slow_report(),
    }


@app.get("/")
def index():
    global requests_served
    requests_served += 1
    return render_template("index.html", served_here=requests_served, **page_context())


@app.post("/login")
def login():
    name = request.form.get("user", "").strip()[:64]
    if name:
        log_in(name)
    return redirect(url_for("index"))


@app.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("index"))


@app.post("/logout-everywhere")
def logout_everywhere():
    # There is no way to find this user's other sessions: they live in other
    # workers' memory. The best this app can do is forget the current one.
    session.clear()
    return redirect(url_for("index"))


@app.post("/photos")
def upload():
    file = request.files.get("photo")
    if file and file.filename and session.get("user"):
        save_photo(file)
    return redirect(url_for("index"))


@app.get("/photos/<key>")
def photo(key):
    return send_from_directory(os.path.abspath(UPLOAD_FOLDER), key)


@app.get("/healthz")
def healthz():
    return "ok\n"


# The route contract `statekit phoenix` drives (see statekit/phoenix.py).


@app.post("/api/login")
def api_login():
    name = request.form.get("user", "").strip()[:64]
    if not name:
        abort(400)
    log_in(name)
    return jsonify(user=name, pid=os.getpid())


@app.post("/api/logout")
def api_logout():
    session.clear()
    return jsonify(user=None, pid=os.getpid())


@app.get("/api/session")
def api_session():
    return jsonify(
        user=session.get("user"), values=session.get("values", {}), visits=session.get("visits", 0),
        pid=os.getpid(),
    )


@app.post("/api/session")
def api_session_write():
    values = dict(session.get("values", {}))
    values[request.form["key"]] = request.form["value"]
    session["values"] = values
    return jsonify(ok=True, pid=os.getpid())


@app.post("/api/photos")
def api_upload():
    file = request.files.get("photo")
    if file is None or not file.filename:
        abort(400)
    key = save_photo(file)
    return jsonify(id=key, pid=os.getpid()), 201


@app.get("/api/photos/<key>")
def api_photo(key):
    return send_from_directory(os.path.abspath(UPLOAD_FOLDER), key)


@app.get("/api/shared")
def api_shared():
    return jsonify(
        name="users_count", value=users_count["value"], version=users_count["computed_at"],
        pid=os.getpid(),
    )


app.add_template_filter(db.clock, "clock")
