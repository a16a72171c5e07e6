"""The readiness checks run once as an ASGI worker starts (its lifespan startup), so
the first ``/readyz`` costs what every probe costs.

Before, the first probe built the checks' clients (Redis, and boto3's S3 client: 0.8 s
measured under load, more than the 0.5 s default budget): right after a start or a
rolling reload, a probe failed or answered 503. A Starlette app with ``StateKit(app)``
on a real Redis and a moto S3 server, served by plain uvicorn and by ``statekit
serve``; every process started here is stopped here, by pid.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_lifecycle_helpers import ServeProcess, request, wait_until

from statekit.asgi import LifecycleMiddleware
from statekit.embedded import free_port
from statekit.lifecycle import Lifecycle

#: the app: /built says which readiness clients this process has (the S3 probe's
#: backend, the sync Redis client the check PINGs with: nothing else of the app uses a
#: sync Redis client); a check "client" whose first run takes longer than the budget,
#: as boto3's first client does under load
APP = textwrap.dedent(
    """
    import os, time
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette_statekit import StateKit, get_state
    import statekit.blobs.s3 as s3
    import statekit.redis as redis

    async def built(request):
        pid = os.getpid()
        return JSONResponse({"s3": any(k[0] == pid for k in s3._probes),
                             "redis": any(k[0] == pid for k in redis._clients)})

    app = Starlette(routes=[Route("/built", built)])
    StateKit(app, sessions_enabled=False, broadcast_enabled=False)

    first = []

    def slow_first_build(timeout):
        if not first:
            time.sleep(3 * timeout)  # building the client
            first.append(True)

    get_state(app).lifecycle.add_check("client", slow_first_build)
    """
)


def commands(how: str, port: int) -> list[str] | None:
    if how == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port)]
    return None  # statekit serve (uvicorn workers)


def listening(srv: ServeProcess) -> bool:
    """Whether *srv* answers (uvicorn listens once the lifespan startup is done; statekit
    serve's master listens at once and its worker accepts once started)."""
    if srv.proc.poll() is not None:
        raise AssertionError(f"server exited early:\n{srv.log()}")
    return request(srv.port, "/healthz", timeout=30)[0] == 200


@pytest.mark.redis
@pytest.mark.s3
@pytest.mark.gunicorn
@pytest.mark.parametrize("how", ["uvicorn", "statekit serve"])
def test_the_first_probe_finds_the_clients_built(tmp_path: Path, redis_url: str, s3_url: str,
                                                 how: str) -> None:
    port = free_port()
    env = {"STATEKIT_REDIS_URL": redis_url, "STATEKIT_BLOBS_URL": s3_url, "STATEKIT_READY_BUDGET": "2"}
    with ServeProcess(tmp_path, "--workers", "1", command=commands(how, port), port=port, app_source=APP,
                      env=env) as srv:
        wait_until(lambda: listening(srv), 60, "the server to answer")
        status, _, body = request(srv.port, "/built", timeout=30)
        assert status == 200 and json.loads(body) == {"s3": True, "redis": True}, body
        started = time.monotonic()
        status, _, body = request(srv.port, "/readyz", timeout=30)
        took = time.monotonic() - started
        print(f"{how}: first /readyz {status} in {took * 1000:.1f} ms")  # noqa: T201 -- the measure, with -s
        assert status == 200, body  # "client: no answer within 2s" before
        assert json.loads(body)["checks"] == {"redis": "ok", "blobs": "ok", "client": "ok"}


@pytest.mark.gunicorn
def test_a_redis_that_is_down_does_not_fail_the_start(tmp_path: Path) -> None:
    """Nothing listens at the Redis URL: uvicorn starts all the same, and the first
    probe answers 503 at once with the reason."""
    port = free_port()
    env = {"STATEKIT_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "STATEKIT_BLOBS_ENABLED": "0"}
    source = APP.replace('get_state(app).lifecycle.add_check("client", slow_first_build)', "")
    command = commands("uvicorn", port)
    with ServeProcess(tmp_path, command=command, port=port, app_source=source, env=env) as srv:
        wait_until(lambda: listening(srv), 60, "the server to answer")
        assert "Application startup complete" in srv.log()
        status, _, body = request(srv.port, "/readyz", timeout=30)
        assert status == 503, body
        reason = json.loads(body)["checks"]["redis"]
        assert reason != "ok" and "refused" in reason.lower(), reason


def test_warm_waits_past_the_budget_and_its_result_is_the_first_probes() -> None:
    """warm() gives a check's first run more than the budget (its client's build), and
    the probe that follows within cache_ttl takes that result; a check that fails is a
    503 with its reason, not an error."""
    calls: list[float] = []

    def slow_first(timeout: float) -> None:
        calls.append(timeout)
        if len(calls) == 1:
            time.sleep(1.0)

    def down(timeout: float) -> None:
        raise ConnectionRefusedError("redis at 127.0.0.1:1 refused the connection")

    lc = Lifecycle(checks={"slow": slow_first, "down": down}, budget=0.2, cache_ttl=60)
    ok, results = lc.warm()
    assert not ok and results["slow"] == "ok" and "refused" in results["down"]
    assert calls == [0.2]  # each check is given the budget, as a probe gives it
    assert lc.readiness() == (503, {"status": "unavailable", "checks": results})
    assert calls == [0.2]  # answered from the warm-up


def test_a_lifespan_the_app_does_not_support_still_warms_first() -> None:
    """An ASGI app without lifespan support (Django's handler raises at a lifespan
    scope): the server serves once that error is raised, so the checks' first run
    ends before it."""
    done = threading.Event()

    def check(timeout: float) -> None:
        time.sleep(0.3)
        done.set()

    async def django_like(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("Django can only handle ASGI/HTTP connections, not lifespan.")

    mw = LifecycleMiddleware(django_like, Lifecycle(checks={"c": check}))

    async def receive() -> Any:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        raise AssertionError(message)

    with pytest.raises(ValueError, match="not lifespan"):
        asyncio.run(mw({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    assert done.is_set()
