"""Review of the Redis layer under cancellation and faults (statekit/redis: aio.py,
transport.py, __init__.py), sync and asyncio, standalone, Sentinel and Cluster.

Each test drives one interleaving or fault at a chosen point (a read paused on an
event, a reply the server is made to send), never a sleep that hopes the timing is
right. What each checks is in its docstring."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from statekit.redis import create_client
from statekit.redis.aio import AsyncTransport, create_async_client
from statekit.redis.scripts import Script
from statekit.redis.transport import Transport

pytestmark = pytest.mark.redis


def _script(name: str, source: str) -> Script:
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest().encode())


def run(make: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(make())  # type: ignore[arg-type]


# -- a reply that says nothing was applied (READONLY, LOADING) ----------------------

# The first attempt is answered as a demoted master (READONLY) or a loading server
# (LOADING) answers: with nothing applied but the attempt count (the test's own
# bookkeeping, KEYS[2]); the next attempt applies the write. The retry rule: such a
# reply drops the connection and the write is sent again (a Sentinel connection asks
# for the master again), applied once.
_REFUSED_ONCE = """
if redis.call('INCR', KEYS[2]) == 1 then return redis.error_reply(ARGV[1]) end
return redis.call('INCR', KEYS[1])
"""
REFUSED_ONCE = _script("refused-once", _REFUSED_ONCE)
REPLIES = {
    "READONLY": "READONLY You can't write against a read only replica.",
    "LOADING": "LOADING Redis is loading the dataset in memory",
}


def _url(kind: str, redis_url: str, sentinel_url: str) -> str:
    return f"{sentinel_url if kind == 'sentinel' else redis_url}?retries=2&retry_backoff_cap=0.01"


@pytest.mark.sentinel
@pytest.mark.parametrize("kind", ["standalone", "sentinel"])
@pytest.mark.parametrize("reply", sorted(REPLIES))
def test_a_write_refused_unapplied_is_sent_again_and_applied_once_async(
        kind: str, reply: str, redis_url: str, sentinel_url: str) -> None:
    """asyncio: redis-py's Sentinel connection turns READONLY into a
    ``ConnectionError`` and LOADING is one (``BusyLoadingError``): both were taken
    for a dropped connection after sending (outcome unknown, not retried), where the
    sync transport retries them as the rule says."""
    url = _url(kind, redis_url, sentinel_url)
    keys = ["{r}n", "{r}attempts"]

    async def main() -> None:
        client = create_async_client(url)
        t = AsyncTransport(client, what="test")
        try:
            await t.command(b"DEL", *keys)
            assert await t.script(REFUSED_ONCE, keys, [REPLIES[reply]]) == 1
            assert await t.command(b"GET", keys[1]) == b"2"  # two attempts, the write applied once
        finally:
            await t.aclose()
            await client.aclose()

    run(main)
    # the sync transport, for comparison (the one rule)
    sync = Transport(create_client(url), what="test")
    try:
        sync.command(b"DEL", *keys)
        assert sync.script(REFUSED_ONCE, keys, [REPLIES[reply]]) == 1
        assert sync.command(b"GET", keys[1]) == b"2"
    finally:
        sync.client.close()
