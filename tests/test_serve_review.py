"""``statekit serve`` review (helper T): what earlier reviews noticed and left, on
real processes (loopback only; every process started here is stopped here). Each
wait is for a file or a log line the processes write, not a sleep."""

from __future__ import annotations

import os
import re
import signal
import textwrap
from pathlib import Path

import pytest
from test_asgi_serve import ASGI_APP
from test_lifecycle_helpers import APP, ServeProcess, wait_until
from test_lifecycle_review12 import HOLD, _alive

pytestmark = pytest.mark.gunicorn

#: the lifespan startup held while the file "hold" exists, after creating "loading";
#: the SIGTERM the worker gets meanwhile is noted in "termed" (then handled by uvicorn)
HELD_STARTUP = ASGI_APP.replace('    note("startup")\n', '    note("startup")\n' + textwrap.indent(
    textwrap.dedent(
        """
        if os.path.exists("hold"):
            import signal, time
            uvicorns = signal.getsignal(signal.SIGTERM)

            def noting(sig, frame):
                open("termed", "w").close()
                uvicorns(sig, frame)

            signal.signal(signal.SIGTERM, noting)
            open("loading", "w").close()
            while os.path.exists("hold"):
                time.sleep(0.02)
        """
    ), "    "))
assert "loading" in HELD_STARTUP


def _reload_held(srv: ServeProcess, tmp_path: Path) -> tuple[int, int]:
    """Serve, then reload while "hold" holds the new worker's start: ``(old, new)``
    pids once the new worker is held."""
    srv.wait_ready(1)
    wait_until(lambda: " ready " in srv.log(), 30, "the worker ready")
    (old,) = srv.workers()
    (tmp_path / "hold").write_text("")
    srv.signal(signal.SIGHUP)
    wait_until(lambda: (tmp_path / "loading").exists(), 10, "the new worker starting")
    (new,) = set(srv.workers()) - {old}
    return old, new


def test_stop_while_a_uvicorn_worker_runs_its_lifespan_startup_runs_its_shutdown(tmp_path: Path) -> None:
    """SIGTERM to the master while the only worker is inside the app's lifespan
    startup (connecting pools, starting a broadcaster): the worker has loaded the
    app, so what its startup opened must be closed by its lifespan shutdown. It was
    SIGKILLed at once like a worker still importing the app: no shutdown ran."""
    (tmp_path / "hold").write_text("")
    srv = ServeProcess(tmp_path, "--workers", "1", "--pre-stop-delay", "0", "--graceful-timeout", "10",
                       "--interface", "asgi", app_source=HELD_STARTUP)
    with srv:
        wait_until(lambda: (tmp_path / "loading").exists(), 30, "the lifespan startup under way")
        (worker,) = srv.workers()
        srv.signal(signal.SIGTERM)
        wait_until(lambda: (tmp_path / "termed").exists() or not _alive(worker), 10,
                   "the master's signal to the worker")
        os.unlink(tmp_path / "hold")
        assert srv.wait(20) == 0
        log = srv.log()
    notes = (tmp_path / "lifespan.log").read_text()
    assert f"shutdown {worker}" in notes, (notes, log)
    assert f"statekit: worker {worker} ready" not in log, log
    assert re.search(r"force_killed=0 lost_in_flight=0", log), log


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_sigterm_during_a_rolling_reload_is_logged_as_a_stop_not_as_a_failure(tmp_path: Path,
                                                                               interface: str) -> None:
    """SIGTERM while a reload waits for a new worker (importing the app, or running
    its lifespan startup): the reload ends and the server stops, as asked. Nothing
    failed, so nothing may be logged at ERROR ("rolling reload aborted", gunicorn's
    "was sent SIGKILL! Perhaps out of memory?"): operators alert on those."""
    if interface == "asgi":
        source = HELD_STARTUP
    else:
        source = "import os, time\n" + HOLD + APP
    srv = ServeProcess(tmp_path, "--workers", "1", "--pre-stop-delay", "0", "--graceful-timeout", "10",
                       "--interface", interface, app_source=source)
    with srv:
        old, new = _reload_held(srv, tmp_path)
        srv.signal(signal.SIGTERM)
        wait_until(lambda: "rolling reload" in srv.log().split("replacing 1 workers", 1)[1], 10,
                   "the reload's end")
        os.unlink(tmp_path / "hold")
        assert srv.wait(20) == 0
        log = srv.log()
    assert "[ERROR]" not in log, log
    assert "rolling reload aborted by a stop request" in log, log
    assert re.search(r"force_killed=0 lost_in_flight=0", log), log
    if interface == "asgi":  # its lifespan startup ran: so does its shutdown
        assert f"shutdown {new}" in (tmp_path / "lifespan.log").read_text()


def test_a_successor_whose_lifespan_startup_outlasts_the_ready_timeout_still_runs_its_shutdown(
    tmp_path: Path
) -> None:
    """A reload's new uvicorn worker still in its lifespan startup at
    STATEKIT_READY_TIMEOUT: the reload is aborted and the old worker serves on, as
    for a hung import, but this worker has loaded the app and its startup has
    opened things: it is told to stop (it ends its startup, never reports ready,
    runs its shutdown), not SIGKILLed."""
    srv = ServeProcess(tmp_path, "--workers", "1", "--pre-stop-delay", "0", "--graceful-timeout", "10",
                       "--interface", "asgi", env={"STATEKIT_READY_TIMEOUT": "1.5"}, app_source=HELD_STARTUP)
    with srv:
        old, new = _reload_held(srv, tmp_path)
        wait_until(lambda: "not ready within" in srv.log(), 20, "the ready timeout")
        os.unlink(tmp_path / "hold")
        wait_until(lambda: not _alive(new), 10, f"the new worker {new} to end")
        assert f"shutdown {new}" in (tmp_path / "lifespan.log").read_text(), srv.log()
        assert "rolling reload aborted" in srv.log()
        assert srv.workers() == [old]
        assert f"statekit: worker {new} ready" not in srv.log()


def test_a_worker_importing_the_app_when_the_whole_group_gets_sigterm_exits_cleanly(tmp_path: Path) -> None:
    """SIGTERM to the process group (systemd, dumb-init) while a gthread worker is
    still importing the app: its own copy of the signal is taken for the group's and
    waits for the master. The master's own SIGTERM, after the pre-stop delay, must
    then end it at once (it holds no request), not find it "already stopping" and
    SIGKILL it (gunicorn: "was sent SIGKILL! Perhaps out of memory?", at ERROR)."""
    (tmp_path / "hold").write_text("")
    # held in the worker only (gunicorn's arbiter sets SERVER_SOFTWARE): serve's own
    # check of the app, a child importing it before gunicorn starts, is not held
    worker_hold = HOLD.replace('if os.path.exists("hold"):',
                               'if os.path.exists("hold") and "SERVER_SOFTWARE" in os.environ:')
    assert worker_hold != HOLD
    srv = ServeProcess(tmp_path, "--workers", "1", "--pre-stop-delay", "0.5", "--graceful-timeout", "10",
                       "--interface", "wsgi", app_source="import os, time\n" + worker_hold + APP)
    with srv:
        wait_until(lambda: (tmp_path / "loading").exists(), 30, "the worker importing the app")
        (worker,) = srv.workers()
        srv.signal(signal.SIGTERM)
        os.kill(worker, signal.SIGTERM)  # as a signal to the process group does
        assert srv.wait(20) == 0
        log = srv.log()
    os.unlink(tmp_path / "hold")
    assert "SIGKILL" not in log, log
    assert "[ERROR]" not in log, log
