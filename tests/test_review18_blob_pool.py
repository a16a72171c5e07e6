"""Review 18: an S3 store's connection pool is sized from the uploads it runs at once,
not for one upload.

The pool was ``max(10, 2 * max_concurrency + 2)``: 10 connections, while an
:class:`AsyncBlobStore` runs 32 puts at once (``upload_threads``), each with
``max_concurrency`` parts in flight. Measured on moto's server, 16 puts of 11 MiB at
once: 31 connections opened and 21 "Connection pool is full, discarding
connection" warnings in the first round, 19 and 19 in the next (each discarded
connection opened again). The pool is now ``concurrent_puts * (max_concurrency +
1)``: each put's parts, and one connection more per put thread for its reads,
stats and commits; ``concurrent_puts`` is the async store's ``upload_threads`` (32
by default, :data:`statekit.blobs.protocol.CONCURRENT_PUTS`, for a sync store too:
threads of a server).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator

import pytest

from statekit.blobs import AsyncBlobStore, BlobStore
from statekit.blobs.protocol import CONCURRENT_PUTS
from statekit.errors import ConfigError
from statekit.testing.contracts.blobs import expected, gen

pytestmark = pytest.mark.s3

MiB = 1024 * 1024
PUTS = 16


class _Pool(logging.Handler):
    """urllib3's connection pool log: connections opened, connections discarded."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.opened = self.discarded = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.opened += message.startswith("Starting new HTTP")
        self.discarded += "Connection pool is full" in message


@pytest.fixture
def pool_log() -> object:
    log = logging.getLogger("urllib3.connectionpool")
    handler, level = _Pool(), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    yield handler
    log.removeHandler(handler)
    log.setLevel(level)


def test_the_pool_is_sized_from_the_puts_at_once(s3_url: str) -> None:
    assert CONCURRENT_PUTS == 32
    assert BlobStore(s3_url).backend.client.meta.config.max_pool_connections == 32 * 3
    small = BlobStore(s3_url, concurrent_puts=4, max_concurrency=5)
    assert small.client.meta.config.max_pool_connections == 4 * 6
    store = AsyncBlobStore(s3_url, upload_threads=40)
    assert store.sync.client.meta.config.max_pool_connections == 40 * 3
    for bad in (0, -1, True, "8"):
        with pytest.raises(ConfigError, match="concurrent_puts"):
            BlobStore(s3_url, concurrent_puts=bad)


def test_concurrent_async_puts_discard_no_connection(s3_url: str, pool_log: _Pool) -> None:
    async def main() -> None:
        store = AsyncBlobStore(s3_url)  # 5 MiB parts: 11 MiB is 3 parts, 2 in flight
        try:
            async def body(seed: int) -> AsyncIterator[bytes]:
                for chunk in gen(11 * MiB, MiB, seed=seed):
                    yield chunk

            for _ in range(2):
                blobs = await asyncio.wait_for(asyncio.gather(*(
                    store.put(body(i), content_type="application/octet-stream") for i in range(PUTS))), 300)
                assert [b.size for b in blobs] == [11 * MiB] * PUTS
        finally:
            await asyncio.wait_for(store.aclose(), 60)

    asyncio.run(main())
    assert pool_log.opened > 0, "urllib3's log was not seen"
    assert pool_log.discarded == 0, f"{pool_log.discarded} connections discarded ({pool_log.opened} opened)"
    assert pool_log.opened <= PUTS * 3


def test_concurrent_sync_puts_discard_no_connection(s3_url: str, pool_log: _Pool) -> None:
    store = BlobStore(s3_url)
    start, errors = threading.Barrier(PUTS), []

    def put(seed: int) -> None:
        try:
            start.wait(60)
            blob = store.put(gen(11 * MiB, MiB, seed=seed), content_type="application/octet-stream")
            assert store.read_range(blob.key, 0, 100) == expected(100, MiB, seed=seed)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(PUTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "a put did not finish in 300 s"
    assert errors == []
    assert pool_log.discarded == 0, f"{pool_log.discarded} connections discarded ({pool_log.opened} opened)"
    store.close()
