"""Sessions under real gunicorn workers: concurrency, rotation under load, outages.

Each test runs a small Flask app under ``.venv/bin/gunicorn`` (2 workers x 4 threads)
on a free loopback port, with its own private Redis, and drives it with concurrent
HTTP clients that share one session cookie.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from statekit.embedded import RedisServer, free_port

pytestmark = [pytest.mark.gunicorn, pytest.mark.redis]

GUNICORN = Path(sys.executable).parent / "gunicorn"
CLIENTS, N = 4, 25
ALIAS_WINDOW = 4

APP = textwrap.dedent('''
    import time

    from flask import Flask, jsonify, session
    from flask_statekit import StateKit, get_state

    app = Flask(__name__)
    app.config["SECRET_KEY"] = "gunicorn-sessions-secret-0123456789"
    StateKit(app)

    @app.get("/get")
    def get():
        return jsonify(dict(session))

    @app.post("/start")
    def start():
        session["owner"] = "me"
        return "ok"

    @app.post("/own/<key>")
    def own(key):
        session[key] = session.get(key, 0) + 1   # read-modify-write of this client's key
        return str(session[key])

    @app.post("/mine/<key>")
    def mine(key):
        loaded = dict(session)   # what this request loaded, before its write
        time.sleep(0.005)        # a load and a save some way apart: in flight at a login
        session[key] = session.get(key, 0) + 1
        return jsonify(owner=loaded.get("owner"), user=loaded.get("_user_id"), value=session[key])

    @app.post("/incr")
    def incr():
        return str(session.incr("shared"))

    @app.post("/login/<user>")
    def login(user):
        session.rotate()
        session["_user_id"] = user
        return "ok"

    @app.post("/revoke/<user>")
    def revoke(user):
        return str(get_state().sessions.revoke_user(user))
''')


class Gunicorn:
    def __init__(self, tmp: Path, redis_url: str, **env: str) -> None:
        (tmp / "sessions_app.py").write_text(APP)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full_env = dict(os.environ, STATEKIT_SESSION_URL=redis_url, STATEKIT_SESSION_COOKIE_SECURE="0",
                        STATEKIT_CACHE_ENABLED="0", STATEKIT_BROADCAST_ENABLED="0", **env)  # sessions only
        self.log = open(tmp / "gunicorn.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(  # noqa: S603 - our own command line
            [str(GUNICORN), "--workers", "2", "--threads", "4", "--worker-class", "gthread",
             "--bind", f"127.0.0.1:{self.port}", "--graceful-timeout", "5", "--timeout", "30",
             "--chdir", str(tmp), "sessions_app:app"],
            stdout=self.log, stderr=subprocess.STDOUT, env=full_env, cwd=tmp)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                requests.get(self.base + "/get", timeout=5)
                return
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise AssertionError("gunicorn did not start:\n" + (tmp / "gunicorn.log").read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture(params=["0", "on"], ids=["plain", "near-cache"])
def gunicorn(request: pytest.FixtureRequest, tmp_path: Path,
             durable_redis: RedisServer) -> Iterator[Gunicorn]:
    """The app under gunicorn, without and with the session near cache (there each
    client's next request, often served by the other worker, must see its last
    write: read-your-writes across processes)."""
    # 2 s: concurrent clients all answer 200 on a loaded machine (0.5 s could fire on a
    # healthy server); the kill test's connections are refused at once
    g = Gunicorn(tmp_path, durable_redis.url + "?socket_timeout=2&socket_connect_timeout=2",
                 STATEKIT_SESSION_ALIAS_WINDOW=str(ALIAS_WINDOW), STATEKIT_SESSION_NEAR_CACHE=request.param)
    yield g
    g.stop()


def cookie_from(resp: requests.Response) -> str:
    value = resp.cookies.get("session")
    assert value, resp.headers
    return str(value)


def post(g: Gunicorn, path: str, cookie: str | None) -> requests.Response:
    return requests.post(g.base + path, cookies={"session": cookie} if cookie else None, timeout=10)


def get(g: Gunicorn, cookie: str) -> requests.Response:
    return requests.get(g.base + "/get", cookies={"session": cookie}, timeout=10)


def hammer(g: Gunicorn, cookie: str, paths: list[str], after: threading.Event | None = None,
           late: list[int] | None = None, n: int = N) -> list[requests.Response]:
    """Every path POSTed *n* times, all clients at once. Requests sent once *after*
    is set are counted in *late*."""
    barrier = threading.Barrier(len(paths))

    def client(path: str) -> list[requests.Response]:
        barrier.wait(10)
        out = []
        with requests.Session() as http:
            for _ in range(n):
                if after is not None and late is not None and after.is_set():
                    late.append(1)
                out.append(http.post(g.base + path, cookies={"session": cookie}, timeout=10))
        return out

    with ThreadPoolExecutor(len(paths)) as pool:
        return [r for rs in pool.map(client, paths) for r in rs]


@pytest.mark.parametrize("clients,n", [
    pytest.param(CLIENTS, N, id="4x25"),
    pytest.param(8, 200, id="8x200-soak", marks=pytest.mark.slow),
])
def test_concurrent_clients_lose_no_updates(gunicorn: Gunicorn, clients: int, n: int) -> None:
    """The soak variant runs with ``--soak`` (see conftest.py)."""
    cookie = cookie_from(post(gunicorn, "/start", None))
    responses = hammer(gunicorn, cookie, [f"/own/k{i}" for i in range(clients)], n=n)
    assert all(r.status_code == 200 for r in responses)
    assert all("session" not in r.cookies for r in responses)  # the cookie never changes
    data = get(gunicorn, cookie).json()
    assert {k: data[k] for k in data if k.startswith("k")} == {f"k{i}": n for i in range(clients)}
    assert data["owner"] == "me"

    responses = hammer(gunicorn, cookie, ["/incr"] * clients, n=n)
    assert all(r.status_code == 200 for r in responses)
    assert get(gunicorn, cookie).json()["shared"] == clients * n


def test_rotation_under_load(gunicorn: Gunicorn) -> None:
    """Clients hammer the session with the pre-login cookie while another request
    logs in. No request with the old cookie ever reads the logged-in state (no
    session fixation): those that loaded the session after the rotation got a
    fresh, anonymous one. Every write of a request that loaded it before (those in
    flight at the login write through the alias) landed in the new session: none lost, none failed."""
    old = cookie_from(post(gunicorn, "/start", None))
    rotated: dict[str, Any] = {}

    def rotate_midway() -> None:
        time.sleep(0.05)
        rotated["resp"] = post(gunicorn, "/login/alice", old)

    def client(key: str) -> list[dict[str, Any]]:
        barrier.wait(10)
        out = []
        for _ in range(N):
            resp = post(gunicorn, f"/mine/{key}", old)  # always the old cookie, never a new one
            assert resp.status_code == 200, resp.text
            out.append(resp.json())
        return out

    barrier = threading.Barrier(CLIENTS)
    t = threading.Thread(target=rotate_midway)
    t.start()
    keys = [f"k{i}" for i in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = dict(zip(keys, pool.map(client, keys), strict=True))
    t.join(10)
    new = cookie_from(rotated["resp"])
    assert new != old
    answers = [a for rs in results.values() for a in rs]
    assert all(a["user"] is None for a in answers)  # the old cookie never read alice's session
    before = {k: [a for a in rs if a["owner"] == "me"] for k, rs in results.items()}
    after = [a for a in answers if a["owner"] is None]
    assert after and any(before.values()), "the rotation did not happen mid-run; nothing was tested"
    assert all(a["value"] == 1 for a in after)  # each a fresh session of its own
    data = get(gunicorn, new).json()
    assert data["_user_id"] == "alice" and data["owner"] == "me"
    for k, rs in before.items():  # every write of a request that loaded the session before
        assert [a["value"] for a in rs] == list(range(1, len(rs) + 1))
        assert data.get(k, 0) == len(rs)
    assert get(gunicorn, old).json() == {}  # the old id stays dead, in and after the alias window
    time.sleep(ALIAS_WINDOW + 0.5)
    assert get(gunicorn, old).json() == {}
    # revoked sessions do not come back, even with writes in flight
    assert post(gunicorn, "/revoke/alice", None).text == "1"
    after_revoke = hammer(gunicorn, new, ["/own/late"] * 2)
    assert all(r.status_code == 200 for r in after_revoke)
    assert get(gunicorn, new).json() == {}


def test_redis_stopped_mid_test(gunicorn: Gunicorn, durable_redis: RedisServer) -> None:
    cookie = cookie_from(post(gunicorn, "/start", None))
    for _ in range(3):
        post(gunicorn, "/own/n", cookie)
    durable_redis.kill()
    for resp in (get(gunicorn, cookie), post(gunicorn, "/own/n", cookie), post(gunicorn, "/incr", cookie)):
        assert resp.status_code == 503
        assert resp.headers["Retry-After"] == "5"
        assert "Set-Cookie" not in resp.headers
        assert "Service Unavailable" in resp.text
    durable_redis.start()  # same port, AOF replayed
    resp = get(gunicorn, cookie)
    assert resp.status_code == 200 and resp.json() == {"owner": "me", "n": 3}
    assert "Set-Cookie" not in resp.headers
    assert post(gunicorn, "/own/n", cookie).text == "4"
