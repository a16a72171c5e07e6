"""Broadcast acceptance on real gunicorn: two ``statekit serve`` masters x 4 workers.

Each master runs the same broadcaster (``--broadcaster``); the compute function
records its calls in Redis and, after six, fails on purpose so the last good value
stays put and every worker can be asked for it over HTTP.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from statekit.embedded import free_port
from statekit.pytest_plugin import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.gunicorn]

N = 6

JOBS = textwrap.dedent(f'''
    import os
    import redis
    from statekit.broadcast import Broadcaster, current_run

    r = redis.Redis.from_url(os.environ["STATEKIT_REDIS_URL"], socket_timeout=2)
    broadcaster = Broadcaster()

    @broadcaster.every(0.5, name="users_count", lease=1.0)
    def users_count():
        n = r.rpush("calls", f"{{current_run().slot}} {{os.getpid()}}")
        if n > {N}:
            raise RuntimeError("enough: keep the last good value")
        return {{"n": n, "by": os.getpid()}}
''')

APP = textwrap.dedent('''
    import json, os
    from statekit.broadcast import SharedValue

    users_count = SharedValue("users_count", default=None)

    def app(environ, start_response):
        body = json.dumps({"pid": os.getpid(), "master": os.getppid(),
                           "version": users_count.version, "value": users_count.get()}).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body))), ("Connection", "close")])
        return [body]
''')


def get(port: int) -> dict[str, Any] | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return json.loads(resp.read()) if resp.status == 200 else None
    except OSError:
        return None
    finally:
        conn.close()


@pytest.fixture
def masters(tmp_path: Path, redis_url: str) -> Iterator[list[tuple[subprocess.Popen[bytes], int]]]:
    (tmp_path / "bjobs.py").write_text(JOBS)
    (tmp_path / "bapp.py").write_text(APP)
    env = {**os.environ, "STATEKIT_REDIS_URL": redis_url,
           "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    started: list[tuple[subprocess.Popen[bytes], int]] = []
    try:
        for i in range(2):
            port = free_port()
            with open(tmp_path / f"master-{i}.log", "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "statekit", "serve", "bapp:app", "--bind", f"127.0.0.1:{port}",
                     "--workers", "4", "--broadcaster", "bjobs:broadcaster", "--pre-stop-delay", "0"],
                    env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                )
            started.append((proc, port))
        yield started
    finally:
        for proc, _ in started:
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in started:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def test_two_gunicorn_masters_compute_once_per_interval_and_agree(
    masters: list[tuple[subprocess.Popen[bytes], int]], redis_url: str
) -> None:
    r = redis.Redis.from_url(redis_url)
    wait_for(lambda: r.llen("calls") > N + 1, 60, "six computations and a failed seventh")
    calls = [c.decode().split() for c in r.lrange("calls", 0, N - 1)]
    slots = [int(s) for s, _ in calls]
    assert slots == list(range(slots[0], slots[0] + N)), f"not once per interval: {calls}"
    version, data = r.hmget("statekit:bc:{users_count}", "version", "data")
    assert int(version) == N and json.loads(data)["n"] == N
    # ask every worker of both masters (new connection each time) until all 8 answered
    seen: dict[int, dict[str, Any]] = {}
    masters_seen: set[int] = set()

    def all_workers() -> bool:
        for _proc, port in masters:
            answer = get(port)
            if answer is not None:
                seen[answer["pid"]] = answer
                masters_seen.add(answer["master"])
        return len(seen) >= 8

    wait_for(all_workers, 60, "answers from all 8 workers")
    assert masters_seen == {proc.pid for proc, _ in masters}
    assert {a["version"] for a in seen.values()} == {N}, seen
    assert all(a["value"] == json.loads(data) for a in seen.values()), seen
