"""OpenTelemetry's redis instrumentation and redis-py's own metrics hook see every
command statekit sends, on redis://, rediss:// (a TLS proxy in front of a server the
suite starts) and a Sentinel URL.

The instrumentation wraps ``redis.Redis.execute_command`` for the whole process, so
each test instruments and uninstruments around itself."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from test_redis_helpers import tls_url

from statekit.embedded import RedisSentinel, RedisServer
from statekit.redis import create_client
from statekit.redis import transport as transport_module
from statekit.redis.scripts import Script
from statekit.redis.transport import Transport

pytestmark = pytest.mark.redis

SOURCE = "return redis.call('INCR', KEYS[1])"
INCR = Script("incr", SOURCE, hashlib.sha1(SOURCE.encode()).hexdigest().encode())


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    srv = RedisServer()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sentinel() -> Iterator[RedisSentinel]:
    setup = RedisSentinel()
    setup.start()
    yield setup
    setup.stop()


@pytest.fixture(params=["redis", "rediss", "sentinel"])
def url(request: pytest.FixtureRequest, server: RedisServer, tmp_path: Path) -> Iterator[str]:
    if request.param == "redis":
        yield server.url
    elif request.param == "rediss":
        with tls_url(server, tmp_path) as tls:
            yield tls
    else:
        yield request.getfixturevalue("sentinel").url


class _ThisThread(SpanProcessor):
    """Keeps the names of the spans started on the thread that made it: the run's
    other threads (its shared clusters starting in the background) use redis-py too."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._thread = threading.get_ident()
        self._mine: set[int] = set()

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if threading.get_ident() == self._thread:
            self._mine.add(span.context.span_id)

    def on_end(self, span: Any) -> None:
        if span.context.span_id in self._mine:
            self.names.append(span.name)


@pytest.fixture
def spans() -> Iterator[Callable[[], list[str]]]:
    """The names of the spans this test's thread finished so far (while the
    instrumentation is on)."""
    mine = _ThisThread()
    provider = TracerProvider()
    provider.add_span_processor(mine)
    instrumentor = RedisInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield lambda: list(mine.names)
    finally:
        instrumentor.uninstrument()


def _commands(names: list[str]) -> list[str]:
    """The commands sent to Redis (the sentinels' own are left out)."""
    return [n.split()[0].upper() for n in names if not n.upper().startswith("SENTINEL")]


def test_every_transport_command_and_script_gets_a_span(url: str, spans: Callable[[], list[str]]) -> None:
    t = Transport(create_client(url), what="test")
    t.command("SCRIPT", "FLUSH")
    assert t.command("SET", "obs", "1") == b"OK"  # raw replies also through the instrumented client
    assert t.command("GET", "obs") == b"1"
    assert t.script(INCR, ["obs"], []) == 2  # EVALSHA (NOSCRIPT), SCRIPT LOAD, EVALSHA
    assert _commands(spans()) == ["SCRIPT", "SET", "GET", "EVALSHA", "SCRIPT", "EVALSHA"]


def test_redis_py_metrics_hook_sees_each_direct_command(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def record(command_name: str, duration_seconds: float, *args: Any, **kwargs: Any) -> None:
        assert duration_seconds >= 0
        seen.append(command_name)

    # the hook while redis-py's observability is on (the run below has the real one)
    monkeypatch.setattr(transport_module, "METRICS", SimpleNamespace(on=lambda: True, record=record))
    t = Transport(create_client(url), what="test")
    t.command("SET", "obs", "1")
    t.command(b"GET", "obs")
    t.script(INCR, ["obs"], [])
    assert seen[-3:] == ["SET", "GET", "EVALSHA"]


METRICS_RUN = """
import asyncio, json, sys
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from redis.observability.config import MetricGroup, OTelConfig
from redis.observability.providers import get_observability_instance
from statekit.cache import AsyncCache, Cache

reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
url = sys.argv[1]
sync, aio = Cache(url, namespace="sync"), AsyncCache(url, namespace="aio")


def counted():
    seen = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == "db.client.operation.duration":
                    for p in m.data.data_points:
                        name = p.attributes.get("db.operation.name")
                        seen[name] = seen.get(name, 0) + p.count
    return seen


async def main():
    sync.set("k", 1)  # before observability is on: redis-py caches "off"
    await aio.set("k", 1)
    assert sync.get("k") == 1 and await aio.get("k") == 1
    before = counted()
    get_observability_instance().init(OTelConfig(metric_groups=[MetricGroup.COMMAND]))  # on now
    for _ in range(3):
        assert sync.get("k") == 1
        assert await aio.get("k") == 1
    after = counted()
    print(json.dumps({"before": before, "after": after}))
    await aio.aclose()

asyncio.run(main())
"""


def test_redis_py_metrics_see_direct_commands_once_enabled(server: RedisServer, tmp_path: Path) -> None:
    """redis-py's own metrics (OTel, ``db.client.operation.duration``) enabled after a
    first command (redis-py has cached "off" then) count every command the sync and
    the asyncio transports send from then on: in a process of its own (the meter
    provider is global)."""
    import subprocess
    import sys

    script = tmp_path / "metrics_run.py"
    script.write_text(METRICS_RUN)
    proc = subprocess.run([sys.executable, str(script), server.url], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    before, after = seen["before"], seen["after"]
    assert before == {}  # off: nothing recorded
    # 3 sync and 3 async gets, each one MGET (the value and its namespace generation)
    assert after.get("MGET", 0) == 6, after


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """How many commands the test's thread has sent to Redis so far (not to
    sentinels): every ``send_packed_command`` of a redis-py connection, which is all
    a statekit command can go through (the thread, as :func:`spans` counts)."""
    import redis.connection

    count = [0]
    send = redis.connection.AbstractConnection.send_packed_command
    mine = threading.get_ident()

    def counting(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        packed = b"".join(command) if isinstance(command, list) else bytes(command)
        if b"SENTINEL" not in packed.upper()[:40] and threading.get_ident() == mine:
            count[0] += 1
        return send(self, command, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return lambda: count[0]


def _seen(spans: Callable[[], list[str]], sent: Callable[[], int], call: Callable[[], Any]) -> list[str]:
    """Run *call*; the commands it sent, each of which has its span (asserted)."""
    spans_before, sent_before = len(_commands(spans())), sent()
    call()
    names = _commands(spans())[spans_before:]
    assert len(names) == sent() - sent_before > 0, names
    return names


def test_cache_get_is_seen(url: str, spans: Callable[[], list[str]], sent: Callable[[], int]) -> None:
    from statekit.cache import Cache

    cache = Cache(url, prefix="obs")
    cache.set("k", 1)
    assert _seen(spans, sent, lambda: cache.get("k"))


def test_session_load_and_save_are_seen(url: str, spans: Callable[[], list[str]],
                                        sent: Callable[[], int]) -> None:
    from statekit.sessions import SessionStore

    store = SessionStore(url, secret_keys=["k" * 32], key_prefix="obs")
    session = store.create({"a": 1})
    session["b"] = 2
    assert _seen(spans, sent, lambda: store.save(session))
    loaded: list[Any] = []
    assert _seen(spans, sent, lambda: loaded.append(store.load(session.sid)))
    assert loaded[0] is not None and loaded[0]["b"] == 2


def test_broadcast_publish_is_seen(url: str, spans: Callable[[], list[str]], sent: Callable[[], int]) -> None:
    from statekit.broadcast import Broadcaster

    b = Broadcaster(url, key_prefix="obs")
    b.publish("warm", 0)
    assert "EVALSHA" in _seen(spans, sent, lambda: b.publish("v", 1))
