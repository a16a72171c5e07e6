"""Review 14 of ``statekit dev -- COMMAND`` and ``statekit reload``, on the real
``statekit`` console script.

dev: a command that is a shell or a launcher that forks (``sh -c "python -m app; ..."``,
a make target) has grandchildren; dev must stop the command's whole process group
(forwarded signal, a bounded wait, then SIGKILL), not only its direct child, and a
command that stops gracefully on SIGINT must get the time to do so.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path

import pytest
from test_cli_dev import STATEKIT, Dev, alive, run_dev, start_dev, wait_gone

from statekit.pytest_plugin import wait_for

__all__ = ["run_dev"]  # the fixture, imported for the tests below

pytestmark = [pytest.mark.redis]

#: a process that holds a loopback port (as the app under dev would), says so, and
#: lives at most 120 s; argv: MARKER_FILE ("" for none), GRACEFUL_SECONDS (-1: default
#: signal handling). Graceful: the first SIGINT/SIGTERM starts a drain of that many
#: seconds, after which it writes "drained N" (N: the stop signals it received) to the
#: marker file and exits 0.
_HOLDER = textwrap.dedent(
    """
    import os, signal, socket, sys, time
    marker, graceful = sys.argv[1], float(sys.argv[2])
    got = []
    def stop(signum, frame):
        got.append(signum)
        if len(got) == 1:
            time.sleep(graceful)  # the drain; a second signal is only counted
            with open(marker, "w") as f:
                f.write(f"drained {len(got)}")
            sys.exit(0)
    if graceful >= 0:
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    if marker:
        with open(marker + ".pid", "w") as f:
            f.write(str(os.getpid()))
    print("HOLDER", os.getpid(), s.getsockname()[1], flush=True)
    time.sleep(120)
    """
)


def _holder(tmp_path: Path, marker: str = "", graceful: float = -1) -> list[str]:
    script = tmp_path / "holder.py"
    script.write_text(_HOLDER)
    return [sys.executable, str(script), marker, str(graceful)]


def _sh(tmp_path: Path, marker: str = "", graceful: float = -1) -> str:
    """The holder's command line, for ``sh -c``."""
    return shlex.join(_holder(tmp_path, marker, graceful))


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _holder_line(dev: Dev) -> tuple[int, int]:
    dev.read_until("HOLDER")
    _, pid, port = dev.lines[-1].split()
    return int(pid), int(port)


def _kill(pids: list[int]) -> None:
    for pid in pids:  # only the holders this test started, through its dev
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_dev_stops_a_grandchild_of_its_command(run_dev: list[Dev], tmp_path: Path, sig: int) -> None:
    """`sh -c "python app.py; ..."` (no exec): the app is the command's child. Stopping
    dev must stop it too, or it keeps the port after dev is gone. SIGHUP is the terminal
    closing: dev stops as on SIGTERM."""
    dev = start_dev(run_dev, "--blobs-dir", str(tmp_path / "blobs"), "--",
                    "sh", "-c", f"{_sh(tmp_path)}; echo after")
    pid, port = _holder_line(dev)
    try:
        assert not _port_free(port)
        dev.proc.send_signal(sig)
        assert dev.proc.wait(60) == 0
        assert wait_gone([pid]) == [], "the command's child outlived statekit dev"
        assert _port_free(port)
    finally:
        _kill([pid])


def test_dev_lets_a_graceful_grandchild_finish(run_dev: list[Dev], tmp_path: Path) -> None:
    """The shell dies at once on SIGINT, its child drains for 2 s: dev waits for the whole
    group (not only its direct child) before it kills anything; the child gets one SIGINT."""
    marker = tmp_path / "drained"
    dev = start_dev(run_dev, "--blobs-dir", str(tmp_path / "blobs"), "--",
                    "sh", "-c", f"{_sh(tmp_path, str(marker), 2)}; echo after")
    pid, _ = _holder_line(dev)
    try:
        dev.proc.send_signal(signal.SIGINT)
        assert dev.proc.wait(60) == 0
        assert wait_gone([pid]) == []
        assert marker.read_text() == "drained 1"
    finally:
        _kill([pid])


def test_dev_lets_a_graceful_command_finish(run_dev: list[Dev], tmp_path: Path) -> None:
    """The command itself handles SIGINT with a 2 s drain: it gets the signal once and
    the time to finish."""
    marker = tmp_path / "drained"
    dev = start_dev(run_dev, "--blobs-dir", str(tmp_path / "blobs"), "--",
                    *_holder(tmp_path, str(marker), 2))
    pid, _ = _holder_line(dev)
    try:
        dev.proc.send_signal(signal.SIGINT)
        assert dev.proc.wait(60) == 0
        assert marker.read_text() == "drained 1"
        assert wait_gone([pid]) == []
    finally:
        _kill([pid])


def test_dev_stops_what_its_command_left_running(run_dev: list[Dev], tmp_path: Path) -> None:
    """A command that exits and leaves a background process (`app &`): dev stops it before
    it stops the servers (it would serve against dead ones, holding its port)."""
    pid_file = tmp_path / "bg.pid"
    dev = start_dev(run_dev, "--blobs-dir", str(tmp_path / "blobs"), "--",
                    "sh", "-c", f"{_sh(tmp_path)} & echo $! > {pid_file}; exit 3")
    pids: list[int] = []
    try:
        assert dev.proc.wait(60) == 3  # the command's own status
        pids.append(int(pid_file.read_text()))
        assert wait_gone(pids) == [], "a process the command left running outlived statekit dev"
    finally:
        _kill(pids)


def test_dev_kills_a_group_that_ignores_the_stop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A command and its child that ignore SIGTERM are SIGKILLed once the bound passes."""
    from test_cli_dev import _no_servers

    import statekit.cli as cli

    _no_servers(monkeypatch)
    monkeypatch.setattr(cli, "DEV_STOP_TIMEOUT", 2.0)
    pid_file = tmp_path / "ignoring.pid"
    script = (f"{_sh(tmp_path, str(tmp_path / 'never'), 100)} & echo $! > {pid_file}; "
              "trap '' TERM; while :; do sleep 0.2; done")
    pids: list[int] = []

    def stop_when_started() -> None:
        wait_for(lambda: pid_file.exists() and Path(f"{tmp_path / 'never'}.pid").exists(),
                 timeout=60, what="the command to start")
        pids.append(int(pid_file.read_text()))
        os.kill(os.getpid(), signal.SIGTERM)  # to dev's handler, in the main thread

    stopper = threading.Thread(target=stop_when_started, daemon=True)
    stopper.start()
    try:
        started = time.monotonic()
        assert cli.main(["dev", "--blobs-dir", str(tmp_path / "blobs"), "--", "sh", "-c", script]) == 0
        assert time.monotonic() - started < 60
        stopper.join(10)
        assert wait_gone(pids) == []
    finally:
        _kill(pids)


def test_ctrl_c_in_a_terminal_reaches_the_command_once(tmp_path: Path) -> None:
    """Ctrl-C typed in dev's terminal: the command (which drains 2 s on SIGINT) gets one
    SIGINT, finishes, and dev exits 0. Its child in the terminal's process group got the
    terminal's SIGINT and dev's forwarded one: two."""
    marker = tmp_path / "drained"
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [STATEKIT, "dev", "--blobs-dir", str(tmp_path / "blobs"), "--",
         *_holder(tmp_path, str(marker), 2)],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # noqa: PLW1509 (the terminal is ours)
    )
    os.close(slave)
    output = bytearray()

    def read_until(marker_text: bytes, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while marker_text not in output:
            assert time.monotonic() < deadline, output.decode(errors="replace")
            if select.select([master], [], [], 0.5)[0]:
                try:
                    output.extend(os.read(master, 4096))
                except OSError as e:  # EIO: every process of the terminal is gone
                    assert e.errno == errno.EIO
                    return

    pid = 0
    try:
        read_until(b"HOLDER")
        pid = int(Path(f"{marker}.pid").read_text())
        os.write(master, b"\x03")  # Ctrl-C
        read_until(b"servers stopped")
        assert proc.wait(60) == 0, output.decode(errors="replace")
        assert marker.read_text() == "drained 1"
        assert wait_gone([pid]) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        os.close(master)
        _kill([pid] if pid else [])


# -- statekit reload: which process a pid file names ------------------------------------
#
# reload trusts a pid file only for the process that wrote it: one started after the
# file was last written got the pid later (the server that wrote it died without
# removing it: SIGKILL, a crash, a reboot). Every launch form the docs and examples
# give is found; a process that merely reuses the pid is refused, whatever its
# command line.

_WRAPPER = "import sys\nfrom statekit.cli import main\nsys.exit(main(['serve', *sys.argv[1:]]))\n"
_HOOKS_CONF = "from statekit.gunicorn import *  # noqa: F403\nworker_class = 'gthread'\n"
_WRAPPED_APP = ("from statekit.lifecycle import LifecycleMiddleware\nimport app as _a\n"
                "app = LifecycleMiddleware(_a.app)\n")


def _reload(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STATEKIT, "reload", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.gunicorn
@pytest.mark.parametrize("form", ["console script", "python -m", "wrapper script", "gunicorn hooks"])
def test_reload_finds_every_launch_form(tmp_path: Path, form: str) -> None:
    """`statekit serve` (docs, the Dockerfile), `python -m statekit serve` (the demo,
    phoenix), a script that calls statekit.cli.main in its own process (its command line
    names neither statekit nor gunicorn), gunicorn with statekit's hooks in its own conf
    file (`--pid` under .statekit/): `statekit reload` without arguments, from the
    directory, reaches the master and its worker is replaced."""
    from test_lifecycle_helpers import ServeProcess, request, wait_until

    from statekit.embedded import free_port

    work = tmp_path / "srv"
    work.mkdir()
    port = free_port()
    serve = ["app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--pre-stop-delay", "0"]
    command = {
        "console script": [STATEKIT, "serve", *serve],
        "python -m": [sys.executable, "-m", "statekit", "serve", *serve],
        "wrapper script": [sys.executable, "run_web.py", *serve],
        "gunicorn hooks": [str(Path(STATEKIT).with_name("gunicorn")), "-c", "web.conf.py", "wrapped:app",
                           "--bind", f"127.0.0.1:{port}", "--workers", "1",
                           "--pid", f".statekit/serve-127.0.0.1-{port}.pid"],
    }[form]
    (work / "run_web.py").write_text(_WRAPPER)
    (work / "web.conf.py").write_text(_HOOKS_CONF)
    (work / "wrapped.py").write_text(_WRAPPED_APP)
    (work / ".statekit").mkdir()
    srv = ServeProcess(work, command=command, port=port, env={"STATEKIT_PRE_STOP_DELAY": "0"})
    try:
        srv.wait_ready(1, timeout=60)
        pid_file = work / ".statekit" / f"serve-127.0.0.1-{port}.pid"
        assert int(pid_file.read_text()) == srv.pid
        worker = request(port, "/")[2].split()[0]
        done = _reload(work)
        assert done.returncode == 0, done.stderr
        assert f"sent SIGHUP to {srv.pid}" in done.stdout
        wait_until(lambda: request(port, "/")[2].split()[0] != worker, 60, "the worker to be replaced")
        given = _reload(work, "--pid", str(pid_file))
        assert given.returncode == 0, given.stderr
    finally:
        srv.stop()


def _reused_pid(tmp_path: Path, argv: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    """A process started after a pid file naming its pid was written: what a stale pid
    file of a server that died (SIGKILL) looks like once the system gave the pid away."""
    pid_file = tmp_path / ".statekit" / "serve-127.0.0.1-8000.pid"
    pid_file.parent.mkdir(parents=True)
    written = time.time() - 5  # the dead server wrote it (its file, not yet its pid) 5 s ago
    proc = subprocess.Popen(argv, cwd=tmp_path, stdin=subprocess.PIPE)  # reads stdin: lives until closed
    pid_file.write_text(f"{proc.pid}\n")
    os.utime(pid_file, (written, written))
    return proc, pid_file


_SLEEPER = "import sys; sys.stdin.read()"


@pytest.mark.parametrize("named", ["unrelated", "statekit in its path", "statekit dev"])
def test_reload_refuses_a_process_that_reused_the_pid(tmp_path: Path, named: str) -> None:
    """Stale pid file, pid now another process's: reload sends it nothing (SIGHUP would
    end it), with --pid FILE or without arguments. Its command line may well contain
    "statekit" (a program of a project checked out under ~/statekit-demo, statekit dev
    itself)."""
    script = tmp_path / "statekit-demo" / "worker.py"
    script.parent.mkdir()
    script.write_text(_SLEEPER)
    argv = {
        "unrelated": [sys.executable, "-c", _SLEEPER],
        "statekit in its path": [sys.executable, str(script)],
        "statekit dev": [STATEKIT, "dev", "--blobs-dir", str(tmp_path / "blobs")],
    }[named]
    proc, pid_file = _reused_pid(tmp_path, argv)
    try:
        found = _reload(tmp_path)
        assert found.returncode == 1, found.stdout + found.stderr
        assert "no running statekit serve has a pid file under ./.statekit/" in found.stderr
        given = _reload(tmp_path, "--pid", str(pid_file))
        assert given.returncode == 1, given.stdout + given.stderr
        assert f"ConfigError: {pid_file} is stale: process {proc.pid} started after" in given.stderr
        assert proc.poll() is None  # it got no SIGHUP
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        if named == "statekit dev":
            proc.terminate()
        proc.wait(60)
