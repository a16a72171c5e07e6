"""A newcomer's rough edges in URLs and commands (review 15).

a. A URL with its quotes left in (docker's ``--env-file`` and systemd's
   ``EnvironmentFile`` keep them): ``Cache('"redis://..."')`` said ``no cache backend
   for "redis:// URLs (known: ..., redis://, ...)``, the environment ``unknown URL
   scheme '"redis'``. Both now say the value is in quotes and where quotes are kept.
b. ``statekit dev --redis-port <busy port>`` printed Redis's startup log; a port out
   of range printed Redis's config file error (exit 1).
c. ``statekit serve`` on a minimal install asked for ``statekit[server]`` only; an
   ASGI app needs ``statekit[asgi]`` (pyproject: asgi has server's packages).
d. ``statekit serve`` options given wrong: a port out of range was an OverflowError
   traceback, ``--bind :abc`` gunicorn's message with exit 1, ``--workers 0`` exit 1,
   a bind without a port served on gunicorn's 8000.

The commands run as a user runs them: ``.venv/bin/statekit ...`` subprocesses.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from statekit import AsyncCache, Cache
from statekit.blobs import BlobStore
from statekit.broadcast import Broadcaster, SharedValue
from statekit.config import Settings, parse_url
from statekit.errors import ConfigError
from statekit.sessions import SessionStore

ROOT = Path(__file__).resolve().parent.parent
STATEKIT = str(Path(sys.executable).with_name("statekit"))


# -- a. quoted URLs -------------------------------------------------------------------

CAPABILITIES = {
    "Cache": lambda url: Cache(url),
    "AsyncCache": lambda url: AsyncCache(url),
    "SessionStore": lambda url: SessionStore(url, secret_keys=["k" * 32]),
    "Broadcaster": lambda url: Broadcaster(url),
    "SharedValue": lambda url: SharedValue("nc15", default=0, url=url),
    "BlobStore": lambda url: BlobStore(url),
}


def _says_quoted(message: str) -> None:
    assert "in quotes: remove them" in message, message
    assert "--env-file" in message and "EnvironmentFile" in message, message
    assert "no cache backend" not in message and "unknown URL scheme" not in message, message


@pytest.mark.parametrize("quote", ['"', "'"])
@pytest.mark.parametrize("capability", sorted(CAPABILITIES))
def test_a_quoted_url_given_directly_says_it_is_quoted(statekit_redis_url: str, s3_url: str,
                                                       capability: str, quote: str) -> None:
    url = s3_url if capability == "BlobStore" else statekit_redis_url
    with pytest.raises(ConfigError) as info:
        CAPABILITIES[capability](f"{quote}{url}{quote}\n")  # as pasted from an env file
    _says_quoted(str(info.value))
    assert url.rpartition("@")[2] in str(info.value)  # the URL named, its secret not
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("name", ["STATEKIT_REDIS_URL", "STATEKIT_CACHE_URL", "STATEKIT_BLOBS_URL"])
def test_a_quoted_url_in_the_environment_names_its_variable(statekit_redis_url: str, s3_url: str,
                                                            name: str) -> None:
    url = s3_url if name == "STATEKIT_BLOBS_URL" else statekit_redis_url
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: f'"{url}"'})
    _says_quoted(str(info.value))
    assert f"({name})" in str(info.value)


def test_the_quote_message_hides_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse_url('"redis://app:s3cret@127.0.0.1:6379/0"')
    _says_quoted(str(info.value))
    assert "s3cret" not in str(info.value)
    assert "app:***@127.0.0.1" in str(info.value)


def test_a_password_ending_with_a_quote_is_kept() -> None:
    """Nothing is stripped: only a URL that begins with a quote is refused."""
    assert parse_url('redis://:pa"@127.0.0.1:6379/0').password == 'pa"'
    assert parse_url("redis://:pa'@127.0.0.1:6379/0").password == "pa'"


def test_an_unquoted_url_with_spaces_still_works(statekit_redis_url: str) -> None:
    cache = Cache(f"  {statekit_redis_url}\n")
    try:
        cache.set("nc15-spaced", 1, ttl=30)
        assert cache.get("nc15-spaced") == 1
    finally:
        cache.close()


# -- commands -------------------------------------------------------------------------


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STATEKIT, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _one_line_usage_error(out: subprocess.CompletedProcess[str], prog: str, *words: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{prog}: "), out.stderr
    for word in words:
        assert word in last, last
    return last


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


# -- b. statekit dev on a busy or bad port --------------------------------------------


@pytest.mark.parametrize("option", ["--redis-port", "--s3-port"])
def test_dev_on_a_busy_port_says_so(busy_port: int, option: str, tmp_path: Path) -> None:
    out = _run(["dev", option, str(busy_port), "--", sys.executable, "-c", "pass"], tmp_path)
    line = _one_line_usage_error(out, "statekit dev", f"127.0.0.1:{busy_port} is in use", option)
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Redis is starting" not in out.stderr and "Address already in use" not in out.stderr, line
    assert "Redis " not in out.stdout  # no server was started


@pytest.mark.parametrize("port", ["70000", "-1", "abc"])
def test_dev_port_out_of_range_is_a_usage_error(port: str, tmp_path: Path) -> None:
    out = _run(["dev", f"--redis-port={port}", "--", sys.executable, "-c", "pass"], tmp_path)
    _one_line_usage_error(out, "statekit dev", "--redis-port", f"{port!r} is not a port number")
    assert "FATAL CONFIG FILE ERROR" not in out.stderr


def test_dev_on_a_free_fixed_port_runs_its_command(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]  # free once closed
    out = _run(["dev", "--redis-port", str(port), "--blobs-dir", str(tmp_path / "blobs"), "--",
                sys.executable, "-c", "import os; print('URL', os.environ['STATEKIT_REDIS_URL'])"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"URL redis://127.0.0.1:{port}/0" in out.stdout, out.stdout


# -- c. the extra statekit serve asks for ---------------------------------------------

#: a sitecustomize that hides what 'pip install statekit' does not bring (a minimal install)
MINIMAL = '''
import sys
class _Missing:
    names = {"gunicorn", "uvicorn", "uvicorn_worker", "websockets", "rich", "requests"}
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Missing())
'''


def test_the_asgi_extra_has_everything_the_server_extra_has() -> None:
    """The README's promise (an ASGI app: statekit[asgi]) is right: asgi is server's
    packages and uvicorn's."""
    import tomllib  # 3.11+

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras["server"]) <= set(extras["asgi"])
    assert {"uvicorn", "uvicorn-worker"} <= {r.split(">")[0].split("[")[0] for r in extras["asgi"]}


def test_serve_on_a_minimal_install_names_the_asgi_extra(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(MINIMAL)
    (tmp_path / "asgiapp.py").write_text("async def app(scope, receive, send):\n    pass\n")
    path = os.pathsep.join(filter(None, [str(tmp_path / "site"), os.environ.get("PYTHONPATH")]))
    out = _run(["serve", "asgiapp:app"], tmp_path, env={"PYTHONPATH": path})
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    [line] = out.stderr.strip().splitlines()
    assert "'statekit[asgi]' for an ASGI app" in line, line
    assert "'statekit[server]' for a WSGI app" in line, line


# -- d. statekit serve's options given wrong ------------------------------------------

WSGI_APP = "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n"


@pytest.mark.parametrize(("args", "said"), [
    (["--bind", "127.0.0.1:99999"], "'99999' is not a port number (0 to 65535)"),
    (["--bind", "127.0.0.1:-5"], "'-5' is not a port number"),
    (["--bind", "[::1]:70000"], "'70000' is not a port number"),
    (["--bind", "127.0.0.1"], "'127.0.0.1': names no port; write HOST:PORT"),
    (["--bind", "127.0.0.1:"], "'127.0.0.1:': names no port"),
    (["--bind", ":abc"], "'abc' is not a valid port number"),
    (["--bind", "fd://x"], "'x' is not a valid file descriptor"),
    (["--workers", "0"], "'0' is not a number of workers (1 or more)"),
    (["--workers", "-1"], "'-1' is not a number of workers"),
    (["--workers", "x"], "'x' is not a number of workers"),
])
def test_serve_options_given_wrong_are_one_line_usage_errors(args: list[str], said: str,
                                                             tmp_path: Path) -> None:
    (tmp_path / "nc15app.py").write_text(WSGI_APP)
    out = _run(["serve", "nc15app:app", *args], tmp_path)
    _one_line_usage_error(out, "statekit serve", f"argument {args[0]}", said)
    assert "Booting worker" not in out.stderr and "Listening at" not in out.stderr


@pytest.mark.parametrize(("name", "value", "option"), [
    ("STATEKIT_BIND", "127.0.0.1", "--bind"), ("WEB_CONCURRENCY", "0", "--workers")])
def test_serve_defaults_from_the_environment_are_checked_too(name: str, value: str, option: str,
                                                             tmp_path: Path) -> None:
    (tmp_path / "nc15app.py").write_text(WSGI_APP)
    out = _run(["serve", "nc15app:app"], tmp_path, env={name: value})
    _one_line_usage_error(out, "statekit serve", f"argument {option}", repr(value))


@pytest.mark.parametrize("bind", ["127.0.0.1:0", "[::1]:8000", "tcp://127.0.0.1:8000", "unix:/tmp/nc15.sock",
                                  "unix:///tmp/nc15.sock", "fd://3", "localhost:65535"])
def test_serve_accepts_every_bind_gunicorn_reads(bind: str) -> None:
    from statekit.gunicorn import _bind

    assert _bind(bind) == bind
