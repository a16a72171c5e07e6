"""The commands' loose ends the fifteenth session's review found, run as a user runs
them (the console script, in a subprocess): ``statekit phoenix`` on an app module that
does not exist, ``statekit audit`` on Django URL patterns and on asyncio background
work started by startup hooks, ``statekit dev`` under a job-control shell (Ctrl-Z,
``fg``, ``/dev/tty``) in a pseudo-terminal. Each positive case failed before its fix."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

STATEKIT = str(Path(sys.executable).with_name("statekit"))


def _statekit(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STATEKIT, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


# -- phoenix: the app's module is checked before anything starts ---------------------------


@pytest.mark.parametrize(("app", "files", "message"), [
    ("nosuchmod:app", {}, "cannot import 'nosuchmod': No module named 'nosuchmod'"),
    ("pkg.nosuch:app", {"pkg/__init__.py": ""}, "cannot import 'pkg.nosuch': No module named 'pkg.nosuch'"),
    ("app.py:app", {"app.py": "app = None\n"},
     "cannot import 'app.py': No module named 'app.py'; 'app' is not a package"),
    ("nosuchmod", {}, "cannot import 'nosuchmod': No module named 'nosuchmod'"),
    ("ns.sub.nosuch:app", {"ns/sub/other.py": ""},
     "cannot import 'ns.sub.nosuch': No module named 'ns.sub.nosuch'"),
], ids=["module", "submodule", "file-name", "no-colon", "namespace-package"])
def test_phoenix_of_a_missing_app_module_is_one_line_before_any_server(
    tmp_path: Path, app: str, files: dict[str, str], message: str
) -> None:
    """``statekit phoenix nosuchmod:app`` started Redis and the S3 endpoint, then two
    instances whose log it printed (20 lines) before it said the module is missing."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    proc = _statekit(tmp_path, "phoenix", app, "--duration", "1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert " ".join(out.split()) == f"statekit phoenix: could not run: {message}", out  # (rich wraps it)


def test_phoenix_finds_the_app_package_in_the_current_directory_without_importing_it(tmp_path: Path) -> None:
    """The check finds the module where the instances will (the current directory) and
    runs none of its code: a package whose ``__init__`` needs the Redis URL phoenix
    has not started yet is not refused. It fails later, in the instances, as before:
    the error is the app's, not 'no module'."""
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("import os\nos.environ['STATEKIT_MUST_NOT_RUN']\n")
    (tmp_path / "myapp" / "wsgi.py").write_text("raise SystemExit('the app module itself was imported')\n")
    proc = _statekit(tmp_path, "phoenix", "myapp.wsgi:app", "--duration", "1", "--interface", "wsgi",
                     "--start-timeout", "30", timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "No module named" not in out, out
    assert "private Redis and S3 endpoint started" in out, out  # it went on to run the instances


# -- audit: Django URL patterns register views ----------------------------------------------


def _audit(tmp_path: Path, name: str, source: str) -> list[tuple[int, str]]:
    (tmp_path / name).write_text(textwrap.dedent(source).lstrip("\n"))
    proc = _statekit(tmp_path, "audit", name, "--format", "json")
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return [(f["line"], f["code"]) for f in json.loads(proc.stdout)]


def test_audit_django_views_registered_by_path_re_path_and_url(tmp_path: Path) -> None:
    """A Django view is what ``path``/``re_path``/``url`` in ``urlpatterns`` name, its
    request parameter called ``req``, ``_`` or ``r`` as much as ``request``
    (``@app.route``'s and Starlette ``Route``'s endpoints were already recognised)."""
    found = _audit(tmp_path, "urls.py", """
        from django.conf.urls import url
        from django.http import HttpResponse
        from django.urls import path, re_path
        from django.utils.translation import gettext_lazy as _
        VISITS = {}
        def count(req, page):
            VISITS[page] = VISITS.get(page, 0) + 1
            return HttpResponse(str(VISITS[page]))
        def reset(_):
            VISITS.clear()
            return HttpResponse("ok")
        def legacy(r):
            global hits
            hits += 1
            return HttpResponse(str(hits))
        def about(r):
            VISITS.setdefault("about", 0)
            return HttpResponse("about")
        urlpatterns = [
            path("count/<page>/", count, name="count"),
            re_path(r"^reset/$", view=reset),
            path(_("about/"), about),
        ]
        urlpatterns += [url(r"^legacy/$", legacy)]
    """)
    assert found == [(7, "SK301"), (10, "SK301"), (13, "SK302"), (17, "SK301")]


def test_audit_path_calls_that_are_not_url_patterns_register_nothing(tmp_path: Path) -> None:
    """Near misses: a ``path`` that is not Django's (its first argument is no route),
    ``os.path``, ``include`` and a view from another module name no function here."""
    found = _audit(tmp_path, "urls.py", """
        import os
        from django.urls import include, path
        from . import views
        SEEN = set()
        def remember(name):
            SEEN.add(name)
            return name
        def join(base, name):
            return os.path.join(base, remember(name))
        where = path(base_dir, remember)
        urlpatterns = [path("api/", include("api.urls")), path("x/", views.remember)]
    """)
    assert found == []


# -- audit: asyncio background work started by startup hooks --------------------------------


def test_audit_asyncio_tasks_and_executor_work_started_at_startup(tmp_path: Path) -> None:
    """``asyncio.create_task``/``ensure_future`` (of an ``asyncio.to_thread`` too),
    ``loop.run_in_executor`` and a task group's ``start_soon``, not awaited, in a FastAPI
    ``@app.on_event("startup")``, a ``lifespan``, a Starlette ``on_startup=`` hook: a
    background task in every worker (SK402), as a thread or ``executor.submit`` there was.
    (``asyncio.to_thread(f)`` alone is a coroutine that runs nothing until awaited or made
    a task: the task is what is reported, once.)"""
    found = _audit(tmp_path, "main.py", """
        import asyncio
        from contextlib import asynccontextmanager
        import anyio
        from fastapi import FastAPI
        from starlette.applications import Starlette
        @asynccontextmanager
        async def lifespan(app):
            task = asyncio.create_task(refresh_forever())
            async with anyio.create_task_group() as tg:
                tg.start_soon(poll_forever)
                yield
            task.cancel()
        app = FastAPI(lifespan=lifespan)
        @app.on_event("startup")
        async def start_poller():
            loop = asyncio.get_running_loop()
            loop.run_in_executor(None, poll_forever)
        async def warm():
            asyncio.ensure_future(asyncio.to_thread(poll_forever))
            background = asyncio.to_thread(poll_forever)
            asyncio.get_event_loop().create_task(background)
        star = Starlette(on_startup=[warm])
    """)
    assert found == [(8, "SK402"), (10, "SK402"), (17, "SK402"), (19, "SK402"), (21, "SK402")]


def test_audit_awaited_startup_work_and_per_request_tasks_are_not_background(tmp_path: Path) -> None:
    """Near misses: startup work the hook awaits (``await asyncio.to_thread(load)``,
    ``await loop.run_in_executor(...)``, ``await asyncio.gather(...)``) is done when
    the worker starts serving, as a ``with ThreadPoolExecutor()`` block's tasks; a
    task a request handler starts is not per-worker state."""
    found = _audit(tmp_path, "main.py", """
        import asyncio
        from fastapi import FastAPI
        app = FastAPI()
        @app.on_event("startup")
        async def load_models():
            await asyncio.to_thread(load_model)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, load_model)
            await asyncio.gather(asyncio.to_thread(load_model), asyncio.create_task(warm_up()))
            await asyncio.wait_for(asyncio.ensure_future(warm_up()), 5)
        @app.post("/jobs")
        async def start_job():
            asyncio.create_task(run_job())
            return {"started": True}
    """)
    assert found == []


# -- dev: a foreground job under a job-control shell ----------------------------------------


class Terminal:
    """An interactive bash on a pseudo-terminal of its own (a session leader with job
    control, as a user's terminal runs it); what it shows is read as it comes."""

    def __init__(self, cwd: Path) -> None:
        env = {**os.environ, "PS1": "$ ", "TERM": "dumb", "HISTFILE": os.devnull, "PROMPT_COMMAND": ""}
        env.pop("STATEKIT_REDIS_URL", None)
        env.pop("STATEKIT_BLOBS_URL", None)
        bash = shutil.which("bash")
        assert bash is not None
        pid, self.fd = pty.fork()
        if pid == 0:  # the child: exec at once, nothing else of pytest runs here
            os.chdir(cwd)
            os.execve(bash, [bash, "--norc", "--noprofile", "-i"], env)
        self.pid = pid
        self.output = ""

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """Read until *pattern* appears after what earlier calls consumed."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.output)
            if m:
                self.output = self.output[m.end():]
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} on the terminal within {timeout} s: {self.output!r}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if ready:
                try:
                    self.output += os.read(self.fd, 4096).decode(errors="replace").replace("\r", "")
                except OSError:  # EIO: the terminal's other side is closed
                    raise AssertionError(f"terminal closed before {pattern!r}: {self.output!r}") from None

    def hang_up(self) -> None:
        """Close the terminal (its window closed): bash gets SIGHUP and passes it on."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        self.hang_up()  # dev (bash's job) gets SIGHUP and stops its command
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _state(pid: int) -> str:
    """The process's state letter (``T``: stopped), ``-`` when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "-"


def _until(pred: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(tmp_path)
    started: list[int] = []
    term.started = started  # type: ignore[attr-defined]
    try:
        term.expect(r"\$ $")
        yield term
    finally:
        term.close()
        for pid in started:  # the commands this test's dev ran, should the hangup not end them
            with contextlib.suppress(ProcessLookupError):
                if _state(pid) not in ("-", "Z"):
                    os.kill(pid, signal.SIGKILL)


#: reads a line from /dev/tty (its controlling terminal) and exits 7: an interactive
#: command (a debugger's prompt, getpass) as a user runs it under dev
_TTY_READER = """
import os
out, tty = open("/dev/tty", "w"), open("/dev/tty")
print("CHILD", os.getpid(), "asks", file=out, flush=True)
line = tty.readline().strip()
print("GOT", repr(line), file=out, flush=True)
raise SystemExit(7)
"""


@pytest.mark.redis
@pytest.mark.parametrize("launcher", ["", "sh -c"], ids=["shell", "launcher"])
def test_dev_command_is_the_terminals_foreground_job(terminal: Terminal, tmp_path: Path, launcher: str,
                                                     ) -> None:
    """Under dev the command has the terminal (it opens /dev/tty and reads from it); Ctrl-Z
    stops it and gives the shell its prompt back, ``fg`` resumes it in the foreground.
    Before, the command ran in a session of its own: /dev/tty could not be opened (ENXIO),
    and Ctrl-Z stopped dev alone, its command running on (and holding its port). Run by
    a launcher (``make demo``; here ``sh -c``), the launcher stops too: it is the job."""
    (tmp_path / "reader.py").write_text(_TTY_READER)
    line = f"{STATEKIT} dev --blobs-dir blobs -- {sys.executable} reader.py"
    terminal.send(f"{launcher} {shlex.quote(line + '; exit $?')}\n" if launcher else f"{line}\n")
    child = int(terminal.expect(r"CHILD (\d+) asks").group(1))
    terminal.started.append(child)  # type: ignore[attr-defined]
    terminal.send("\x1a")  # Ctrl-Z
    terminal.expect(r"Stopped.*\n\$ ")
    _until(lambda: _state(child) == "T", "the command stopped")
    terminal.send("fg\n")
    _until(lambda: _state(child) not in ("T", "t"), "the command resumed")
    terminal.send("hello\n")  # read by the command: the terminal's foreground again
    terminal.expect(r"GOT 'hello'")
    terminal.expect(r"servers stopped\n\$ ")
    terminal.send("echo STATUS=$?\n")
    terminal.expect(r"\nSTATUS=7")  # its status is dev's
    _until(lambda: _state(child) in ("-", "Z"), "the command gone")


_WAITER = """
import os, sys, time
print("CHILD", os.getpid(), flush=True)
while not os.path.exists("go"):
    time.sleep(0.05)
sys.exit(5)
"""


@pytest.mark.redis
def test_dev_without_the_terminal_on_stdin_passes_ctrl_z_on(terminal: Terminal, tmp_path: Path) -> None:
    """dev's stdin redirected (no terminal to hand over): Ctrl-Z reaches dev, which
    stops its command's process group and then itself, so the shell's job is stopped;
    ``fg`` continues both."""
    (tmp_path / "waiter.py").write_text(_WAITER)
    terminal.send(f"{STATEKIT} dev --blobs-dir blobs -- {sys.executable} waiter.py </dev/null\n")
    child = int(terminal.expect(r"CHILD (\d+)").group(1))
    terminal.started.append(child)  # type: ignore[attr-defined]
    terminal.send("\x1a")
    terminal.expect(r"Stopped.*\n\$ ")
    _until(lambda: _state(child) == "T", "the command stopped")
    terminal.send("fg\n")
    _until(lambda: _state(child) not in ("T", "t"), "the command resumed")
    (tmp_path / "go").touch()
    terminal.expect(r"servers stopped\n\$ ")
    terminal.send("echo STATUS=$?\n")
    terminal.expect(r"\nSTATUS=5")


@pytest.mark.redis
def test_dev_ctrl_c_in_the_terminal_stops_the_command(terminal: Terminal, tmp_path: Path) -> None:
    """Ctrl-C reaches the command's process group (once: dev does not pass on a second
    SIGINT), which exits; dev stops its servers and the shell has the terminal back."""
    (tmp_path / "waiter.py").write_text(_WAITER)
    terminal.send(f"{STATEKIT} dev --blobs-dir blobs -- {sys.executable} waiter.py\n")
    child = int(terminal.expect(r"CHILD (\d+)").group(1))
    terminal.started.append(child)  # type: ignore[attr-defined]
    terminal.send("\x03")  # Ctrl-C
    terminal.expect(r"KeyboardInterrupt")
    terminal.expect(r"servers stopped\n\$ ")
    terminal.send("echo STATUS=$?\n")
    terminal.expect(r"\nSTATUS=130")  # killed by SIGINT, as the shell reports it
    terminal.send("echo PROMPT-BACK\n")
    terminal.expect(r"\nPROMPT-BACK")


@pytest.mark.redis
def test_dev_closing_the_terminal_ends_everything(terminal: Terminal, tmp_path: Path) -> None:
    """The command now shares dev's terminal: when the terminal goes away, the command
    (its foreground group: SIGHUP from the kernel, SIGTERM from dev), dev and its Redis
    all end; nothing is left running. (It passed before too, the command in a session of
    its own: a guard for the change.)"""
    (tmp_path / "waiter.py").write_text(_WAITER)
    terminal.send(f"{STATEKIT} dev --blobs-dir blobs -- {sys.executable} waiter.py\n")
    redis_pid = int(terminal.expect(r"Redis .*pid (\d+)\)").group(1))
    child = int(terminal.expect(r"CHILD (\d+)").group(1))
    with open(f"/proc/{child}/stat") as f:
        dev_pid = int(f.read().rpartition(")")[2].split()[1])
    terminal.started += [child, redis_pid]  # type: ignore[attr-defined]
    terminal.hang_up()
    _until(lambda: all(_state(p) in ("-", "Z") for p in (child, redis_pid, dev_pid)), "all gone", 60)
