"""The cache on a 3-master Redis Cluster (issue 19): a namespace's keys spread over
every master, clear() is one command and no read that starts after it, in any
process, serves a cleared value (near cache or not), bulk calls send each node one pipeline, and keys of the
single-slot layout are never read and are swept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from statekit.cache import Cache
from statekit.cache import redis as rediscache
from statekit.embedded import RedisCluster
from statekit.errors import BackendUnavailable
from statekit.pytest_plugin import redis_command_calls, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


def _keys_per_master(cluster: RedisCluster, match: str) -> list[int]:
    counts = []
    for node in cluster.masters():
        with node.client() as r:
            counts.append(sum(1 for _ in r.scan_iter(match=match, count=1000)))
    return counts


def _listening(cache: Cache) -> None:
    """Wait until *cache*'s generation listener tracks its counter, then make one
    read, so the next calls trust the generation (no GET of the counter)."""
    cache.get("warm")
    listener: Any = cache._listener
    assert listener is not None
    assert wait_for(lambda: listener.connected.is_set() and listener.covers(cache.base + "gen"), 10,
                    "the generation listener")
    cache.get("warm")


def test_a_namespace_spreads_over_every_master(redis_cluster_url: str, redis_cluster: RedisCluster) -> None:
    """3,000 set()s in one namespace: each of the 3 masters holds 25-42 % of them."""
    cache = Cache(redis_cluster_url, prefix="spread")
    for i in range(3000):
        cache.set(f"user:{i}", i, ttl=600)
    counts = _keys_per_master(redis_cluster, "spread:*")
    assert sum(counts) == 3000 and len(counts) == 3
    shares = [c / 3000 for c in counts]
    print(f"keys per master: {counts} ({', '.join(f'{s:.1%}' for s in shares)})")
    assert all(0.25 <= s <= 0.42 for s in shares), shares
    assert cache.get_many([f"user:{i}" for i in range(3000)]) == {f"user:{i}": i for i in range(3000)}


def test_clear_is_one_command(redis_cluster_url: str, redis_cluster: RedisCluster,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """clear() is one command, an INCR, whatever the namespace holds, then reads the
    counter once on its node (the barrier: the invalidation has reached every
    listener when clear() returns); the sweep, later and in the background, is held
    back here to count the clear alone."""
    cache = Cache(redis_cluster_url, prefix="one")
    cache.set_many({f"k{i}": i for i in range(1000)}, ttl=600)
    swept: list[int] = []
    monkeypatch.setattr(rediscache.sweeper, "submit", lambda backend, below, delay=0.0: swept.append(below))
    masters = redis_cluster.masters()
    _listening(cache)
    for node in masters:
        with node.client() as r:
            r.config_resetstat()
    assert cache.clear() is True
    calls: dict[str, int] = {}
    for node in masters:
        with node.client() as r:
            for name, n in redis_command_calls(r).items():
                # this test's own connections' handshakes, the generation listener's pings
                if name not in ("hello", "client", "ping"):
                    calls[name] = calls.get(name, 0) + n
    assert calls == {"incr": 1, "get": 1}
    assert swept == [1]
    assert cache.get_many([f"k{i}" for i in range(1000)]) == {}


#: the start of a reader process (tests/test_cluster_clear_barrier.py uses it too):
#: ``url``, ``near``, ``prefix`` and the first read's ``keys`` are set before it; a
#: cache whose generation listener is up, its reads of the counter counted in
#: ``counter_reads``; prints "ready"
READER_START = textwrap.dedent("""
    from statekit.cache import Cache
    cache = Cache(url, prefix=prefix, near_cache=near)
    cache.get_many(keys)
    backend, listener = cache._backend, cache._listener
    assert listener is not None and listener.connected.wait(10)
    counter_reads = 0
    command = backend.transport.command

    def counting(*args):
        global counter_reads
        counter_reads += args[1:] == (backend._gen_key,)
        return command(*args)

    backend.transport.command = counting
    print("ready", flush=True)
""")

_READER = textwrap.dedent("""
    import json, sys, time
    url, near, seconds = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3])
    prefix, keys = "stale", [f"k{i}" for i in range(50)]
""") + READER_START + textwrap.dedent("""
    seen, reads, end = {}, 0, time.time() + seconds
    while time.time() < end:
        started = time.time()
        found = (cache.get_many(keys) if reads % 2
                 else {k: v for k in keys[:5] if (v := cache.get(k)) is not None})
        reads += 1
        for value in set(found.values()):
            seen.setdefault(value, []).append(started)
    print(json.dumps({"seen": {v: [len(t), t[0], t[-1000:]] for v, t in seen.items()}, "reads": reads,
                      "counter_reads": counter_reads}), flush=True)
""")
CLEARS = 8


@pytest.mark.parametrize("near", [False, True], ids=["plain", "near-cache"])
def test_no_old_value_after_clear_from_another_process(redis_cluster_url: str, near: bool) -> None:
    """Another process reads the namespace in a loop while this one sets a round's
    value in every key and clears the namespace, 8 times: no read that began after a
    clear() returned serves that round's value, near cache or not (the default: the
    generation listener keeps the reader's generation current). The reader trusts its
    generation between clears (it reads the counter far less often than it reads
    values). The number of stale reads is printed (bench/cluster.py reports it too)."""
    cache = Cache(redis_cluster_url, prefix="stale")
    cache.set_many({f"k{i}": "v0" for i in range(50)}, ttl=600)
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", _READER, redis_cluster_url, "1" if near else "0",
                             str(CLEARS * 0.3 + 1.5)], stdout=subprocess.PIPE, text=True, env=env)
    cleared: list[float] = []
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        for n in range(CLEARS):
            time.sleep(0.3)  # the reader reads round n's value meanwhile
            assert cache.clear() is True
            cleared.append(time.time())
            cache.set_many({f"k{i}": f"v{n + 1}" for i in range(50)}, ttl=600)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = json.loads(out.strip().splitlines()[-1])
    seen = result["seen"]
    stale = 0
    for n in range(CLEARS):
        assert f"v{n}" in seen, f"the reader never read round {n}'s value"
        count, first, last = seen[f"v{n}"]
        assert first < cleared[n]  # it did read round n's value before its clear
        stale += sum(1 for started in last if started > cleared[n])
    assert seen[f"v{CLEARS}"][2][-1] > cleared[-1]  # and read on after the last clear
    print(f"{stale} old values read after clear() returned ({CLEARS} clears, {result['reads']} reads, "
          f"{result['counter_reads']} reads of the counter, near_cache={near})")
    assert stale == 0
    assert CLEARS <= result["counter_reads"] < result["reads"] / 4


def test_a_namespace_opened_later_is_tracked_too(redis_cluster_url: str) -> None:
    """A namespace of a family opened after its listener started: the listener adds
    its counter (one reconnect), and a clear made elsewhere (the INCR clear() sends,
    here from a plain client, so nothing in this process hears of it but the
    listeners) is seen by the very next read, 5 clears in a row."""
    from statekit.redis import create_client

    writer = Cache(redis_cluster_url, prefix="later").namespace("n")
    root = Cache(redis_cluster_url, prefix="later")
    _listening(root)
    reader = root.namespace("n")
    assert reader.get("k") is None  # its first use adds its counter
    listener: Any = root._listener
    assert wait_for(lambda: listener.connected.is_set() and listener.covers(reader.base + "gen"), 10,
                    "the namespace's counter tracked")
    assert listener.prefixes == ("later:{default}:gen", "later:{n}:gen")
    other = create_client(redis_cluster_url)
    for n in range(5):
        writer.set("k", n)
        assert reader.get("k") == n
        assert reader.get("k") == n
        changes = listener.counter_changes
        other.incr("later:{n}:gen")
        # Redis writes the invalidation in the same event-loop pass as the INCR's reply,
        # but not always before it: the read waits for the invalidation to be applied
        # (the bound the module docstring gives), then never sees the old value. Not
        # "or listener.pending()": that is true for any unread reply, the listener's
        # own PONG too, so it once let the read run before the invalidation came
        wait_for(lambda: listener.counter_changes > changes, 5, "the counter's invalidation")  # noqa: B023
        assert reader.get("k") is None
    assert listener.counter_changes >= 5
    other.close()


def test_bulk_calls_send_one_pipeline_per_node(redis_cluster_url: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """get_many / set_many / delete_many of 100 keys: each master gets one packed
    write (its share of the commands, one per slot), and every key is right."""
    import redis

    cache = Cache(redis_cluster_url, prefix="bulk")
    cache.set("warm", 1)
    _listening(cache)
    items = {f"item:{i}": {"n": i} for i in range(100)}
    cache.set_many(items, ttl=60)  # this thread's connection to every master is made
    sends: dict[tuple[str, int], int] = {}
    real = redis.Connection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        if threading.current_thread() is not threading.main_thread():  # the listener's pings
            return real(self, command, check_health)
        sends[(self.host, self.port)] = sends.get((self.host, self.port), 0) + 1
        return real(self, command, check_health)

    monkeypatch.setattr(redis.Connection, "send_packed_command", counting)
    for call in (lambda: cache.set_many(items, ttl=60), lambda: cache.get_many(list(items)),
                 lambda: cache.delete_many(list(items))):
        sends.clear()
        result = call()
        assert sorted(sends.values()) == [1, 1, 1], sends
        if isinstance(result, dict):
            assert result == items
    assert cache.get_many(list(items)) == {}


def test_bulk_calls_of_many_keys_are_right(redis_cluster_url: str) -> None:
    cache = Cache(redis_cluster_url, prefix="many")
    items = {f"k{i}": i for i in range(2500)}
    assert cache.set_many(items, ttl=60)
    keys = [*items, "missing"]
    assert cache.get_many(keys) == items
    assert cache.delete_many(keys[:1000]) == 1000
    assert cache.get_many(keys) == {k: v for k, v in items.items() if int(k[1:]) >= 1000}


def test_single_key_operations_work_on_every_node(redis_cluster_url: str,
                                                  redis_cluster: RedisCluster) -> None:
    """incr, add, touch, get_or_set and single-flight locks land on the key's own
    node: after 300 keys every master took some."""
    cache = Cache(redis_cluster_url, prefix="per")
    for i in range(300):
        assert cache.incr(f"n{i}", 2) == 2
        assert cache.add(f"a{i}", i) and not cache.add(f"a{i}", -1)
        assert cache.touch(f"a{i}", 60)
        assert cache.get_or_set(f"g{i}", lambda i=i: i * 10, ttl=60) == i * 10
    counts = _keys_per_master(redis_cluster, "per:*")
    assert len(counts) == 3 and all(c > 100 for c in counts), counts


@pytest.fixture
def old_layout(redis_cluster_url: str) -> Iterator[Any]:
    from statekit.redis import create_client

    client = create_client(redis_cluster_url)
    yield client
    client.close()


def test_old_single_slot_layout_is_never_read_and_is_swept(redis_cluster_url: str, old_layout: Any) -> None:
    """Upgrading from the single-slot layout (<prefix>:{<ns>}:<gen>:<key>): its values
    are not served (a miss, recomputed), the shared generation counter is kept, and
    the sweep after the next clear removes the old keys."""
    for i in range(200):
        old_layout.set(f"mig:{{default}}:0:k{i}", b"\x01\"old\"")  # no TTL: would stay for ever
    cache = Cache(redis_cluster_url, prefix="mig")
    assert cache.get_many([f"k{i}" for i in range(200)]) == {}
    assert cache.get_or_set("k0", lambda: "new", ttl=60) == "new"
    cache.clear()
    assert old_layout.get("mig:{default}:gen") == b"1"  # the counter old processes read too

    def old_keys() -> int:
        return sum(1 for _ in old_layout.scan_iter(match="mig:{default}:0:*", count=1000))

    assert wait_for(lambda: old_keys() == 0 and rediscache.sweeper.wait(0), 60, "the sweep")
    assert cache.get("k0") is None


def test_a_bulk_write_whose_outcome_is_unknown_is_not_sent_again(own_redis_cluster: RedisCluster) -> None:
    """set_many over 3 masters while one is paused (SIGSTOP) past the socket timeout:
    BackendUnavailable; the other masters' shares are written; once the paused master
    runs again it executes its share exactly once (counted by the server)."""
    cluster = own_redis_cluster
    cache = Cache(cluster.url + "?retries=0", prefix="unknown", timeout=0.3)
    cache.set("warm", 1)  # the slot map is read, the script loaded
    items = {f"k{i}": i for i in range(60)}
    paused = cluster.nodes[0]
    with paused.client() as r:
        r.config_resetstat()
    paused.pause()
    try:
        with pytest.raises(BackendUnavailable, match="outcome"):
            cache.set_many(items, ttl=60)
    finally:
        paused.resume()
    with paused.client() as r:
        names = [f"unknown:{{}}{{default}}:0:{k}" for k in items]
        slots = {r.execute_command("CLUSTER KEYSLOT", n) for n in names if _owns(r, n)}
        assert slots
        assert wait_for(lambda: redis_command_calls(r).get("evalsha", 0) >= len(slots), 10,
                        "the paused share")
        time.sleep(0.5)  # nothing more arrives: the share was sent once
        assert redis_command_calls(r).get("evalsha") == len(slots)
    assert cache.get_many(list(items)) == items


def _owns(r: Any, key: str) -> bool:
    slot = r.execute_command("CLUSTER KEYSLOT", key)
    for start, end, primary, *_ in r.execute_command("CLUSTER SLOTS"):
        if int(start) <= slot <= int(end):
            return int(primary[1]) == r.connection_pool.connection_kwargs["port"]
    return False


def test_a_one_node_cluster_is_listened_to() -> None:
    """A one-master cluster (its node lists itself in CLUSTER NODES without a host,
    having met no other): the generation listener connects all the same, so reads
    trust the generation (no read of the counter per call; before the fix every call
    read it and near caches never turned on), and a clear from another cache object
    is seen by the next read."""
    with RedisCluster(masters=1) as cluster:
        with cluster.nodes[0].client() as r:
            nodes = r.execute_command("CLUSTER NODES")  # parsed by redis-py: {address: info}
            assert any(str(addr).startswith(":") for addr in nodes)  # the host-less line
        cache, other = Cache(cluster.url, prefix="one"), Cache(cluster.url, prefix="one")
        try:
            cache.set("k", 1)
            _listening(cache)
            backend: Any = cache._backend
            command = backend.transport.command
            counter_reads = 0

            def counting(*args: Any) -> Any:
                nonlocal counter_reads
                counter_reads += args[1:] == (backend._gen_key,)
                return command(*args)

            backend.transport.command = counting
            assert [cache.get("k") for _ in range(20)] == [1] * 20
            assert counter_reads == 0
            assert other.clear() is True
            assert cache.get("k") is None
        finally:
            cache.close()
            other.close()
