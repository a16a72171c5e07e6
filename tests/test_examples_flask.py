"""The demo, run the way ``make demo`` runs it: ``statekit dev -- python -m examples.flask_app``."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from statekit.phoenix import make_png

ROOT = Path(__file__).resolve().parent.parent
INTERVAL = 2.0

pytestmark = [pytest.mark.redis, pytest.mark.s3, pytest.mark.gunicorn]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("demo")
    port = _free_port()
    database = tmp / "demo.sqlite3"
    env = {**os.environ, "STATEKIT_BIND": f"127.0.0.1:{port}", "DATABASE_URL": f"sqlite:///{database}",
           "USERS_COUNT_INTERVAL": str(INTERVAL)}
    for var in ("STATEKIT_REDIS_URL", "STATEKIT_BLOBS_URL"):
        env.pop(var, None)
    log = open(tmp / "demo.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        # --pre-stop-delay goes to statekit serve: its 2 s drain only slows the teardown here
        [sys.executable, "-m", "statekit", "dev", "--", sys.executable, "-m", "examples.flask_app",
         "--pre-stop-delay", "0"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp / "demo.log").read_text()
            with contextlib.suppress(requests.RequestException):
                if requests.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            pytest.fail("the demo did not start:\n" + (tmp / "demo.log").read_text())
        yield base, database
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _page(client: requests.Session, base: str) -> dict[str, str]:
    html = client.get(base + "/", timeout=30, headers={"Connection": "close"}).text
    fields = {
        "pid": r'class="pid">PID (\d+)<', "users": r'id="users-count">(\d+)<', "user": r'id="user">([^<]+)<',
        "visits": r'id="visits">(\d+)<',
        "report": r'id="report-origin">\s*computed by PID (\d+ at\s+[\d:]+ UTC)',
    }
    found = {}
    for name, pattern in fields.items():
        m = re.search(pattern, html)
        found[name] = m.group(1) if m else ""
    found["html"] = html
    return found


def test_twenty_requests_many_pids_one_state(demo: tuple[str, Path]) -> None:
    base, _ = demo
    alice = requests.Session()
    assert alice.post(base + "/login", data={"user": "alice"}, timeout=30).status_code == 200
    # wait until the users count published by the broadcaster includes alice
    deadline = time.monotonic() + 30
    while requests.get(base + "/api/shared", timeout=10).json()["value"] != 1:
        if time.monotonic() > deadline:
            pytest.fail("the users count never reached 1")
        time.sleep(0.2)
    pages = [_page(alice, base) for _ in range(20)]
    assert len({p["pid"] for p in pages}) >= 2
    assert {p["users"] for p in pages} == {"1"}
    assert {p["user"] for p in pages} == {"alice"}
    # the session is the same whichever worker serves it: the counter never skips or repeats
    visits = [int(p["visits"]) for p in pages]
    assert visits == list(range(visits[0], visits[0] + 20))
    # the slow report was computed once, by one worker, and served from the shared cache
    assert len({p["report"] for p in pages}) == 1 and pages[0]["report"]


def test_users_count_queried_once_per_interval(demo: tuple[str, Path]) -> None:
    base, database = demo
    start = time.time()
    workers = {_page(requests.Session(), base)["pid"] for _ in range(20)}
    time.sleep(3 * INTERVAL)
    end = time.time()
    with sqlite3.connect(database) as conn:
        rows = conn.execute(
            "SELECT at, pid FROM users_count_log WHERE at BETWEEN ? AND ?", (start, end)
        ).fetchall()
    # four workers, yet one query per interval (a timer per worker would make four) ...
    assert 1 <= len(rows) <= (end - start) / INTERVAL + 1
    # ... made by one process that is not a worker (the broadcaster in the master)
    assert len({pid for _, pid in rows}) == 1
    assert not {str(pid) for _, pid in rows} & workers


def test_photos_upload_and_presigned_url(demo: tuple[str, Path]) -> None:
    base, _ = demo
    bob = requests.Session()
    bob.post(base + "/login", data={"user": "bob"}, timeout=30)
    png = make_png(random.Random(7))
    response = bob.post(base + "/photos", files={"photo": ("holiday.png", png, "image/png")}, timeout=30)
    assert response.status_code == 200
    html = _page(bob, base)["html"]
    urls = re.findall(r'<img src="([^"]+)" alt="holiday.png">', html)
    assert len(urls) == 1
    url = urls[0].replace("&amp;", "&")
    assert url.startswith("http://127.0.0.1:") and "Signature" in url  # presigned, straight from S3
    fetched = requests.get(url, timeout=30)
    assert hashlib.sha256(fetched.content).hexdigest() == hashlib.sha256(png).hexdigest()
    # a non-image is refused, and nothing is stored
    bad = bob.post(base + "/api/photos", files={"photo": ("x.png", b"MZ\x90\x00 not an image", "image/png")},
                   timeout=30)
    assert bad.status_code == 415


def test_log_out_everywhere(demo: tuple[str, Path]) -> None:
    base, _ = demo
    laptop, phone = requests.Session(), requests.Session()
    for device in (laptop, phone):
        device.post(base + "/login", data={"user": "carol"}, timeout=30)
        assert _page(device, base)["user"] == "carol"
    laptop.post(base + "/logout-everywhere", timeout=30)
    assert _page(phone, base)["user"] == ""
    assert _page(laptop, base)["user"] == ""


def test_health_endpoints(demo: tuple[str, Path]) -> None:
    base, _ = demo
    assert requests.get(base + "/healthz", timeout=10).status_code == 200
    ready = requests.get(base + "/readyz", timeout=10)
    assert ready.status_code in (200, 503)
    assert "redis" in ready.json()["checks"]
