"""Fork safety review ("cloned ten times"): objects a gunicorn master (``--preload``)
made and used before forking, held to "a forked child never uses its parent's
connections, threads, locks or tokens, and the parent is unaffected by the child".

Real forks (``multiprocessing``'s fork start method, ``os.fork`` where the child must
outlive a step of the parent); each child reports through a pipe and is waited for,
so no child outlives its test.

Holes found here (each test failed before its fix):

* an :class:`AsyncBlobStore` that had uploaded before the fork never uploaded in
  the child: its upload pool counted the parent's idle worker (a thread the child
  does not have) and queued the put for it, for ever;
* a forked child's counters started from the parent's values, so in multiprocess
  mode (``PROMETHEUS_MULTIPROC_DIR``) what the master counted before forking was
  counted again in every worker's file;
* one object whose ``reset_after_fork()`` raised left every object registered after
  it with its parent's connections (``statekit._fork`` stopped at the first error).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

from statekit import _fork
from statekit.blobs.aio import AsyncBlobStore
from statekit.metrics import Counters, flush, register_prometheus

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")


def _in_child(work: Callable[[], bytes], timeout: float = 30.0) -> bytes:
    """Run *work* in a child forked by the calling thread (``multiprocessing``'s
    fork start method); its answer, or the error it raised, is returned here."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    answers, answer = ctx.Pipe(duplex=False)

    def run() -> None:  # bytes over the pipe, a status byte first (nothing pickled)
        try:
            answer.send_bytes(b"+" + work())
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            answer.send_bytes(b"-" + f"{type(e).__name__}: {e}".encode())

    proc = ctx.Process(target=run, name="fork-review-child")
    proc.start()
    answer.close()  # the child's end: a child that dies unheard gives EOFError, not a hang
    try:
        if not answers.poll(timeout):
            raise AssertionError(f"no answer from the child in {timeout} s")
        said = answers.recv_bytes()
    finally:
        proc.join(timeout)
        answers.close()
    assert said[:1] == b"+" and proc.exitcode == 0, said
    return said[1:]


def test_an_async_blob_store_used_before_the_fork_uploads_in_the_child() -> None:
    """The master uploaded once (its pool keeps an idle worker thread); a worker's
    put is run by a thread of its own, and the master's store still works after."""
    store = AsyncBlobStore("memory://fork-review-blobs", upload_threads=2)
    try:
        first = asyncio.run(store.put(b"in the parent"))

        def child() -> bytes:
            async def put() -> bytes:
                blob = await asyncio.wait_for(store.put(b"in the child"), 5)
                return await store.read_range(blob.key, 0, blob.size)

            return asyncio.run(put())

        assert _in_child(child) == b"in the child"
        assert asyncio.run(store.read_range(first.key, 0, first.size)) == b"in the parent"
        again = asyncio.run(store.put(b"after"))
        assert asyncio.run(store.read_range(again.key, 0, again.size)) == b"after"
    finally:
        asyncio.run(store.aclose())


def _file_total(folder: str, family: str, instance: str) -> float:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    register_prometheus(registry)
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(f'{family}{{instance="{instance}"}} '):
            return float(line.split()[-1])
    raise AssertionError(f"{family} not reported from {folder}")


def test_a_forked_child_does_not_count_its_parents_counts_again(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Multiprocess mode: the master counted 5 before forking and wrote them to its
    own file; a worker that counts 1 more adds 1 to the instance's sum, not 6."""
    pytest.importorskip("prometheus_client")
    from statekit import metrics

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    counters = Counters("forkjobs", "t-fork", names=("runs",))
    try:
        counters.incr("runs", 5)
        flush()

        def child() -> bytes:
            counters.incr("runs")
            flush()
            return str(counters.get("runs")).encode()

        assert _in_child(child) == b"1"  # this process's own count
        assert counters.get("runs") == 5
        assert _file_total(str(tmp_path), "statekit_forkjobs_runs_total", "t-fork") == 6.0
    finally:
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
        thread = metrics._exporter.thread
        if thread is not None:  # it ends once the directory is gone from the environment
            thread.join(10)
        with metrics._exporter._lock:
            metrics._exporter._close_files()


class _Failing:
    """An object whose reset fails after noting that it was called."""

    def __init__(self) -> None:
        self.resets = 0

    def reset_after_fork(self) -> None:
        self.resets += 1
        raise RuntimeError("a reset that fails")


def test_a_failing_reset_does_not_skip_the_others() -> None:
    """Two objects whose reset raises: in the child both were reset (whichever came
    first, the other is not left holding its parent's connections)."""
    objects = [_Failing(), _Failing()]
    for obj in objects:
        _fork.reset_in_child(obj)
    try:
        said = _in_child(lambda: str([obj.resets for obj in objects]).encode())
        assert said == b"[1, 1]"
        assert [obj.resets for obj in objects] == [0, 0]  # the parent's were not touched
    finally:
        for obj in objects:
            _fork._objects.discard(obj)


def test_an_async_cache_on_a_callers_client_sends_nothing_on_the_parents_sockets(redis_url: str) -> None:
    """A master whose event loop (in a thread) used an ``AsyncCache`` on its own
    ``redis.asyncio`` client, and the client directly: a child's set runs on a
    connection of its own (it was written on the parent's pooled socket, its reply
    left there, and the child got a ``RuntimeError`` about another loop), and the
    parent's pooled connection is still the one it had (no stray reply found on it)."""
    import redis.asyncio

    from statekit.cache.aio import AsyncCache

    client = redis.asyncio.Redis.from_url(redis_url)
    cache = AsyncCache(client=client, namespace="fork-review-aio")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()

    def run(step: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(step, loop).result(10)

    try:
        run(cache.set("k", "parent"))
        before = run(client.client_id())

        def child() -> bytes:
            async def go() -> bytes:
                assert await asyncio.wait_for(cache.set("k", "child"), 5)
                return str(await asyncio.wait_for(client.client_id(), 5)).encode()

            return asyncio.run(go())

        assert int(_in_child(child)) != before
        assert run(client.client_id()) == before
        assert run(cache.get("k")) == "child"
    finally:
        run(cache.aclose())
        run(client.aclose())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()



def test_a_blob_store_opens_in_a_child_forked_while_another_thread_opens_one(s3_url: str) -> None:
    """A parent thread is inside ``BlobStore("s3://...")`` (holding the lock around
    botocore's shared data loader) when the process forks: the child opens its own
    store (it waited for ever for a lock no thread of its own would release)."""
    import signal

    from statekit.blobs import BlobStore, s3

    inside, go_on = threading.Event(), threading.Event()
    real = s3._session

    def slow_session(*args: Any) -> Any:
        session = real(*args)
        if threading.current_thread() is not threading.main_thread():
            with s3._loader_lock:  # the parent thread caught inside the lock at fork time
                inside.set()
                go_on.wait(10)
        return session

    s3._session = slow_session
    opener = threading.Thread(target=lambda: BlobStore(s3_url).close())
    try:
        opener.start()
        assert inside.wait(10)

        def child() -> bytes:
            def deadlocked(*_: Any) -> None:
                raise TimeoutError("the child waited 10 s for the loader lock")

            signal.signal(signal.SIGALRM, deadlocked)  # a deadlocked child ends, and says so
            signal.alarm(10)
            store = BlobStore(s3_url)
            try:
                blob = store.put(b"child")
                with store.open(blob.key) as f:
                    return bytes(f.read())
            finally:
                signal.alarm(0)
                store.close()

        assert _in_child(child) == b"child"
    finally:
        go_on.set()
        opener.join(10)
        s3._session = real


def _bounded(seconds: int) -> None:
    """In a child: raise after *seconds* (a deadlock ends, and says so)."""
    import signal

    def deadlocked(*_: Any) -> None:
        raise TimeoutError(f"the child waited {seconds} s (a lock no thread of its own holds)")

    signal.signal(signal.SIGALRM, deadlocked)
    signal.alarm(seconds)


def test_a_child_forked_while_a_parent_thread_makes_a_shared_client_makes_its_own(redis_url: str) -> None:
    """A parent thread is inside ``get_client`` (holding its lock: a broadcaster
    thread of the master starting up) when the process forks: the child's own
    ``get_client`` returns (it waited for ever)."""
    from statekit import redis as sk_redis

    with sk_redis._clients_lock:  # as the parent thread caught at fork time holds it

        def child() -> bytes:
            _bounded(10)
            return str(sk_redis.get_client(redis_url, socket_timeout=3.5).ping()).encode()

        assert _in_child(child) == b"True"


def test_a_cluster_client_a_parent_thread_was_connecting_at_fork_connects_in_the_child(
        redis_cluster_url: str) -> None:
    """statekit's Cluster client connects on first use, under a lock: a parent
    thread is inside that first connect when the process forks. The child's first
    command connects it there (it waited for ever for the parent thread's lock), and
    the parent's connect finishes as before."""
    from redis.cluster import RedisCluster

    from statekit import redis as sk_redis

    client: Any = sk_redis.create_client(redis_cluster_url)
    inside, go_on = threading.Event(), threading.Event()
    real = RedisCluster.__init__

    def paused(cluster: Any, **kwargs: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            inside.set()  # before the slot map is fetched: nothing of it set yet
            go_on.wait(10)
        real(cluster, **kwargs)

    RedisCluster.__init__ = paused  # type: ignore[method-assign]
    first = threading.Thread(target=client.ping)
    try:
        first.start()
        assert inside.wait(10)

        def child() -> bytes:
            _bounded(10)
            client.set("fork-review-cluster", b"child")
            return bytes(client.get("fork-review-cluster"))

        assert _in_child(child) == b"child"
    finally:
        go_on.set()
        first.join(10)
        RedisCluster.__init__ = real  # type: ignore[method-assign]
    assert client.get("fork-review-cluster") == b"child"
    client.close()


def test_a_child_forked_during_a_file_write_does_not_keep_its_record_locked(tmp_path: Any) -> None:
    """A ``file://`` write holds a ``flock`` on its record until its blob is linked:
    a lock left free tells a writer that died (its orphan record is then removed).
    A child forked during the write shared that lock and kept it for its whole life
    after the parent's write ended (a parent that died mid-write left a record that
    looked written to until the child exited); now the child lets go of it."""
    import fcntl
    import glob

    from statekit.blobs import BlobStore, local

    store = BlobStore(f"file://{tmp_path}/fork?create=1")
    inside, go_on = threading.Event(), threading.Event()
    real = local._link_exclusive

    def paused(src: str, dst: str) -> None:
        if "/.statekit/" not in dst and threading.current_thread() is not threading.main_thread():
            inside.set()  # the record is in place and locked, the blob not yet linked
            go_on.wait(10)
        real(src, dst)

    local._link_exclusive = paused
    writer = threading.Thread(target=lambda: store.put(b"written"))
    try:
        writer.start()
        assert inside.wait(10)
        [record] = glob.glob(f"{tmp_path}/fork/.statekit/meta/**/*.json", recursive=True)
        hold_rd, hold_wr = os.pipe()
        ready_rd, ready_wr = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child lives on (a worker) until the parent has looked
            try:
                os.write(ready_wr, b"r")  # running: past the fork handlers
                os.read(hold_rd, 1)
            finally:
                os._exit(0)
        try:
            assert os.read(ready_rd, 1) == b"r"
            go_on.set()
            writer.join(10)  # the parent's write is done: its lock closed
            probe = os.open(record, os.O_RDONLY)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: still held
            finally:
                os.close(probe)
        finally:
            os.write(hold_wr, b"x")
            os.waitpid(pid, 0)
            for fd in (hold_rd, hold_wr, ready_rd, ready_wr):
                os.close(fd)
    finally:
        go_on.set()
        writer.join(10)
        local._link_exclusive = real
        store.close()


def test_a_child_forked_while_the_listener_applies_a_message_trusts_its_near_cache(redis_url: str) -> None:
    """The parent's invalidation thread is applying a message at fork time (its
    "handling" flag set): in the child, nothing is pending (the flag stayed set, and
    every read there bypassed the near caches until its own thread applied one)."""
    import redis

    from statekit.redis.tracking import InvalidationListener

    client = redis.Redis.from_url(redis_url)
    listener = InvalidationListener(client, "fork-review:")
    try:
        listener._handling = True  # as its thread sets it while it applies a message

        def child() -> bytes:
            return str((listener.pending(), listener.tracked, listener.connected.is_set())).encode()

        assert _in_child(child) == b"(False, (), False)"
        assert listener.pending()  # the parent's: untouched
    finally:
        listener.stop()
        client.close()


def test_a_child_forked_while_the_master_computes_under_its_lease_does_not_hold_it(redis_url: str) -> None:
    """A ``--preload`` master's broadcaster holds a job's lease and is computing when
    a worker is forked. The worker holds no token and has a new owner id: its pass
    over the jobs finds the lease held by the master and computes nothing; the
    master's publish, fenced by its token, is still accepted after (no stale token)."""
    from statekit.broadcast import Broadcaster

    prefix = f"fork-review-{os.getpid()}"
    b = Broadcaster(redis_url, key_prefix=prefix)
    computing, go_on = threading.Event(), threading.Event()
    calls: list[int] = []

    @b.every(3600, name="users", lease=60)
    def users() -> int:
        calls.append(os.getpid())
        if os.getpid() == parent:
            computing.set()
            go_on.wait(10)
        return 42

    parent = os.getpid()
    try:
        b.run_pending()  # claims the slot, computes in a thread of its own
        assert computing.wait(10)
        owner, token = b.owner, b.jobs["users"].token
        assert token is not None

        def child() -> bytes:
            job = b.jobs["users"]
            mine = (b.owner != owner, job.token, job.running)
            b.run_pending()  # the lease is the master's: nothing to compute here
            return str((*mine, job.token, job.running, calls)).encode()

        assert _in_child(child) == f"(True, None, 0, None, 0, [{parent}])".encode()
        [computation] = [t for t in threading.enumerate() if t.name == "statekit-broadcast-users"]
        go_on.set()
        computation.join(10)  # the master's computation publishes, fenced by its token
        assert (b.counters.get("publishes"), b.counters.get("stale_tokens")) == (1, 0)
        assert b.retained("users") == (1, 42)
    finally:
        go_on.set()
        b.stop()


_PRELOADED_APP = """
import os

from statekit.broadcast import Broadcaster
from statekit.cache import Cache
from statekit.metrics import make_wsgi_app

cache = Cache("memory://serve-preloaded", prefix="pre")
cache.get("counted-once")  # at import: in the master, which imports this module for --broadcaster
bc = Broadcaster("memory://serve-preloaded")
metrics = make_wsgi_app()


def app(environ, start_response):
    if environ["PATH_INFO"] == "/metrics":
        return metrics(environ, start_response)
    cache.get("k")  # a miss, counted by the worker that served it
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


@pytest.mark.gunicorn
def test_serve_counts_what_the_master_counted_before_forking_once(tmp_path: Any) -> None:
    """``statekit serve --broadcaster app:bc`` imports the app's module in the master,
    whose cache counts a miss there; the 2 workers forked after count their own. A
    scrape reports the master's miss once: each worker reported it again before (2
    more than were made)."""
    from test_lifecycle_helpers import ServeProcess, request, wait_until
    from test_metrics import _sample, _spread

    def scraped(port: int) -> float | None:
        status, _, body = request(port, "/metrics")
        assert status == 200
        return _sample(body.decode(), "statekit_cache_misses_total", "pre:default")

    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with ServeProcess(tmp_path, "--workers", "2", "--broadcaster", "app:bc", app_source=_PRELOADED_APP,
                      env=env) as srv:
        srv.wait_ready(2)
        sent = _spread(srv.port, set(srv.workers()))
        wait_until(lambda: scraped(srv.port) == sent + 1, 20, f"a scrape showing {sent} + 1 misses")
        assert [scraped(srv.port) for _ in range(4)] == [sent + 1] * 4  # whichever worker answers


def test_a_fork_from_a_request_thread_gives_the_child_its_own_connections(redis_url: str) -> None:
    """A worker's request thread forks (multiprocessing in a view) while that thread
    and the main thread each have their own connection: the child, running on the
    forking thread, uses neither, and both parent threads keep theirs."""
    import redis

    from statekit.redis.transport import Transport

    client = redis.Redis.from_url(redis_url)
    transport = Transport(client, what="fork-review")
    main_id = transport.command("CLIENT", "ID")
    seen: dict[str, Any] = {}

    def request_thread() -> None:
        seen["before"] = transport.command("CLIENT", "ID")
        seen["child"] = int(_in_child(lambda: str(transport.command("CLIENT", "ID")).encode()))
        seen["after"] = transport.command("CLIENT", "ID")

    try:
        thread = threading.Thread(target=request_thread)
        thread.start()
        thread.join(30)
        assert seen["before"] == seen["after"] != main_id
        assert seen["child"] not in (main_id, seen["before"])
        assert transport.command("CLIENT", "ID") == main_id
    finally:
        transport.close()
        client.close()


def test_a_half_open_breaker_lets_a_forked_childs_first_call_try() -> None:
    """The parent's trial call is running when the worker is forked: the child's
    breaker does not wait for that trial (it runs in the parent, and would keep the
    child refused for a whole ``reset_timeout``); the child makes its own trial, and
    the parent's trial is still the only one there."""
    from statekit.breaker import HALF_OPEN, CircuitBreaker

    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=60, clock=lambda: now[0])
    breaker.failure()
    now[0] = 60.0
    assert breaker.allow()  # the parent's trial starts

    def child() -> bytes:
        return f"{breaker.state} {breaker.allow()} {breaker.allow()}".encode()

    assert _in_child(child) == f"{HALF_OPEN} True False".encode()
    assert not breaker.allow()  # the parent's trial still runs
