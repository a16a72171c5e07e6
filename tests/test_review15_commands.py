"""The commands' loose ends the fifteenth session's review found, run as a user runs
them (the console script, in a subprocess): ``statekit phoenix`` on an app module that
does not exist, ``statekit audit`` on Django URL patterns and on asyncio background
work started by startup hooks, ``statekit dev`` under a job-control shell (Ctrl-Z,
``fg``, ``/dev/tty``) in a pseudo-terminal. Each positive case failed before its fix."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
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
], ids=["module", "submodule", "file-name", "no-colon"])
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
