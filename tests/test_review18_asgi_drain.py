"""Drain on SIGTERM of a Starlette app set up with ``StateKit(app)``, as a user runs
it: under ``statekit serve`` (uvicorn workers) and under plain ``uvicorn app:app``.

What the drain promises (DESIGN.md, the lifecycle): readiness 503 at once,
``Connection: close`` on the responses given during the drain (a kept-alive
connection's next request, the response of a request in flight at the signal), the
requests in flight finish, and new connections are refused only once the drain is
over. ``test_asgi_serve`` covers readiness, the rejection of new requests and the
in-flight request's status under ``statekit serve``; this file adds the kept-alive
connection and the in-flight response's ``Connection: close``, the listener kept
open through the pre-stop delay, and all of it under plain uvicorn.

Real processes on loopback, every one started here stopped here by pid; the held
request is released by a file, not by a sleep, and every wait is bounded.
"""

from __future__ import annotations

import http.client
import signal
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_lifecycle_helpers import ServeProcess, request, wait_until

from statekit.embedded import free_port

pytestmark = pytest.mark.gunicorn

#: seconds of pre-stop delay: long enough for the checks made during the drain on a
#: loaded machine (a few loopback requests), short enough for the suite
DELAY = 8.0

#: the app: /hold answers once the file ``release`` exists (60 s at most), after
#: writing ``held`` (the app has the request); anything else answers its pid
APP = textwrap.dedent(
    """
    import asyncio, os
    from pathlib import Path
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette_statekit import StateKit

    async def hold(request):
        Path("held").write_text(str(os.getpid()))
        for _ in range(1200):
            if Path("release").exists():
                return PlainTextResponse("released")
            await asyncio.sleep(0.05)
        return PlainTextResponse("never released", status_code=500)

    async def hello(request):
        return PlainTextResponse(str(os.getpid()))

    app = Starlette(routes=[Route("/hold", hold), Route("/{p:path}", hello)])
    StateKit(app, sessions_enabled=False, cache_enabled=False, broadcast_enabled=False,
             blobs_enabled=False)
    """
)


def refused(port: int) -> bool:
    """Whether a new connection to *port* is refused (the listener closed)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except OSError:  # a full backlog or a slow accept: not refused
        return False
    return False


def held_request(port: int, out: list[Any]) -> threading.Thread:
    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=90)
        try:
            conn.request("GET", "/hold")
            resp = conn.getresponse()
            out.append((resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()))
        except Exception as e:  # noqa: BLE001 -- reported by the assertion on out
            out.append(e)
        finally:
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def drain_with_a_request_held(srv: ServeProcess, tmp_path: Path) -> None:
    """SIGTERM *srv* while a request is held in the app and a kept-alive connection is
    open, then check every promise of the drain (the module docstring)."""
    port = srv.port
    wait_until(lambda: request(port, "/readyz", timeout=2)[0] == 200, 30, "the server to be ready")
    kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        kept.request("GET", "/before")
        first = kept.getresponse()
        first.read()
        assert first.status == 200 and first.getheader("connection") != "close"
        out: list[Any] = []
        thread = held_request(port, out)
        wait_until(lambda: (tmp_path / "held").exists(), 30, "the app to hold the request")
        signalled = time.monotonic()
        srv.signal(signal.SIGTERM)

        # a probe on a new connection: accepted and answered 503 (the signal is handled
        # on the server's loop, so one probe may come first)
        wait_until(lambda: request(port, "/readyz", timeout=10)[0] == 503, 10, "readiness 503")
        kept.request("GET", "/during")
        during = kept.getresponse()
        during.read()
        assert during.status == 503 and during.getheader("connection") == "close"
        assert during.getheader("retry-after") == "1"

        wait_until(lambda: refused(port), DELAY + 30, "new connections to be refused")
        assert time.monotonic() - signalled >= DELAY  # only after the pre-stop delay
        assert thread.is_alive() and not out  # still in flight when the listener closed
        (tmp_path / "release").write_text("")
        thread.join(30)
        assert out and not isinstance(out[0], Exception), out
        status, headers, body = out[0]
        assert (status, body) == (200, b"released")
        assert headers.get("connection") == "close"  # answered during the drain
        srv.wait(30)  # exits once the held request is done
    finally:
        kept.close()


def test_statekit_serve_asgi_drain_closes_kept_alive_and_in_flight_connections(tmp_path: Path) -> None:
    with ServeProcess(tmp_path, "--workers", "1", "--pre-stop-delay", str(DELAY), app_source=APP) as srv:
        drain_with_a_request_held(srv, tmp_path)
        assert srv.proc.returncode == 0
        assert "StatekitUvicornWorker" in srv.log()


def test_plain_uvicorn_drains_on_sigterm_as_statekit_serve_does(tmp_path: Path) -> None:
    """``uvicorn app:app`` with the Starlette adapter: the same drain, the pre-stop delay
    from ``STATEKIT_PRE_STOP_DELAY``. uvicorn alone closes its listener at SIGTERM (a
    probe or a new request is refused at once, not answered 503) and answers a
    kept-alive connection's next request 200 as if nothing happened."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port)]
    with ServeProcess(tmp_path, command=command, port=port, app_source=APP,
                      env={"STATEKIT_PRE_STOP_DELAY": str(DELAY)}) as srv:
        drain_with_a_request_held(srv, tmp_path)
        assert srv.proc.returncode in (0, -signal.SIGTERM), srv.log()  # uvicorn re-raises the signal
        log = srv.log()
    assert "draining" in log, log


def test_a_pre_stop_delay_that_is_no_number_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read when the app is set up (``StateKit(app)``), not at the first SIGTERM."""
    from starlette.applications import Starlette

    from starlette_statekit import StateKit
    from statekit.errors import ConfigError

    monkeypatch.setenv("STATEKIT_PRE_STOP_DELAY", "soon")
    with pytest.raises(ConfigError, match="STATEKIT_PRE_STOP_DELAY"):
        StateKit(Starlette(), sessions_enabled=False, cache_enabled=False, broadcast_enabled=False,
                 blobs_enabled=False)
    monkeypatch.setenv("STATEKIT_PRE_STOP_DELAY", "0.5")
    app = Starlette()
    StateKit(app, sessions_enabled=False, cache_enabled=False, broadcast_enabled=False, blobs_enabled=False)
    assert app.state.statekit.lifecycle.pre_stop_delay == 0.5
