"""Adversarial review of drain and rolling reload (helper D): interleavings the
other lifecycle tests do not drive, on real ``statekit serve`` processes (loopback
only, every process started here is stopped here)."""

from __future__ import annotations

import os
import re
import signal
import socket
import textwrap
import threading
from pathlib import Path

import pytest
from test_lifecycle_helpers import APP, Load, ServeProcess, request, wait_until

pytestmark = pytest.mark.gunicorn

HANGING_IMPORT_APP = textwrap.dedent(
    """
    import os, time
    if os.path.exists("hang"):  # created by the test: later workers never finish importing
        time.sleep(60)
    """
) + APP


def _alive(pid: int) -> bool:
    """Whether *pid* runs (a zombie the master has not reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_a_successor_that_never_becomes_ready_is_ended_and_the_old_worker_serves_on(tmp_path: Path) -> None:
    """A reload whose new worker hangs while importing the app: after
    STATEKIT_READY_TIMEOUT the reload is aborted, the old worker keeps serving, and
    the hung worker is ended at once (it holds no request), not left loading for
    gunicorn's worker timeout (30 s) and then starting to serve beside the old one."""
    srv = ServeProcess(tmp_path, "--workers", "1", "--pre-stop-delay", "0", "--graceful-timeout", "5",
                       env={"STATEKIT_READY_TIMEOUT": "1.5"}, app_source=HANGING_IMPORT_APP)
    with srv:
        srv.wait_ready(1)
        wait_until(lambda: "statekit: worker" in srv.log() and " ready " in srv.log(), 30, "ready")
        before = set(srv.workers())
        (tmp_path / "hang").write_text("")
        srv.signal(signal.SIGHUP)
        wait_until(lambda: "not ready within" in srv.log(), 20, "the ready timeout")
        hung = [int(p) for p in re.findall(r"new worker (\d+) not ready", srv.log())]
        assert len(hung) == 1, srv.log()
        wait_until(lambda: not _alive(hung[0]), 5, f"the hung worker {hung[0]} to be ended")
        # the master logs the abort, and reaps the worker, after the kill: waited for
        # (the log was read before the master wrote it, 1 run of 2 under load here)
        wait_until(lambda: "rolling reload aborted" in srv.log(), 10, "the reload's abort logged")
        wait_until(lambda: set(srv.workers()) == before, 10, "the old worker alone")
        assert request(srv.port, "/")[0] == 200
        os.unlink(tmp_path / "hang")


def _exchange(sock: socket.socket, path: str) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a kept-alive connection, its response read whole."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_a_kept_alive_connection_sending_its_next_request_during_the_drain(tmp_path: Path,
                                                                           interface: str) -> None:
    """A client whose connection was kept alive before SIGTERM sends its next request
    during the pre-stop delay (mode reject): it gets the 503 with Retry-After and
    ``Connection: close``, then the server closes the connection cleanly (EOF, not a
    reset), and the report counts the rejection."""
    from test_asgi_serve import ASGI_APP

    srv = ServeProcess(tmp_path, "--workers", "1", "--pre-stop-delay", "3", "--graceful-timeout", "5",
                       "--interface", interface, app_source=ASGI_APP if interface == "asgi" else APP)
    with srv:
        srv.wait_ready(1)
        wait_until(lambda: " ready " in srv.log(), 30, "the worker ready")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            status, headers, _ = _exchange(sock, "/")
            assert status == 200 and headers.get("connection", "keep-alive").lower() != "close"
            srv.signal(signal.SIGTERM)
            wait_until(lambda: "statekit: draining" in srv.log(), 10, "the drain")
            status, headers, body = _exchange(sock, "/")
            assert (status, headers.get("connection"), headers.get("x-statekit-drain")) == \
                (503, "close", "reject"), (headers, body)
            assert headers["retry-after"] == "1"
            assert sock.recv(1) == b""  # closed by the server, after the answer
        assert srv.wait(20) == 0
    assert re.search(r"rejected=1 force_killed=0 lost_in_flight=0", srv.log()), srv.log()


SLOW_IMPORT_APP = textwrap.dedent(
    """
    import os, time
    if os.path.exists("slow"):  # created by the test: later workers take a while to import
        time.sleep(1.0)
    """
) + APP


def test_a_reload_asked_for_while_a_reload_is_under_way(tmp_path: Path) -> None:
    """A second SIGHUP while the first reload waits for a successor: the first
    reload finishes, then the second replaces every worker again (it may carry newer
    code), one at a time; no request fails and at no point do fewer workers serve
    than configured (every exit follows one more ready than before it)."""
    srv = ServeProcess(tmp_path, "--workers", "2", "--graceful-timeout", "5", app_source=SLOW_IMPORT_APP)
    with srv:
        srv.wait_ready(2)
        wait_until(lambda: len(re.findall(r"statekit: worker \d+ ready", srv.log())) == 2, 30, "ready")
        first = set(srv.workers())
        (tmp_path / "slow").write_text("")
        with Load(srv.port, threads=3) as load:
            srv.signal(signal.SIGHUP)
            wait_until(lambda: len(srv.workers()) == 3, 10, "the first successor forked")
            srv.signal(signal.SIGHUP)  # the first reload is waiting for that successor
            wait_until(lambda: srv.log().count("rolling reload done") == 2, 30, "both reloads")
            wait_until(lambda: len(srv.workers()) == 2, 10, "the replaced workers gone")
        log = srv.log()
        assert request(srv.port, "/")[0] == 200
        last = set(srv.workers())
    assert load.failures == [], (load.reasons, log)
    assert not first & last
    order = [("ready", int(a)) if a else ("exit", int(b))
             for a, b in re.findall(r"statekit: worker (\d+) ready|Worker exiting \(pid: (\d+)\)", log)]
    assert sum(kind == "ready" for kind, _ in order) == 2 + 2 * 2, order
    for idx, (kind, _pid) in enumerate(order):
        if kind == "exit":
            readies = sum(1 for k, _ in order[:idx] if k == "ready")
            assert readies >= 2 + sum(1 for k, _ in order[:idx + 1] if k == "exit"), order


def test_asgi_sigterm_twice_then_the_graceful_timeout_exceeded(tmp_path: Path) -> None:
    """ASGI (the WSGI case has its own test): a request that outlives the graceful
    timeout, and a second SIGTERM during the drain. The second TERM changes nothing
    (no early stop, one report); at the timeout the worker is SIGKILLed, the client's
    request fails (never a 200 it did not get), and the report says so."""
    from test_asgi_serve import ASGI_APP

    sleep = "        await asyncio.sleep("
    source = ASGI_APP.replace(sleep, '        note("request")\n' + sleep)  # noted once in the app
    srv = ServeProcess(tmp_path, "--workers", "1", "--pre-stop-delay", "1", "--graceful-timeout", "2",
                       "--interface", "asgi", app_source=source)
    out: list[object] = []
    with srv:
        srv.wait_ready(1)
        wait_until(lambda: " ready " in srv.log(), 30, "the worker ready")

        def slow() -> None:
            try:
                out.append(request(srv.port, "/sleep/30", timeout=20)[0])
            except Exception as e:  # noqa: BLE001 -- the failure is the outcome looked at
                out.append(e)

        client = threading.Thread(target=slow, daemon=True)
        client.start()
        wait_until(lambda: "request" in (tmp_path / "lifespan.log").read_text(), 10, "the request in the app")
        srv.signal(signal.SIGTERM)
        wait_until(lambda: "statekit: draining" in srv.log(), 10, "the drain")
        srv.signal(signal.SIGTERM)
        assert srv.wait(20) == 0
        client.join(20)
        log = srv.log()
    assert len(out) == 1 and not isinstance(out[0], int), out
    assert log.count("statekit: shutdown:") == 1, log
    assert re.search(r"in_flight_at_term=1 completed=0 rejected=0 force_killed=1 lost_in_flight=1", log), log
    # the kill is explained before gunicorn's "was sent SIGKILL! Perhaps out of memory?",
    # which comes only if the master reaps the worker before it exits (50 ms after the
    # kill: a loaded machine's worker took longer to die, 1 run of 5 here, no line)
    killed = re.search(r"statekit: worker (\d+) still running after the graceful timeout \(2s\): SIGKILL, "
                       r"1 requests in flight lost", log)
    assert killed, log
    reaped = log.find(f"Worker (pid:{killed[1]}) was sent SIGKILL")
    assert reaped == -1 or log.index(killed[0]) < reaped, log


STREAM_WSGI = APP.replace("def app(environ, start_response):\n", '''def app(environ, start_response):
    if environ["PATH_INFO"] == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (time.sleep(0.25 if i else 0) or f"chunk{i};".encode() for i in range(10))
''')
assert "/stream" in STREAM_WSGI
STREAM_ASGI = textwrap.dedent(
    """
    import asyncio
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    async def chunks():
        for i in range(10):
            if i:
                await asyncio.sleep(0.25)
            yield f"chunk{i};".encode()

    async def stream(request):
        return StreamingResponse(chunks(), media_type="text/plain")

    app = Starlette(routes=[Route("/stream", stream)])
    """
)


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_a_streaming_response_in_flight_through_the_drain_and_the_stop(tmp_path: Path,
                                                                       interface: str) -> None:
    """A response whose first chunk left before SIGTERM and whose last leaves after
    the pre-stop delay, once the worker itself was told to stop: the client gets the
    whole body and its end, and the report counts it completed."""
    source = STREAM_ASGI if interface == "asgi" else STREAM_WSGI
    srv = ServeProcess(tmp_path, "--workers", "1", "--pre-stop-delay", "0.5", "--graceful-timeout", "10",
                       "--interface", interface, app_source=source)
    with srv:
        srv.wait_ready(1)
        wait_until(lambda: " ready " in srv.log(), 30, "the worker ready")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            while b"chunk0;" not in data:
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
            srv.signal(signal.SIGTERM)
            while chunk:
                chunk = sock.recv(65536)
                data += chunk
        assert srv.wait(20) == 0
        log = srv.log()
    body = b"".join(data.partition(b"\r\n\r\n")[2].split(b"\r\n")[1::2])  # chunked: size, data, ...
    assert body == b"".join(f"chunk{i};".encode() for i in range(10)), data
    assert data.endswith(b"0\r\n\r\n"), data
    assert re.search(r"in_flight_at_term=1 completed=1 rejected=0 force_killed=0 lost_in_flight=0", log), log


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_sigterm_sent_to_the_whole_process_group_still_drains(tmp_path: Path, interface: str) -> None:
    """systemd's default KillMode=control-group, dumb-init, ``kill -TERM -PGID`` and
    Ctrl-\\ in a shell send SIGTERM to the master and every worker at once. The
    workers must still serve the drain (a request during the pre-stop delay gets the
    503 with Connection: close, readiness 503), not stop accepting at once and leave
    new connections in the listener's queue to be reset when the master closes it."""
    from test_asgi_serve import ASGI_APP

    srv = ServeProcess(tmp_path, "--workers", "1", "--pre-stop-delay", "2", "--graceful-timeout", "5",
                       "--interface", interface, app_source=ASGI_APP if interface == "asgi" else APP)
    with srv:
        srv.wait_ready(1)
        wait_until(lambda: " ready " in srv.log(), 30, "the worker ready")
        (worker,) = srv.workers()
        srv.signal(signal.SIGTERM)
        os.kill(worker, signal.SIGTERM)  # as a signal to the process group does
        wait_until(lambda: "statekit: draining" in srv.log(), 10, "the drain")
        wait_until(lambda: "SIGTERM sent to the process group" in srv.log(), 5, "the worker to stay")
        status, headers, _ = request(srv.port, "/", timeout=5)
        assert (status, headers.get("x-statekit-drain")) == (503, "reject"), srv.log()
        assert request(srv.port, "/readyz", timeout=5)[0] == 503
        assert srv.wait(20) == 0
        log = srv.log()
    assert re.search(r"rejected=1 force_killed=0 lost_in_flight=0", log), log



#: holding its start while the file "hold" exists, after creating "loading"
HOLD = """if os.path.exists("hold"):
    open("loading", "w").close()
    while os.path.exists("hold"):
        time.sleep(0.02)
"""


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_a_successor_told_to_stop_while_starting_is_not_ready(tmp_path: Path, interface: str) -> None:
    """A reload's new worker that gets SIGTERM while it starts (the gthread worker
    importing the app, the uvicorn worker running its lifespan startup) finishes
    starting, then exits: it must not report ready on the way, or the master stops
    the old worker too and nothing serves. The reload is aborted instead."""
    from test_asgi_serve import ASGI_APP

    if interface == "asgi":  # held in the lifespan startup, on the loop (time.sleep is fine here)
        hold = textwrap.indent(HOLD, "    ")
        source = "import time\n" + ASGI_APP.replace('    note("startup")\n', '    note("startup")\n' + hold)
    else:  # held while importing the app
        source = "import os, time\n" + HOLD + APP
    srv = ServeProcess(tmp_path, "--workers", "1", "--graceful-timeout", "5", "--interface", interface,
                       app_source=source)
    with srv:
        srv.wait_ready(1)
        wait_until(lambda: " ready " in srv.log(), 30, "the worker ready")
        before = set(srv.workers())
        (tmp_path / "hold").write_text("")
        srv.signal(signal.SIGHUP)
        wait_until(lambda: (tmp_path / "loading").exists(), 10, "the successor starting")
        (successor,) = set(srv.workers()) - before
        os.kill(successor, signal.SIGTERM)
        os.unlink(tmp_path / "hold")
        wait_until(lambda: "rolling reload aborted" in srv.log() or "rolling reload done" in srv.log(), 15,
                   "the reload's end")
        log = srv.log()
        assert "rolling reload aborted" in log, log
        assert set(srv.workers()) == before
        assert request(srv.port, "/")[0] == 200
