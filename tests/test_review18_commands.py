"""A newcomer runs every ``statekit`` command from the built wheels (review 18).

Each command runs as a user runs it: the ``statekit`` of the README's fresh venv
(test_user_path's ``venv``, built from the wheels), a subprocess in a temporary
directory, against the suite's private Redis and moto S3. What the walk found:

a. ``statekit phoenix`` stopped by SIGTERM (a CI job's timeout, ``kill``) died at once
   and left its app instances (each a ``statekit serve`` in a session of its own)
   serving for ever; Ctrl-C stopped them. SIGTERM now stops the run as Ctrl-C does.
b. ``statekit phoenix --json DIR/x.json`` with no such DIR ran the whole load, printed
   the report, then ended in a FileNotFoundError traceback. It is a usage error now,
   before anything starts.
c. ``statekit phoenix --duration inf`` ran for ever, ``--start-timeout nan`` failed
   every instance as "not ready after nan s", ``--kill-every nan`` was taken: every
   number of seconds is a finite one (config.number), or a usage error naming it.
d. ``statekit broadcast --log-level LOUD`` was a ValueError traceback from
   ``logging.basicConfig``; a usage error naming the levels now. A SIGTERM just after
   start (once it logged "running jobs") was lost in 5 runs of 6: run_forever cleared
   the stop its handler had made, and the broadcaster ran on; one during a log line was
   a logging traceback ('reentrant call'). The handler now only ends the main thread's
   wait, which logs and stops the scheduler.
e. ``statekit migrate-uploads DIR s3://...`` to a bucket that does not exist, or to an
   endpoint nothing listens on, tried every file (one failure each, "... and N more
   failures"): it asks the bucket once first (HeadBucket, the readiness check's), one
   line and exit 1, nothing copied or written.
f. ``python -m statekit.settings_reference`` outside a checkout (no ``docs/``) was a
   FileNotFoundError traceback.
h. ``statekit serve --graceful-timeout inf`` was an OverflowError traceback,
   ``--pre-stop-delay nan`` served (its drain would never end), ``--log-level LOUD``
   served at gunicorn's info in silence: a number of seconds is checked as the
   environment's are (0 to 86400), a level is one gunicorn knows.
g. ``statekit reload PID`` sent SIGHUP to whatever PID named: a mistyped pid ended a
   shell (the walk's own), a worker's pid ended that worker. A process that has no
   SIGHUP handler (Linux: ``SigCgt``) is refused now, naming why; a master, however it
   was started, has one.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import test_user_path
from test_user_path import Venv, free_port

#: the README's venv, built from the wheels, and the user's shell with our servers' URLs
venv = test_user_path.venv
user_env = test_user_path.user_env
JOBS = "from statekit.broadcast import Broadcaster\nbroadcaster = Broadcaster()\n"

pytestmark = [pytest.mark.userpath, pytest.mark.redis, pytest.mark.s3, pytest.mark.gunicorn]

#: a WSGI app with /healthz only: phoenix runs it, with every check "not checked"
TINY_APP = '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''


def _one_line_error(result: subprocess.CompletedProcess[str], status: int, *needles: str) -> str:
    """*result* exited *status* with no traceback, its error a line naming *needles*."""
    out = result.stdout + result.stderr
    assert result.returncode == status, out
    assert "Traceback" not in out, out
    lines = [line for line in result.stderr.splitlines() if all(n in line for n in needles)]
    assert lines, out
    return lines[0]


# -- a. phoenix stopped by SIGTERM -----------------------------------------------------------


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _processes_on(port: int) -> list[int]:
    """PIDs whose command line binds 127.0.0.1:*port* (the instances phoenix started)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"127.0.0.1:{port}".encode() in cmdline and b"serve" in cmdline:
                pids.append(int(entry))
    return pids


def _wait_for(check, what: str, timeout: float, out: Path):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"not {what} after {timeout:.0f} s; output:\n{out.read_text(errors='replace')}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_phoenix_stopped_by_a_signal_stops_its_instances(venv: Venv, user_env: dict[str, str],
                                                           tmp_path: Path, signum: int) -> None:
    (tmp_path / "tinyapp.py").write_text(TINY_APP)
    out = tmp_path / "phoenix.out"
    env = {**user_env, "COLUMNS": "300"}  # the URLs on one line
    with open(out, "w") as f:
        proc = subprocess.Popen(
            [str(venv.bin / "statekit"), "phoenix", "tinyapp:app", "--duration", "600", "--instances", "1",
             "--workers", "1", "--users", "1", "--kill-every", "0", "--reload-every", "0"],
            cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal
        )
    port = 0
    try:
        def ready() -> int:
            assert proc.poll() is None, out.read_text()
            m = re.search(r"ready on\s+http://127\.0\.0\.1:(\d+)", out.read_text())
            return int(m.group(1)) if m else 0

        port = _wait_for(ready, "ready", 120, out)
        assert _listening(port)
        proc.send_signal(signum)
        try:
            status = proc.wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"phoenix still running 60 s after the signal:\n{out.read_text()}") from None
        text = out.read_text()
        assert status == 130, text
        assert "Traceback" not in text, text
        assert "statekit phoenix: interrupted" in text, text
        assert not _processes_on(port), f"instance processes left: {_processes_on(port)}\n{text}"
        assert not _listening(port), text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for pid in _processes_on(port) if port else []:  # the instances this test started
            os.kill(pid, signal.SIGKILL)


# -- b, c. phoenix's options ----------------------------------------------------------------


def test_b_phoenix_json_into_a_missing_directory_is_refused_before_the_run(
        venv: Venv, user_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "tinyapp.py").write_text(TINY_APP)
    target = tmp_path / "no-such-dir" / "report.json"
    result = venv.run(["statekit", "phoenix", "tinyapp:app", "--duration", "1", "--instances", "1",
                       "--workers", "1", "--users", "1", "--json", str(target)], tmp_path, user_env)
    line = _one_line_error(result, 2, "--json", str(target))
    assert "no such directory" in line, line
    assert "ready on" not in result.stdout + result.stderr  # nothing started


@pytest.mark.parametrize(("option", "value"), [("--duration", "inf"), ("--start-timeout", "nan"),
                                               ("--kill-every", "nan"), ("--reload-every", "inf"),
                                               ("--shared-grace", "-1"), ("--duration", "soon")])
def test_c_phoenix_refuses_seconds_that_are_no_finite_number(venv: Venv, user_env: dict[str, str],
                                                             tmp_path: Path, option: str, value: str) -> None:
    (tmp_path / "tinyapp.py").write_text(TINY_APP)
    result = venv.run(["statekit", "phoenix", "tinyapp:app", option, value], tmp_path, user_env, timeout=60)
    line = _one_line_error(result, 2, f"argument {option}")
    assert "finite number of seconds" in line, line
    assert "ready on" not in result.stdout + result.stderr


# -- d. broadcast's log level ---------------------------------------------------------------


def test_d_broadcast_refuses_an_unknown_log_level(venv: Venv, user_env: dict[str, str],
                                                  tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(JOBS)
    result = venv.run(["statekit", "broadcast", "--log-level", "LOUD", "jobs:broadcaster"],
                      tmp_path, user_env)
    line = _one_line_error(result, 2, "--log-level", "LOUD")
    assert "DEBUG" in line and "WARNING" in line, line


def test_d_broadcast_takes_a_level_in_any_case(venv: Venv, user_env: dict[str, str],
                                               tmp_path: Path) -> None:
    """The check refuses only what logging does not know: ``info`` runs, logs at INFO,
    and a SIGTERM stops it (exit 0)."""
    (tmp_path / "jobs.py").write_text(JOBS)
    proc = subprocess.Popen(
        [str(venv.bin / "statekit"), "broadcast", "--log-level", "info", "jobs:broadcaster"],
        cwd=tmp_path, env=user_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    watchdog = threading.Timer(60, proc.kill)  # a hang fails the test below instead of blocking it
    watchdog.start()
    try:
        assert proc.stderr is not None
        seen = []
        while (line := proc.stderr.readline()) and "running jobs" not in line:
            seen.append(line)
        assert line, f"exited {proc.wait()} before running its jobs: {''.join(seen)}"
        proc.send_signal(signal.SIGTERM)  # its handler is installed before it logs "running jobs"
        _, err = proc.communicate(timeout=60)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 0, err
    assert "broadcaster stopping (signal 15)" in err, err
    assert "Traceback" not in err, err


# -- e. migrate-uploads to a wrong bucket or endpoint ---------------------------------------


def _uploads(tmp_path: Path, n: int = 30) -> Path:
    src = tmp_path / "uploads"
    src.mkdir()
    for i in range(n):
        (src / f"f{i:02d}.txt").write_text(f"file {i}\n")
    return src


def test_e_migrate_uploads_to_a_missing_bucket_is_one_line(venv: Venv, user_env: dict[str, str],
                                                           s3_url: str, tmp_path: Path) -> None:
    src = _uploads(tmp_path)
    m = re.match(r"s3://([^@]*@)?([^/?]+)", s3_url)
    assert m, s3_url
    dest = s3_url.replace(f"{m.group(1) or ''}{m.group(2)}", f"{m.group(1) or ''}no-such-bucket-h5", 1)
    for extra in ([], ["--dry-run"]):
        result = venv.run(["statekit", "migrate-uploads", str(src), dest, "--output-dir", "out", *extra],
                          tmp_path, user_env)
        line = _one_line_error(result, 1, "statekit migrate-uploads: ConfigError", "'no-such-bucket-h5'",
                               "does not exist")
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert "FAILED" not in result.stdout + result.stderr and "more failures" not in result.stderr, line
        assert result.stdout == "", result.stdout
        assert not (tmp_path / "out").exists()  # no manifest, no mapping


def test_e_migrate_uploads_to_an_endpoint_nothing_listens_on_is_one_line(
        venv: Venv, user_env: dict[str, str], tmp_path: Path) -> None:
    src = _uploads(tmp_path)
    port = free_port()
    dest = f"s3://key:secret@bucket?endpoint_url=http://127.0.0.1:{port}&region=us-east-1"
    started = time.monotonic()
    result = venv.run(["statekit", "migrate-uploads", str(src), dest, "--output-dir", "out"],
                      tmp_path, user_env)
    line = _one_line_error(result, 1, "statekit migrate-uploads: BackendUnavailable", f"127.0.0.1:{port}")
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "FAILED" not in result.stdout + result.stderr, line
    assert not (tmp_path / "out").exists()
    assert time.monotonic() - started < 60  # one attempt, not one per file


def test_e_migrate_uploads_still_copies_to_the_right_bucket(venv: Venv, user_env: dict[str, str],
                                                            s3_url: str, tmp_path: Path) -> None:
    src = _uploads(tmp_path, 3)
    result = venv.run(["statekit", "migrate-uploads", str(src), s3_url, "--output-dir", "out"],
                      tmp_path, user_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "copied 3" in result.stdout and "verified 3" in result.stdout, result.stdout
    assert (tmp_path / "out" / "map.json").exists()


# -- f. the settings reference outside a checkout -------------------------------------------


def test_f_settings_reference_without_docs_is_one_line(venv: Venv, user_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    result = venv.run([str(venv.python), "-m", "statekit.settings_reference"], tmp_path, user_env)
    line = _one_line_error(result, 1, "docs/settings.md")
    assert "cannot write" in line, line
    assert "``" not in venv.run([str(venv.python), "-m", "statekit.settings_reference", "--help"],
                                tmp_path, user_env).stdout  # plain text, not reST


# -- g. reload of a process that SIGHUP would end ------------------------------------------


def _children(pid: int) -> list[int]:
    pids: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return pids


def test_g_reload_refuses_a_process_without_a_sighup_handler(venv: Venv, user_env: dict[str, str],
                                                             tmp_path: Path) -> None:
    (tmp_path / "tinyapp.py").write_text(TINY_APP)
    port = free_port()
    log = tmp_path / "serve.log"
    sleeper = subprocess.Popen(["sleep", "300"])
    with open(log, "w") as f:
        server = subprocess.Popen(
            [str(venv.bin / "statekit"), "serve", "tinyapp:app", "--bind", f"127.0.0.1:{port}",
             "--workers", "1", "--pid", "", "--pre-stop-delay", "0"],
            cwd=tmp_path, env=user_env, stdout=f, stderr=subprocess.STDOUT,
        )
    try:
        def ready() -> bool:
            assert server.poll() is None, log.read_text()
            return test_user_path.http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200

        _wait_for(lambda: _listening(port) and ready(), "ready", 120, log)  # its worker serves: set up
        (worker,) = _children(server.pid)
        for pid in (sleeper.pid, worker):
            result = venv.run(["statekit", "reload", str(pid)], tmp_path, user_env)
            _one_line_error(result, 1, f"process {pid} does not handle SIGHUP", "--pid FILE")
        assert sleeper.poll() is None
        os.kill(worker, 0)  # still there
        done = venv.run(["statekit", "reload", str(server.pid)], tmp_path, user_env)
        assert done.returncode == 0 and f"sent SIGHUP to {server.pid}" in done.stdout, done.stderr
    finally:
        for proc in (sleeper, server):
            proc.terminate()
        for proc in (sleeper, server):
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)


# -- h. serve's seconds and log level -------------------------------------------------------


@pytest.mark.parametrize(("option", "value", "status", "says"), [
    ("--graceful-timeout", "inf", 2, "--graceful-timeout='inf' must be between 0 and 86400 seconds"),
    ("--pre-stop-delay", "nan", 2, "--pre-stop-delay='nan' must be between 0 and 86400 seconds"),
    ("--graceful-timeout", "-1", 2, "--graceful-timeout='-1' must be between 0 and 86400 seconds"),
    ("--pre-stop-delay", "soon", 2, "--pre-stop-delay='soon' is not a number of seconds"),
    ("--log-level", "LOUD", 2, "argument --log-level: invalid choice: 'loud'"),
])
def test_h_serve_refuses_bad_seconds_and_log_levels(venv: Venv, user_env: dict[str, str], tmp_path: Path,
                                                    option: str, value: str, status: int, says: str) -> None:
    (tmp_path / "tinyapp.py").write_text(TINY_APP)
    port = free_port()
    result = venv.run(["statekit", "serve", "tinyapp:app", "--bind", f"127.0.0.1:{port}", "--pid", "",
                       option, value], tmp_path, user_env, timeout=60)  # one that serves: TimeoutExpired
    _one_line_error(result, status, says)
    assert "Starting gunicorn" not in result.stderr
