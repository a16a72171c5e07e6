"""nginx in front of two ``statekit serve`` instances, with the config from
deploy/nginx/ (the one docker-compose uses). nginx runs as our child process in the
foreground with a private prefix; skipped where nginx is not installed."""

from __future__ import annotations

import importlib.util
import os
import random
import re
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_lifecycle_helpers import APP, Load, ServeProcess, request, wait_until

from statekit.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                       if os.access(p, os.X_OK)), None)

pytestmark = [
    pytest.mark.nginx,
    pytest.mark.gunicorn,
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian: apt-get install nginx; "
                                            ".ci/run does it when run as root)"),
]


def _render_module():
    spec = importlib.util.spec_from_file_location("statekit_nginx_render", ROOT / "deploy/nginx/render.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


render = _render_module()

NGINX_APP = APP + textwrap.dedent(
    """
    _inner = app

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/app503":  # the app's own 503: no drain header
            _inner(environ, lambda *a: None)
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"app says no"]
        return _inner(environ, start_response)
    """
)


class Nginx:
    def __init__(self, prefix: Path, upstreams: list[str]) -> None:
        self.prefix = prefix
        prefix.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(render.render_nginx_config(upstreams, f"127.0.0.1:{self.port}", prefix=prefix))
        self.conf = conf
        self.out = open(prefix / "stdout.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
            stdout=self.out, stderr=subprocess.STDOUT,
        )
        wait_until(lambda: request(self.port, "/readyz", timeout=2)[0] in (200, 502, 503), 15, "nginx")

    def access_log(self) -> str:
        path = self.prefix / "access.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Nginx, ServeProcess, ServeProcess]]:
    a = ServeProcess(tmp_path / "a", "--workers", "2", "--pre-stop-delay", "3", "--graceful-timeout", "10",
                     app_source=NGINX_APP)
    b = ServeProcess(tmp_path / "b", "--workers", "2", "--pre-stop-delay", "3", "--graceful-timeout", "10",
                     app_source=NGINX_APP)
    nginx = None
    try:
        a.wait_ready(2)
        b.wait_ready(2)
        nginx = Nginx(tmp_path / "nginx", [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
        yield nginx, a, b
    finally:
        if nginx is not None:
            nginx.stop()
        a.signal(signal.SIGTERM)  # both drain at once
        b.signal(signal.SIGTERM)
        a.stop()
        b.stop()


def test_rendered_config_passes_nginx_t(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    text = render.render_nginx_config(["127.0.0.1:1", "127.0.0.1:2"], "127.0.0.1:3", prefix=tmp_path)
    conf.write_text(text)
    out = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    snippet = render.render_nginx_config(["app1:8000", "app2:8000"], 80)
    assert "${STATEKIT_" not in snippet and "$upstream_http_x_statekit_drain" in snippet
    assert "server app1:8000 max_fails=1 fail_timeout=2s;" in snippet
    assert "server app2:8000 backup max_fails=0;" in snippet
    assert "proxy_next_upstream error timeout http_502 http_503;" in snippet


def test_sigterm_to_one_instance_behind_nginx_fails_no_request(cluster) -> None:
    nginx, a, b = cluster
    with Load(nginx.port, threads=4, post_every=2) as load:
        time.sleep(3)
        before = load.total
        a.signal(signal.SIGTERM)
        started = time.monotonic()
        status = a.wait(2 + 10 + 10)
        took = time.monotonic() - started
        time.sleep(3)
    log = a.log()
    print(f"requests={load.total} (before TERM {before}) failed={len(load.failures)} {dict(load.reasons)}; "
          f"instance exited in {took:.1f}s; "
          f"{re.search(r'statekit: shutdown: .*', log).group(0)}")  # type: ignore[union-attr]
    assert status == 0
    assert load.failures == [], (load.reasons, nginx.access_log()[-3000:])
    assert load.total > before + 20
    assert re.search(r"force_killed=0 lost_in_flight=0", log)
    # after the drain everything went to b
    assert request(nginx.port, "/", "POST", b"abc")[0] == 200


def test_a_drained_post_is_retried_but_an_app_503_is_not(cluster) -> None:
    nginx, a, b = cluster
    # the app's own 503 on a POST: the app ran, so nginx must not send it again
    status, _, _ = request(nginx.port, "/app503", "POST", b"once")
    assert status == 503
    # nginx writes the access log after the response is sent: wait for the line
    wait_until(lambda: "POST /app503" in nginx.access_log(), 5, "the access log line")
    line = [ln for ln in nginx.access_log().splitlines() if "POST /app503" in ln][-1]
    assert re.search(r"upstream_status=503 drain=", line), line
    # a POST refused by a draining instance (reject mode) is retried on the other one
    a.signal(signal.SIGTERM)
    wait_until(lambda: request(a.port, "/readyz")[0] == 503, 5, "a draining")
    codes = [request(nginx.port, "/p", "POST", b"data")[0] for _ in range(6)]
    assert codes == [200] * 6
    wait_until(lambda: nginx.access_log().count("POST /p ") >= 6, 5, "the access log lines")
    retried = [ln for ln in nginx.access_log().splitlines() if "POST /p" in ln and "503 : 200" in ln]
    assert retried, nginx.access_log()


def test_sigkilled_workers_behind_nginx_fail_no_get(cluster) -> None:
    """Workers of both instances SIGKILLed every 1-2 s under 50 concurrent GET
    clients: the requests they were executing are retried by nginx on the other
    instance (or its backup line when both are marked failed), none fails."""
    nginx, a, b = cluster
    rng = random.Random(15)
    kills = 0
    with Load(nginx.port, threads=50, path="/sleep/0.01", post_every=0) as load:
        time.sleep(1)
        while kills < 6:
            time.sleep(rng.uniform(1, 2))
            workers = (a, b)[kills % 2].workers()
            if len(workers) == 2:
                os.kill(rng.choice(workers), signal.SIGKILL)
                kills += 1
        time.sleep(1)
    died = sum(int(n) for srv in (a, b) for n in re.findall(r"died with (\d+) requests in flight", srv.log()))
    resets = sum(m.count("502") for m in re.findall(r"upstream_status=(.*?) drain=", nginx.access_log()))
    print(f"kills={kills} requests={load.total} failed={len(load.failures)} {dict(load.reasons)}; "
          f"in flight at the kills (masters' logs)={died}, retried after a reset (nginx)={resets}")
    assert load.failures == [], (load.reasons, nginx.access_log()[-3000:])
    assert load.ok > 200
    assert resets <= died
