"""Broadcast from asyncio (statekit.broadcast.aio) against the sync side, on every
server line: one set of keys, scripts and leases.

* a value published by a sync Broadcaster is seen by an async reader
  (``await value.changed()``), and one published by an AsyncBroadcaster by a sync
  reader;
* one computation per slot across a sync and an async broadcaster of one job, and
  the lease handed over between them when one stops;
* fencing: an AsyncBroadcaster's publish with an old token is refused, and a paused
  async leader's late result is refused after a sync broadcaster took over.

Async tests run their coroutine with ``asyncio.run`` inside a plain test function.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable

import pytest

from statekit.broadcast import Broadcaster, SharedValue, current_run
from statekit.broadcast.aio import AsyncBroadcaster
from statekit.embedded import RedisServer
from statekit.errors import StaleToken
from statekit.pytest_plugin import wait_for

pytestmark = pytest.mark.redis


@pytest.fixture
def prefix() -> str:
    # hubs (one per process, backend and prefix) outlive a test: a prefix each
    return "a" + uuid.uuid4().hex[:12]


async def until(predicate: Callable[[], object], what: str, timeout: float = 10.0,
                interval: float = 0.01) -> None:
    """Await *predicate* becoming true (polling, without blocking the loop), or fail
    naming *what* after *timeout* s. *interval* 0 checks at every pass of the loop,
    for a state that lasts only a few passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(interval)


def test_sync_publish_is_seen_by_async_reader_and_back(redis_line_url: str, prefix: str) -> None:
    sync_b = Broadcaster(redis_line_url, key_prefix=prefix)
    sync_reader = SharedValue("motd", default="", url=redis_line_url, key_prefix=prefix)
    async_reader = SharedValue("motd", default="", url=redis_line_url, key_prefix=prefix)

    async def main() -> None:
        assert await async_reader.aget() == ""  # loaded in a worker thread
        waiting = asyncio.ensure_future(async_reader.changed(timeout=10))
        await asyncio.sleep(0)  # the waiter is registered
        await asyncio.to_thread(sync_b.publish, "motd", {"text": "from sync"})
        assert await waiting == {"text": "from sync"}
        async with AsyncBroadcaster(redis_line_url, key_prefix=prefix) as async_b:
            assert await async_b.retained("motd") == (1, {"text": "from sync"})
            assert await async_b.publish("motd", {"text": "from async"}) == 2
        # both: the sync reader, first read here, loads version 2 from Redis itself,
        # before the subscriber's message reached the async reader (which showed
        # version 1 after the wait in 1 run of 5 under load here)
        await until(lambda: sync_reader.version == async_reader.version == 2, "both readers see version 2")

    asyncio.run(main())
    assert sync_reader.get() == {"text": "from async"}
    assert async_reader.get() == {"text": "from async"}
    assert sync_b.retained("motd") == (2, {"text": "from async"})


#: an async process: waits for "ping" (published by the test's sync process), answers "pong"
ASYNC_PROCESS = """
import asyncio, sys
from statekit.broadcast import SharedValue
from statekit.broadcast.aio import AsyncBroadcaster

async def main(url, prefix):
    ping = SharedValue("ping", url=url, key_prefix=prefix)
    await ping.aget()  # loaded (nothing published yet): what changed() waits to change
    waiting = asyncio.ensure_future(ping.changed(timeout=30))
    await asyncio.sleep(0.01)
    print("waiting", flush=True)
    seen = await waiting
    async with AsyncBroadcaster(url, key_prefix=prefix) as broadcaster:
        await broadcaster.publish("pong", {"seen": seen})

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_a_sync_process_and_an_async_process_read_each_others_publishes(
    redis_line_url: str, prefix: str
) -> None:
    pong = SharedValue("pong", url=redis_line_url, key_prefix=prefix)
    assert pong.get() is None
    child = subprocess.Popen([sys.executable, "-c", ASYNC_PROCESS, redis_line_url, prefix],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "waiting"
        Broadcaster(redis_line_url, key_prefix=prefix).publish("ping", [1, "from sync"])
        assert child.wait(60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    wait_for(lambda: pong.version == 1, what="the async process's publish reaches this process")
    assert pong.get() == {"seen": [1, "from sync"]}


def test_a_publish_from_another_event_loop_leaves_the_scheduler_running(redis_url: str, prefix: str) -> None:
    b = AsyncBroadcaster(redis_url, key_prefix=prefix)
    runs: list[int] = []

    @b.every(0.05, name="ticks")
    async def ticks() -> int:
        runs.append(1)
        return len(runs)

    async def main() -> None:
        async with b:
            await until(lambda: len(runs) >= 1, "a first computation")
            # a thread with its own loop (asyncio.run per call): its own connections
            assert await asyncio.to_thread(asyncio.run, b.publish("other", "from a thread")) == 1
            done = len(runs)
            await until(lambda: len(runs) > done + 1, "more computations on the first loop")
            assert await b.retained("other") == (1, "from a thread")

    asyncio.run(main())
    assert b.counters.get("backend_errors") == 0


def test_the_async_scheduler_rides_out_a_hung_redis(private_redis: RedisServer, prefix: str) -> None:
    """SIGSTOP for 1.5 s: calls time out (counted, retried), the loop keeps running,
    and once Redis answers again the job is computed and reaches a sync reader."""
    url = private_redis.url
    b = AsyncBroadcaster(url, key_prefix=prefix)
    reader = SharedValue("beat", default=0, url=url, key_prefix=prefix)
    reader.get()

    @b.every(0.1, name="beat", lease=1.0)
    async def beat() -> float:
        return time.time()

    async def main() -> float:
        lag = 0.0
        async with b:
            await until(lambda: reader.version >= 1, "a first publish reaches the reader")
            private_redis.pause()
            try:
                end = time.monotonic() + 1.5
                while time.monotonic() < end:  # a heartbeat: how long the loop was held
                    start = time.monotonic()
                    await asyncio.sleep(0.01)
                    lag = max(lag, time.monotonic() - start - 0.01)
                await until(lambda: b.counters.get("backend_errors") > 0, "the outage is counted")
            finally:
                private_redis.resume()
            seen = reader.version
            await until(lambda: reader.version > seen + 1, "publishes resume after the outage", timeout=20)
        return lag

    lag = asyncio.run(main())
    print(f"event loop lag during the outage: max {lag * 1000:.1f} ms")
    assert b.counters.get("computes") >= 3


def test_changed_times_out_when_nothing_is_published(redis_url: str, prefix: str) -> None:
    value = SharedValue("quiet", default=0, url=redis_url, key_prefix=prefix)

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await value.changed(timeout=0.05)

    asyncio.run(main())
    assert value._waiters == []


def test_one_computation_per_slot_across_sync_and_async(redis_line_url: str, prefix: str) -> None:
    slots: list[tuple[int, str]] = []
    lock = threading.Lock()
    sync_b = Broadcaster(redis_line_url, key_prefix=prefix)

    @sync_b.every(0.1, name="tick", lease=1.0)
    def sync_tick() -> str:
        run = current_run()
        assert run is not None
        with lock:
            slots.append((run.slot, "sync"))
        return "sync"

    async_b = AsyncBroadcaster(redis_line_url, key_prefix=prefix)

    @async_b.every(0.1, name="tick", lease=1.0)
    async def async_tick() -> str:
        run = current_run()
        assert run is not None
        await asyncio.sleep(0)
        with lock:
            slots.append((run.slot, "async"))
        return "async"

    def kinds() -> set[str]:
        with lock:
            return {kind for _, kind in slots}

    async def main() -> None:
        async_b.start()
        sync_b.start()
        await until(lambda: len(slots) >= 4, "four computations")
        leader = next(iter(kinds()))
        # the leader stops (releasing its lease): the other kind takes over
        if leader == "async":
            await async_b.stop()
        else:
            await asyncio.to_thread(sync_b.stop, 5)
        await until(lambda: len(kinds()) == 2, "the other broadcaster takes over")
        await async_b.stop()
        await asyncio.to_thread(sync_b.stop, 5)

    try:
        asyncio.run(main())
    finally:
        sync_b.stop(5)  # a no-op unless the test failed midway
    seen = [slot for slot, _ in slots]
    assert len(seen) == len(set(seen)), slots
    assert sync_b.counters.get("computes") + async_b.counters.get("computes") == len(slots)
    assert async_b.counters.get("leader_acquired") >= 1
    assert sync_b.counters.get("leader_acquired") >= 1
    assert not async_b.running and not sync_b.running
    assert current_run() is None


def test_stale_token_is_refused_across_sync_and_async(redis_line_url: str, prefix: str) -> None:
    sync_b = Broadcaster(redis_line_url, key_prefix=prefix)  # driven by run_pending: no thread
    release = threading.Event()
    started = threading.Event()

    def slow() -> str:  # a plain function: the async broadcaster runs it in a thread
        started.set()
        release.wait(10)
        return "old"

    async def main() -> None:
        async_b = AsyncBroadcaster(redis_line_url, key_prefix=prefix)
        old = (await async_b.backend.claim("fenced", async_b.owner, 10_000, -1)).token
        assert await async_b.backend.renew("fenced", async_b.owner, old, 10_000)
        assert await async_b.backend.release("fenced", async_b.owner, old)
        new = sync_b.backend.claim("fenced", sync_b.owner, 60_000, -1)
        assert new.token > old
        with pytest.raises(StaleToken):
            await async_b.publish("fenced", "stale", token=old)
        assert await async_b.retained("fenced") is None  # nothing changed
        assert await async_b.publish("fenced", "current", token=new.token) == 1

        # a paused async leader: claims, computes slowly, never renews
        async_b.every(0.1, name="job", lease=0.2, timeout=30)(slow)
        await async_b.run_pending()
        assert await asyncio.to_thread(started.wait, 5)
        sync_b.every(0.1, name="job", lease=0.2, timeout=30)(lambda: "new")
        await asyncio.to_thread(
            wait_for, lambda: sync_b.run_pending() and sync_b.retained("job") is not None,
            what="the sync broadcaster leads and publishes",
        )
        release.set()
        await until(lambda: async_b.counters.get("stale_tokens") == 1, "the async publish is refused")
        await async_b.stop()

    asyncio.run(main())
    wait_for(lambda: sync_b.jobs["job"].running == 0, what="the sync runs are over")
    retained = sync_b.retained("job")
    assert retained is not None and retained[1] == "new"
    assert sync_b.retained("fenced") == (1, "current")


def test_memory_backend_delivers_before_publish_returns(prefix: str) -> None:
    url = f"memory://{prefix}"
    value = SharedValue("mem", default=0, url=url, key_prefix=prefix)
    assert value.get() == 0

    async def main() -> None:
        b = AsyncBroadcaster(url, key_prefix=prefix)

        # one run, at start: every 0.05 s, a loaded machine (2 of 5 runs here)
        # took longer than an interval between the first publish and the stop,
        # and a second run published version 3
        @b.every(60, name="mem")
        async def mem() -> int:
            return 7

        assert await b.publish("mem", 1) == 1
        assert value.get() == 1  # the sync shared value of this process, at once
        waiting = asyncio.ensure_future(value.changed(timeout=10))
        await asyncio.sleep(0)
        async with b:
            assert await waiting == 7
        assert not b.running

    asyncio.run(main())
    assert Broadcaster(url, key_prefix=prefix).retained("mem") == (2, 7)


def test_cluster_publish_reaches_a_sync_reader(redis_cluster_url: str, prefix: str) -> None:
    reader = SharedValue("clustered", default=0, url=redis_cluster_url, key_prefix=prefix)
    assert reader.get() == 0

    async def main() -> None:
        async with AsyncBroadcaster(redis_cluster_url, key_prefix=prefix) as b:
            assert await b.publish("clustered", 41) == 1
            assert await b.publish("clustered", 42) == 2
            assert await b.retained("clustered") == (2, 42)

    asyncio.run(main())
    wait_for(lambda: reader.version == 2, what="the sync reader on the cluster sees version 2")
    assert reader.get() == 42
