"""Under gevent (monkey-patched, in a subprocess), a paused Redis (SIGSTOP on a
server this test started, SIGCONT after) makes every path raise
``BackendUnavailable`` from its socket timeout, without blocking the gevent hub:
other greenlets keep running while the call waits. (bench/transport.py
prints how long each call waited against ``socket_timeout``.)"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from statekit.embedded import RedisServer

pytestmark = pytest.mark.redis

TIMEOUT = 0.5

CHILD = r"""
from gevent import monkey
monkey.patch_all()

import json, sys, time
import gevent

from statekit.errors import BackendUnavailable

url, path = sys.argv[1], sys.argv[2]
if path in ("command", "script"):
    import hashlib
    from statekit.redis import create_client
    from statekit.redis.scripts import Script
    from statekit.redis.transport import Transport

    t = Transport(create_client(url), what="gevent")
    src = "return redis.call('INCR', KEYS[1])"
    script = Script("incr", src, hashlib.sha1(src.encode()).hexdigest().encode())
    call = (lambda: t.command("GET", "k")) if path == "command" else (lambda: t.script(script, ["n"], []))
elif path == "cache-get":
    from statekit.cache import Cache

    cache = Cache(url, prefix="gevent", failure_threshold=100)
    cache.set("k", 1)
    call = lambda: cache.get("k")
elif path == "session-load":
    from statekit.sessions import SessionStore

    store = SessionStore(url, secret_keys=["k" * 32], key_prefix="gevent")
    sid = store.create({"a": 1}).sid
    call = lambda: store.load(sid)
else:
    from statekit.broadcast import Broadcaster

    b = Broadcaster(url, key_prefix="gevent")
    call = lambda: b.publish("v", 1)
call()  # connected, scripts loaded
print("ready", flush=True)
sys.stdin.readline()  # the server is paused now

ticks = [0]

def tick():
    while True:
        ticks[0] += 1
        gevent.sleep(0.01)

ticker = gevent.spawn(tick)
start = time.monotonic()
try:
    call()
    outcome = "returned"
except BackendUnavailable as e:
    outcome = "unavailable: " + str(e)
elapsed = time.monotonic() - start
ticker.kill()
print(json.dumps({"outcome": outcome, "elapsed": elapsed, "ticks": ticks[0]}), flush=True)
"""

def run_paused(server: RedisServer, path: str) -> dict[str, object]:
    """Run *path* in a gevent child while *server* is paused; the child's report."""
    url = f"{server.url}?socket_timeout={TIMEOUT}&socket_connect_timeout={TIMEOUT}&retries=0"
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        server.pause()
        try:
            child.stdin.write("go\n")
            child.stdin.flush()
            out, _ = child.communicate(timeout=30)
        finally:
            server.resume()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, out
    report: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize("path", ["command", "script", "cache-get", "session-load", "broadcast-publish"])
def test_paused_redis_times_out_under_gevent(server: RedisServer, path: str) -> None:
    report = run_paused(server, path)
    outcome = str(report["outcome"])
    if path == "cache-get":  # a cache outage degrades to a miss behind the breaker
        assert outcome in ("returned",) or outcome.startswith("unavailable"), report
    else:
        assert outcome.startswith("unavailable"), report
        assert "imeout" in outcome, report  # the socket timeout fired, nothing else
    assert int(str(report["ticks"])) > 0, report  # the hub kept running other greenlets


PRELOADED = r"""
import json, sys
from statekit.redis import create_client
from statekit.redis.transport import Transport

# made before gevent patches threading, as gunicorn --preload -k gevent makes it in
# the master; used by greenlets once the worker patched
t = Transport(create_client(sys.argv[1]), what="preload")
if sys.argv[2] == "used":  # the app touched Redis at import: a connection made unpatched
    t.command("PING")
from gevent import monkey
monkey.patch_all()
import gevent
errors = []
ids = set()

def work():
    for _ in range(100):
        try:
            t.command("SET", "k", "v")
            t.command("GET", "k")
        except Exception as e:
            errors.append(repr(e))
    ids.add(t.command("CLIENT", "ID"))

gevent.joinall([gevent.spawn(work) for _ in range(20)])
print(json.dumps({"errors": errors[:3], "failed": len(errors), "connections": len(ids)}))
"""


@pytest.mark.parametrize("before", ["unused", "used"])
def test_a_transport_made_before_gevent_patched_gives_each_greenlet_its_connection(
        server: RedisServer, before: str, tmp_path: Any) -> None:
    """A transport made before ``monkey.patch_all()`` (a preloaded app) held a real
    thread local, so the greenlets of the worker shared connections: made after the
    patch, they interleaved their commands on them (failures); made before it (the
    app used Redis at import), one real socket that blocked the whole worker per
    command. Each greenlet now keeps a connection of its own (its ``CLIENT ID``):
    4,000 commands, none failed. Both fail on the code before."""
    child = tmp_path / "preloaded.py"  # a script file: run with -c, the failure did not show
    child.write_text(PRELOADED)
    out = subprocess.run([sys.executable, str(child), server.url, before], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["failed"] == 0, report
    assert report["connections"] == 20, report
