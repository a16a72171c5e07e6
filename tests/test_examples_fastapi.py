"""The FastAPI demo (examples/fastapi_app), in-process with httpx.ASGITransport
against the suite's Redis and moto S3: two app objects play two workers (each with
its lifespan, so each runs the broadcaster), and a user's requests go to either.

Checked: health and readiness, login with a rotated session id, session writes seen
by the other worker, the cached report computed once for both, a photo upload stored
in S3 and served through its presigned URL (and a non-image refused with 415), the
users count computed under one lease and the same on both workers, "log out
everywhere".
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from statekit.phoenix import make_png

pytestmark = [pytest.mark.redis, pytest.mark.s3]

PNG = make_png(random.Random(7))
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def demo_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, s3_url: str, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("STATEKIT_REDIS_URL", redis_url)
    monkeypatch.setenv("STATEKIT_BLOBS_URL", s3_url)
    monkeypatch.setenv("STATEKIT_KEY_PREFIX", "demo" + str(random.randrange(10**8)))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/demo.sqlite3")
    monkeypatch.setenv("SECRET_KEY", "fastapi-demo-test")
    for name in ("STATEKIT_CACHE_URL", "STATEKIT_SESSION_URL", "STATEKIT_BROADCAST_URL",
                 "STATEKIT_SECRET_KEYS"):
        monkeypatch.delenv(name, raising=False)
    yield


def cookie(response: httpx.Response) -> str:
    return response.cookies.get("session") or ""


class Browser:
    """One browser whose requests go to either worker: it keeps every cookie the
    app sets (the session id and, with the near cache, its version token
    ``session_v``) and sends them all, as a browser does. Sending the session
    cookie alone would drop the token that makes the next request read this one's
    write on another worker; it would then rely on the invalidation reaching that
    worker first, which under load it may not (a CI run saw the login's copy)."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}

    def headers(self) -> dict[str, str]:
        return {"cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}

    def keep(self, response: httpx.Response) -> httpx.Response:
        for line in response.headers.get_list("set-cookie"):
            name, _, rest = line.partition("=")
            value, _, attributes = rest.partition(";")
            if "max-age=0" in attributes.lower().replace(" ", ""):
                self.cookies.pop(name.strip(), None)
            else:
                self.cookies[name.strip()] = value.strip()
        return response


def test_the_demo_on_two_workers(demo_env: None) -> None:
    from examples.fastapi_app.main import create_app

    workers = [create_app({"users_count_interval": 0.2}) for _ in range(2)]

    async def main() -> dict[str, Any]:
        async with AsyncExitStack() as stack:
            clients = []
            for app in workers:
                await stack.enter_async_context(app.router.lifespan_context(app))
                transport = httpx.ASGITransport(app=app)
                clients.append(await stack.enter_async_context(
                    httpx.AsyncClient(transport=transport, base_url="http://demo")))
            a, b = clients
            assert (await a.get("/healthz")).status_code == 200
            assert (await b.get("/readyz")).status_code == 200, (await b.get("/readyz")).text

            user = Browser()
            page = user.keep(await a.get("/"))
            assert page.status_code == 200 and "Not logged in" in page.text
            before = cookie(page)
            assert before

            login = user.keep(await b.post("/api/login", data={"user": "ada"}, headers=user.headers()))
            assert login.json()["user"] == "ada"
            after = cookie(login)
            assert after and after != before  # rotated on login
            wrote = user.keep(await a.post("/api/session", data={"key": "k", "value": "v"},
                                           headers=user.headers()))
            assert wrote.status_code == 200
            assert "session_v" in user.cookies  # the near cache's version token
            session = (await b.get("/api/session", headers=user.headers())).json()
            assert session["user"] == "ada" and session["values"] == {"k": "v"}

            first = user.keep(await a.get("/", headers=user.headers()))
            second = user.keep(await b.get("/", headers=user.headers()))
            assert "Logged in as <strong id=\"user\">ada</strong>" in second.text
            origin = [p.text.split('id="report-origin">')[1].split("(")[0] for p in (first, second)]
            assert origin[0] == origin[1]  # one computation, served by both workers

            photo = user.keep(await b.post("/api/photos", files={"photo": ("me.png", PNG, "image/png")},
                                           headers=user.headers()))
            assert photo.status_code == 201, photo.text
            found = user.keep(await a.get(f"/api/photos/{photo.json()['id']}", headers=user.headers()))
            assert found.status_code == 307
            async with httpx.AsyncClient() as s3:
                assert (await s3.get(found.headers["location"])).content == PNG
            text = {"photo": ("x.png", b"text", "image/png")}
            refused = user.keep(await a.post("/api/photos", files=text, headers=user.headers()))
            assert refused.status_code == 415
            page = user.keep(await a.get("/", headers=user.headers()))
            assert "me.png" in page.text  # the photo on the page

            shared = []
            for _ in range(200):
                shared = [(await c.get("/api/shared")).json() for c in clients]
                if all(s["value"] == 1 for s in shared) and shared[0]["version"] == shared[1]["version"]:
                    break
                await asyncio.sleep(0.05)
            assert [s["value"] for s in shared] == [1, 1] and shared[0]["version"] == shared[1]["version"]

            held = user.headers()  # another device of ada's, logged in with this session
            user.keep(await b.post("/logout-everywhere", headers=user.headers()))
            assert (await a.get("/api/session", headers=user.headers())).json()["user"] is None
            assert (await b.get("/api/session", headers=held)).json()["user"] is None
            # worker a drops its near copy when the invalidation reaches it (its listener
            # thread; normally well under a millisecond, here bounded by 2 s)
            for _ in range(40):
                if (await a.get("/api/session", headers=held)).json()["user"] is None:
                    break
                await asyncio.sleep(0.05)
            assert (await a.get("/api/session", headers=held)).json()["user"] is None
            counters = [app.state.statekit.broadcaster.counters for app in workers]
            return {"computes": sum(c.get("computes") for c in counters)}

    result = asyncio.run(main())
    assert result["computes"] >= 1
    assert not any(app.state.statekit.broadcaster.running for app in workers)


def test_package_builds_app_lazily(demo_env: None) -> None:
    import examples.fastapi_app as package

    app = package.app
    assert package.app is app
    assert app.state.statekit.features == ["cache", "sessions", "blobs", "broadcast", "lifecycle"]


@pytest.mark.gunicorn
def test_statekit_serve_runs_the_demo(demo_env: None, tmp_path: Path) -> None:
    from test_lifecycle_helpers import ServeProcess

    with ServeProcess(tmp_path / "serve", "--workers", "1", app="examples.fastapi_app:app",
                      env={"PYTHONPATH": str(ROOT)}) as served:
        served.wait_ready(timeout=60)  # /readyz: Redis and S3 answered
        with httpx.Client(base_url=f"http://127.0.0.1:{served.port}", timeout=10) as http:
            assert http.post("/api/login", data={"user": "grace"}).json()["user"] == "grace"
            assert http.get("/api/session").json()["user"] == "grace"
            assert http.get("/api/shared").status_code == 200
    assert "ASGI" in served.log() or "uvicorn" in served.log().lower(), served.log()


@pytest.mark.slow
@pytest.mark.gunicorn
def test_phoenix_on_the_demo_loses_nothing(demo_env: None, tmp_path: Path) -> None:
    """``statekit phoenix`` on the demo under uvicorn workers, kills and reloads:
    nothing acknowledged is lost (the short version: test_the_demo_on_two_workers)."""
    report_file = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "statekit", "phoenix", "examples.fastapi_app:app", "--duration", "10",
         "--kill-every", "1", "--reload-every", "4", "--env", "USERS_COUNT_INTERVAL=1",
         "--env", f"PYTHONPATH={ROOT}", "--json", str(report_file)],
        cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False,
    )
    report = json.loads(report_file.read_text())
    print({k: report[k] for k in ("requests", "failures", "kills", "reloads", "session_writes",
                                  "uploads", "shared_reads")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["interface"] == "asgi" and report["passed"] and not report["unchecked"]
    assert report["kills"] >= 3 and report["reloads"] >= 1
    assert report["session_writes"] > 0 and report["uploads"] > 0 and report["shared_reads"] > 0
    assert report["lost_session_writes"] == report["lost_uploads"] == report["corrupted_uploads"] == 0
    assert report["shared_disagreements"] == 0
