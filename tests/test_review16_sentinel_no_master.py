"""A Sentinel that knows no master (a wrong service name in the URL, sentinels down)
is a ``BackendUnavailable`` whose message says which service, which sentinels were
asked and what each said, in a few words: redis-py's ``MasterNotFoundError`` message
held each sentinel client's repr (every connection keyword argument, ~1,500
characters a sentinel). Real sentinels; "down" is a loopback port bound and never
listened on, which refuses every connection (a stopped sentinel's port might be
taken by another test's server meanwhile)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from statekit.cache import Cache
from statekit.cache.aio import AsyncCache
from statekit.embedded import RedisSentinel
from statekit.errors import BackendUnavailable
from statekit.redis._sentinel import no_master
from statekit.sessions import SessionStore
from statekit.sessions.aio import AsyncSessionStore

pytestmark = pytest.mark.sentinel

KEYS = ["k" * 32]


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, never listening)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def _sync_cache(url: str) -> None:
    cache = Cache(url)
    try:
        cache.get("k")
    finally:
        cache.close()


def _sync_session(url: str) -> None:
    store = SessionStore(url, secret_keys=KEYS)
    try:
        store.load("a-session-id")
    finally:
        store.close()


def _async_cache(url: str) -> None:
    async def run() -> None:
        cache = AsyncCache(url)
        try:
            await cache.get("k")
        finally:
            await cache.aclose()

    asyncio.run(run())


def _async_session(url: str) -> None:
    async def run() -> None:
        async with AsyncSessionStore(url, secret_keys=KEYS) as store:
            await store.load("a-session-id")

    asyncio.run(run())


CALLS = [pytest.param(f, id=f.__name__[1:])
         for f in (_sync_cache, _sync_session, _async_cache, _async_session)]


def _message(call: Callable[[str], None], url: str) -> str:
    with pytest.raises(BackendUnavailable) as info:
        call(url)
    return str(info.value)


def _short(message: str) -> None:
    for leak in ("<redis.", "Connection(", "ConnectionPool", "connection_kwargs", "socket_timeout",
                 "object at 0x", "REDACTED", "secret"):
        assert leak not in message, f"{leak!r} in {message!r}"
    assert len(message) < 400, message


@pytest.mark.parametrize("call", CALLS)
def test_a_wrong_service_name_says_what_the_sentinel_watches(call: Callable[[str], None],
                                                             sentinel_setup: RedisSentinel) -> None:
    port = sentinel_setup.sentinels[0].port
    url = f"redis+sentinel://:secret@127.0.0.1:{port}/nosuch/0"
    message = _message(call, url)
    _short(message)
    assert "No master found for service 'nosuch'" in message
    assert f"sentinel 127.0.0.1:{port} knows no service 'nosuch' (it watches 'statekit')" in message


@pytest.mark.parametrize("call", CALLS)
def test_sentinels_down_say_each_address_and_its_error(call: Callable[[str], None], refusing_port: int,
                                                       sentinel_setup: RedisSentinel) -> None:
    live = sentinel_setup.sentinels[0].port
    url = (f"redis+sentinel://:secret@127.0.0.1:{refusing_port},127.0.0.1:{live}/nosuch/0"
           "?sentinel_password=secret")
    message = _message(call, url)
    _short(message)
    assert "No master found for service 'nosuch'" in message
    down = message.index(f"sentinel 127.0.0.1:{refusing_port} failed (ConnectionError: ")
    assert "Connection refused" in message[down:] or "Connect call failed" in message[down:], message
    # the live sentinel was asked too (after the first, which failed)
    assert f"sentinel 127.0.0.1:{live} " in message


@pytest.mark.parametrize("call", CALLS)
def test_all_sentinels_down(call: Callable[[str], None], refusing_port: int) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        second = other.getsockname()[1]
        url = f"redis+sentinel://:secret@127.0.0.1:{refusing_port},127.0.0.1:{second}/statekit/0"
        message = _message(call, url)
    _short(message)
    assert "No master found for service 'statekit'" in message
    for port in (refusing_port, second):
        assert f"sentinel 127.0.0.1:{port} failed (ConnectionError: " in message


def _state(**fields: Any) -> dict[str, Any]:
    state = {"name": "svc", "ip": "10.0.0.5", "port": 6379, "flags": "master", "is_master": True,
             "is_sdown": False, "is_odown": False, "num-other-sentinels": 0}
    state.update(fields)
    return state


def test_what_a_sentinel_that_knows_the_service_said() -> None:
    """Cases a real setup gives only after a wait: the master down, too few peers."""
    down = _state(flags="master,s_down,o_down", is_sdown=True, is_odown=True)
    peers = _state()
    demoted = _state(flags={"slave"}, is_master=False)
    message = no_master("svc", [("h1:1", {"svc": down}), ("h2:2", {"svc": peers}), ("h3:3", {"svc": demoted}),
                                ("h4:4", {f"s{i}": {} for i in range(7)})], min_other_sentinels=1)
    assert message == (
        "No master found for service 'svc': sentinel h1:1 reports its master 10.0.0.5:6379 down "
        "(flags master,s_down,o_down); "
        "sentinel h2:2 sees 0 other sentinels, fewer than min_other_sentinels 1; "
        "sentinel h3:3 reports its master 10.0.0.5:6379 down (flags slave); "
        "sentinel h4:4 knows no service 'svc' (it watches 's0', 's1', 's2', 's3', 's4' and 2 more)")
    not_asked = no_master("svc", [("h:1", None)], 0)
    assert not_asked == "No master found for service 'svc': sentinel h:1 was not asked"
    assert no_master("svc", [("h:1", {})], 0).endswith("knows no service 'svc' (it watches none)")
    long = no_master("svc", [("h:1", TimeoutError("x" * 1000))], 0)
    assert long.startswith("No master found for service 'svc': sentinel h:1 failed (TimeoutError: xxx")
    assert len(long) < 300
