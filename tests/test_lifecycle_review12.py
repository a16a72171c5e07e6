"""Adversarial review of drain and rolling reload (helper D): interleavings the
other lifecycle tests do not drive, on real ``statekit serve`` processes (loopback
only, every process started here is stopped here)."""

from __future__ import annotations

import os
import re
import signal
import socket
import textwrap
from pathlib import Path

import pytest
from test_lifecycle_helpers import APP, ServeProcess, request, wait_until

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
        assert "rolling reload aborted" in srv.log()
        assert set(srv.workers()) == before
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
