"""Review 15: the asyncio transport under cancellation (statekit.redis.aio), against
real servers. A task cancelled at any await point of a cache, session or broadcast
call (sending, waiting for its reply, half-way through a large reply) must leave
every later reply on the same pool its own (redis-py's CVE-2023-28858/28859), never
send a write again, and leave the pool bounded with no connection half-read. And a
Cluster script a primary lacks is run where it was just loaded, keys or none."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from statekit.redis.aio import AsyncTransport, create_async_client
from statekit.redis.scripts import Script

pytestmark = pytest.mark.redis

KEYLESS_SOURCE = "return 'ran ' .. ARGV[1]"
KEYLESS = Script("review15-keyless", KEYLESS_SOURCE,
                 hashlib.sha1(KEYLESS_SOURCE.encode()).hexdigest().encode())


def test_cluster_keyless_script_runs_on_the_primary_it_was_just_loaded_on(redis_cluster_url: str) -> None:
    """A keyless script every primary lacks (flushed, restarted): its NOSCRIPT is
    answered by loading it on one primary and running it again. redis-py routes a
    keyless EVALSHA to a random primary each time, so the run again must be sent to
    the primary that loaded it: the loads on the others are in the background and
    may not have reached them (a paused primary; here held until the end). Sent to
    a random primary it failed with 'NOSCRIPT' (a RedisReplyError) two times in
    three."""
    async def main() -> None:
        client = create_async_client(redis_cluster_url)
        t = AsyncTransport(client, what="test")
        held = asyncio.Event()
        loads: list[list[str]] = []

        async def held_load(nodes: list[Any], source: str) -> None:
            loads.append([n.name for n in nodes])
            await held.wait()

        t._load_on = held_load  # type: ignore[method-assign]
        try:
            for i in range(12):
                await client.execute_command("SCRIPT FLUSH", target_nodes=client.ALL_NODES)
                assert await t.script(KEYLESS, [], [str(i)]) == f"ran {i}".encode()
            # the other primaries' load was asked for (once: held, it stays under way)
            assert loads and all(len(names) == len(client.get_primaries()) - 1 for names in loads)
        finally:
            held.set()
            await t.aclose()
            await client.aclose()

    asyncio.run(main())
