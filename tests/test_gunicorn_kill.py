"""SIGKILLed workers under concurrent load, straight to ``statekit serve``: a killed
worker loses only the requests it was executing, and the master's log counts them.
Also what that worker does besides: a response's head leaves with its body, kept-alive
clients leave turns to new connections, the shutdown line counts since TERM. (Behind
nginx: tests/test_nginx.py.)

Loopback only; every process is started and stopped here, and only workers of the
master started here are killed (by PID). Each run is bounded in time and count.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from pathlib import Path

import pytest
from test_lifecycle_helpers import Load, ServeProcess

pytestmark = pytest.mark.gunicorn

DIED = re.compile(r"statekit: worker (\d+) died with (\d+) requests in flight")
THREADS = 4  # statekit serve's default threads per worker


def kill_workers_under_load(tmp_path: Path, *, clients: int, kills: int,
                            seed: int) -> tuple[Load, list[int], str]:
    """Run *clients* loopback clients against 2 workers, SIGKILL a worker every 1-2 s
    *kills* times; return the load, the pids killed and the master's log."""
    rng = random.Random(seed)
    killed: list[int] = []
    with ServeProcess(tmp_path, "--workers", "2") as srv:
        srv.wait_ready(2)
        with Load(srv.port, threads=clients, path="/sleep/0.01", post_every=0) as load:
            time.sleep(1)
            while len(killed) < kills:
                time.sleep(rng.uniform(1, 2))
                workers = srv.workers()
                if len(workers) == 2:  # both up: the other one serves meanwhile
                    victim = rng.choice(workers)
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)
            time.sleep(1)
        log = srv.log()
    return load, killed, log


def test_sigkilled_workers_lose_only_the_requests_they_were_executing(tmp_path: Path) -> None:
    load, killed, log = kill_workers_under_load(tmp_path, clients=50, kills=5, seed=15)
    died = {int(pid): int(n) for pid, n in DIED.findall(log)}
    reported = sum(died.values())
    print(f"kills={len(killed)} requests={load.total} failed={len(load.failures)} {dict(load.reasons)} "
          f"master-reported in flight at the kills={reported} {sorted(died.values())}")
    assert set(killed) <= set(died), log  # every kill has its line
    # a worker holds no more requests than it has threads to execute them; with
    # 50 clients on 8 threads, eager accepting left ~20 queued in each worker
    assert all(n <= THREADS for n in died.values()), died
    assert load.ok > 200
    assert len(load.failures) <= reported, (load.reasons, died)


@pytest.mark.slow
def test_sigkilled_workers_soak(tmp_path: Path) -> None:
    load, killed, log = kill_workers_under_load(tmp_path, clients=100, kills=20, seed=16)
    died = {int(pid): int(n) for pid, n in DIED.findall(log)}
    print(f"kills={len(killed)} requests={load.total} failed={len(load.failures)} {dict(load.reasons)} "
          f"master-reported={sum(died.values())}")
    assert set(killed) <= set(died), log
    assert all(n <= THREADS for n in died.values()), died
    assert len(load.failures) <= sum(died.values()), (load.reasons, died)


class _Wire:
    """A socket stand-in that records each send."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))


def _respond(response_class: type, status: str, headers: list[tuple[str, str]], chunks: list[bytes],
             method: str = "GET") -> list[bytes]:
    from gunicorn.config import Config
    from gunicorn.http.parser import RequestParser

    cfg = Config()
    source = iter([f"{method} / HTTP/1.1\r\nHost: x\r\n\r\n".encode()])
    req = next(RequestParser(cfg, source, ("127.0.0.1", 1)))
    wire = _Wire()
    resp = response_class(req, wire, cfg)
    resp.start_response(status, headers)
    for chunk in chunks:
        resp.write(chunk)
    resp.close()
    return wire.sends


def _no_date(data: bytes) -> bytes:
    return re.sub(rb"Date: [^\r]*\r\n", b"", data)


def test_a_response_head_leaves_with_its_first_body_bytes() -> None:
    """gunicorn sends the head and the body apart; a worker killed between the two
    leaves nginx with a 200 it has passed on and cannot retry, and a cut body."""
    from gunicorn.http.wsgi import Response

    from statekit.gunicorn import _OneSendResponse

    plain = _respond(Response, "200 OK", [("Content-Length", "5")], [b"hello"])
    assert len(plain) == 2  # what this guards against
    sends = _respond(_OneSendResponse, "200 OK", [("Content-Length", "5")], [b"hello"])
    assert len(sends) == 1 and sends[0].endswith(b"\r\n\r\nhello")
    assert _no_date(sends[0]) == _no_date(b"".join(plain))  # the same bytes, in one send
    # streamed: the head goes with the first chunk, the rest as gunicorn sends it
    chunked = _respond(_OneSendResponse, "200 OK", [], [b"ab", b"cd"])
    assert len(chunked) == 3 and chunked[0].endswith(b"\r\n\r\n2\r\nab\r\n") and chunked[-1] == b"0\r\n\r\n"
    # no body (HEAD, 204) and a large body: the head alone, then the body unchanged
    assert len(_respond(_OneSendResponse, "200 OK", [("Content-Length", "5")], [b"hello"], "HEAD")) == 1
    assert _respond(_OneSendResponse, "204 No Content", [], [])[0].startswith(b"HTTP/1.1 204")
    big = b"x" * (_OneSendResponse.COALESCE + 1)
    sends = _respond(_OneSendResponse, "200 OK", [("Content-Length", str(len(big)))], [big])
    assert len(sends) == 2 and sends[1] == big


def test_the_shutdown_report_counts_since_term(tmp_path: Path) -> None:
    """A worker killed before TERM has its own ``died with`` line; the shutdown line's
    ``lost_in_flight`` covers the same period as its other fields (since TERM)."""
    import threading

    from test_lifecycle_helpers import request, wait_until

    out: list[object] = []
    with ServeProcess(tmp_path, "--workers", "1", "--pre-stop-delay", "0") as srv:
        srv.wait_ready(1)
        victim = srv.workers()[0]

        def slow() -> None:
            try:
                out.append(request(srv.port, "/sleep/10", timeout=30))
            except Exception as e:  # noqa: BLE001 - the kill resets it
                out.append(e)

        t = threading.Thread(target=slow, daemon=True)
        t.start()
        time.sleep(1)  # the request is in the worker
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: "died with 1 requests in flight" in srv.log(), 20, "the died line")
        wait_until(lambda: len(srv.workers()) == 1 and victim not in srv.workers(), 20, "a replacement")
        srv.signal(signal.SIGTERM)
        assert srv.wait(30) == 0
        t.join(10)
        log = srv.log()
    assert out and isinstance(out[0], Exception)
    assert re.search(r"statekit: shutdown: in_flight_at_term=0 completed=0 rejected=0 force_killed=0 "
                     r"lost_in_flight=0 ", log), log


def test_busy_keep_alive_clients_do_not_starve_new_connections(tmp_path: Path) -> None:
    """The worker accepts only while a thread is free: kept-alive clients that keep
    every thread busy must still leave turns for a new connection (a readiness
    probe, a client without keep-alive)."""
    import http.client
    import threading

    from test_lifecycle_helpers import request

    stop = threading.Event()
    served = [0]

    def keep_alive_client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        while not stop.is_set():
            conn.request("GET", "/sleep/0.01")
            conn.getresponse().read()
            served[0] += 1
        conn.close()

    with ServeProcess(tmp_path, "--workers", "1") as srv:
        srv.wait_ready(1)
        clients = [threading.Thread(target=keep_alive_client, daemon=True) for _ in range(16)]
        for t in clients:
            t.start()
        stopper = threading.Timer(15, stop.set)  # bounds the load if new connections starve
        stopper.start()
        try:
            time.sleep(1)
            before = served[0]
            status = request(srv.port, "/", timeout=30)[0]
            answered_under_load = not stop.is_set()
        finally:
            stop.set()
            stopper.cancel()
            for t in clients:
                t.join(10)
    assert before > 20  # the kept-alive clients were being served
    assert status == 200 and answered_under_load
