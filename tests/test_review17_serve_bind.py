"""``statekit serve --bind`` on an address it cannot listen on (review 17).

Review 16 made a busy port one line at once (exit 2) instead of gunicorn's five
1 s retries. Every TCP address goes through the same check: it binds the exact address
given as gunicorn will (SO_REUSEADDR, an IPv6 address on an IPv6 socket), then releases
it. A busy wildcard (``0.0.0.0``, ``[::]``) or the machine's own non-loopback address
was already said at once (pinned here). An address this machine does not have went
through the five retries (``Invalid address``, exit 1 after ~5 s): it is said at once
too. ``unix:`` and ``fd://`` binds keep gunicorn's own handling.

Nothing is sent anywhere: the busy addresses are held by sockets this test opens and
never connects to; the address of the machine is found by a UDP ``connect`` (a route
lookup, no packet).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_lifecycle_helpers import APP
from test_review15_newcomer import _one_line_usage_error, _run
from test_review16_serve_startup import GUNICORN_RETRIES, _says_in_use_at_once

from statekit.gunicorn import _bind_refusal

pytestmark = pytest.mark.gunicorn


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A directory with a WSGI ``app.py`` (the check runs before the app is imported)."""
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def _held(family: socket.AddressFamily, host: str) -> socket.socket:
    """A socket listening on *host* (``::``: dual stack, IPv4 too, as gunicorn's own)."""
    try:
        return socket.create_server((host, 0), family=family, dualstack_ipv6=host == "::")
    except OSError as e:
        pytest.skip(f"cannot listen on {host}: {e}")


def _own_address(family: socket.AddressFamily, probe: str) -> str:
    """A non-loopback address of this machine: the source of the route to *probe*
    (a UDP connect sends nothing)."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            host: str = s.getsockname()[0]
    except OSError as e:
        pytest.skip(f"no route, so no non-loopback address to use: {e}")
    if host.startswith("127.") or host == "::1":
        pytest.skip(f"the route's source is loopback ({host})")
    return host


# -- busy: said at once for every address (pinned) ------------------------------------

BUSY = [  # (the held socket's family and host, the --bind given)
    (socket.AF_INET, "0.0.0.0", "0.0.0.0:{port}"),  # noqa: S104 - held, never connected to
    (socket.AF_INET, "127.0.0.1", "0.0.0.0:{port}"),  # noqa: S104
    (socket.AF_INET, "0.0.0.0", "127.0.0.1:{port}"),  # noqa: S104
    (socket.AF_INET, "0.0.0.0", "localhost:{port}"),  # noqa: S104
    (socket.AF_INET6, "::", "[::]:{port}"),
    (socket.AF_INET6, "::", "0.0.0.0:{port}"),  # noqa: S104 - [::] is dual stack on Linux
    (socket.AF_INET, "0.0.0.0", "[::]:{port}"),  # noqa: S104
]


@pytest.mark.parametrize(("family", "host", "bind"), BUSY)
def test_a_busy_wildcard_is_said_at_once(app_dir: Path, family: socket.AddressFamily, host: str,
                                         bind: str) -> None:
    with _held(family, host) as held:
        bind = bind.format(port=held.getsockname()[1])
        _says_in_use_at_once(["serve", "app:app", "--bind", bind, "--pid", ""], app_dir, bind)


@pytest.mark.parametrize(("family", "probe"), [(socket.AF_INET, "192.0.2.1"),
                                               (socket.AF_INET6, "2001:db8::1")])
@pytest.mark.parametrize("held_on", ["own", "wildcard"])
def test_the_machines_own_busy_address_is_said_at_once(app_dir: Path, family: socket.AddressFamily,
                                                       probe: str, held_on: str) -> None:
    own = _own_address(family, probe)
    wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"  # noqa: S104
    with _held(family, own if held_on == "own" else wildcard) as held:
        port = held.getsockname()[1]
        bind = f"[{own}]:{port}" if family == socket.AF_INET6 else f"{own}:{port}"
        _says_in_use_at_once(["serve", "app:app", "--bind", bind, "--pid", ""], app_dir, bind)


# -- an address this machine does not have ---------------------------------------------


@pytest.fixture(params=["203.0.113.7", "2001:db8:17::7"])
def foreign_bind(request: pytest.FixtureRequest) -> Iterator[str]:
    """A documentation address (RFC 5737, 3849) this machine does not have: a bind
    there fails EADDRNOTAVAIL (checked first; a machine that has it, or binds any
    address, skips)."""
    host: str = request.param
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
    except OSError as e:
        if e.errno != errno.EADDRNOTAVAIL:
            pytest.skip(f"{host}: {e}")
    else:
        pytest.skip(f"this machine can bind {host}")
    yield f"[{host}]:8000" if family == socket.AF_INET6 else f"{host}:8000"


def test_an_address_not_of_this_machine_is_said_at_once(app_dir: Path, foreign_bind: str) -> None:
    """Was: 'Invalid address: ...' five times, a second apart, then exit 1."""
    began = time.monotonic()
    out = _run(["serve", "app:app", "--bind", foreign_bind, "--pid", ""], app_dir, timeout=60)
    took = time.monotonic() - began
    _one_line_usage_error(out, "statekit serve", f"{foreign_bind} is not an address of this machine",
                          "--bind")
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Starting gunicorn" not in out.stderr and "Invalid address" not in out.stderr, out.stderr
    assert took < GUNICORN_RETRIES - 1, f"took {took:.1f}s: gunicorn's retries?"
    assert not (app_dir / ".statekit").exists()


def test_an_address_not_of_this_machine_from_statekit_bind(app_dir: Path, foreign_bind: str) -> None:
    out = _run(["serve", "app:app", "--pid", ""], app_dir, env={"STATEKIT_BIND": foreign_bind}, timeout=60)
    line = _one_line_usage_error(out, "statekit serve", f"{foreign_bind} is not an address of this machine")
    assert "STATEKIT_BIND" in line, line


# -- what keeps gunicorn's handling --------------------------------------------------------


@pytest.mark.parametrize("bind", ["unix:/nonexistent-dir-review17/app.sock", "fd://3"])
def test_unix_and_fd_binds_are_not_checked(bind: str) -> None:
    """gunicorn's own: a unix socket's path (it unlinks a stale one), a descriptor."""
    assert _bind_refusal(bind) is None


def test_a_free_address_is_not_refused() -> None:
    assert _bind_refusal("127.0.0.1:0") is None  # any free port: the check's socket released


def _unprivileged_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def _as_a_user() -> list[str]:
    """The command prefix that runs serve as a user without privileges: none when this
    is not root; as root, util-linux's setpriv to nobody (skipped without it)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root, and no setpriv to run serve as another user")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.skipif(_unprivileged_port_start() <= 1, reason="every port is unprivileged here: port 1 binds")
def test_a_privileged_port_is_said_at_once() -> None:
    """Was: 'Permission denied' five times, a second apart, then exit 1. The app in a
    directory the user can read (pytest's tmp_path is root's only)."""
    prefix = _as_a_user()
    with tempfile.TemporaryDirectory(prefix="review17-") as where:
        os.chmod(where, 0o755)  # noqa: S103 - read by nobody, holding only the test app
        (Path(where) / "app.py").write_text(APP)
        began = time.monotonic()
        out = subprocess.run([*prefix, sys.executable, "-m", "statekit", "serve", "app:app", "--bind",
                              "127.0.0.1:1", "--pid", "", "--workers", "1"], cwd=where, capture_output=True,
                             text=True, timeout=60)
        took = time.monotonic() - began
    _one_line_usage_error(out, "statekit serve", "127.0.0.1:1 needs privileges", "--bind")
    assert "Starting gunicorn" not in out.stderr, out.stderr
    assert took < GUNICORN_RETRIES - 1, f"took {took:.1f}s: gunicorn's retries?"
