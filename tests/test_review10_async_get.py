"""Review (issue 18) of the AsyncCache get path rewrite (e3f95d6): a lone get sent from
its own plan keeps the loop's in-flight count right when it is cancelled, so later gets
are neither stuck in batches nor sent alone while another is in flight; batched gets
cancelled one by one leave the others their values."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from statekit.cache import AsyncCache

pytestmark = pytest.mark.redis


def test_a_cancelled_lone_get_leaves_nothing_in_flight(redis_url: str) -> None:
    async def body() -> tuple[list[int], list[object], object]:
        c = AsyncCache(redis_url, namespace="review10-inflight")
        try:
            await c.set("k", "v")
            backend = c._backend
            assert backend is not None
            state = backend._loop_gets()
            seen = []
            for _ in range(5):
                task = asyncio.ensure_future(c.get("k"))
                await asyncio.sleep(0)  # sent from its own plan, reply not read yet
                seen.append(state.in_flight)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                seen.append(state.in_flight)
            tasks = [asyncio.ensure_future(c.get("k")) for _ in range(20)]
            await asyncio.sleep(0)
            for t in tasks[1::3]:
                t.cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            kept = [v for t, v in zip(tasks, done, strict=True) if not t.cancelled()]
            return seen + [state.in_flight], kept, await c.get("k")
        finally:
            await c.aclose()

    seen, kept, last = asyncio.run(body())
    assert all(n == 1 for n in seen[0:-1:2]), seen  # each was sent alone, from its plan
    assert seen[-1] == 0 and all(n == 0 for n in seen[1::2]), seen
    assert kept and all(v == "v" for v in kept)
    assert last == "v"



def test_a_failed_lone_get_leaves_nothing_in_flight() -> None:
    import socket

    from statekit.errors import BackendUnavailable

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def body() -> tuple[list[str], int]:
        c = AsyncCache(f"redis://127.0.0.1:{port}/0?socket_connect_timeout=0.5", namespace="review10-down")
        try:
            errors = []
            for _ in range(3):  # alone: each sent from its own plan
                try:
                    await c.get("k", "default")
                except BackendUnavailable as e:
                    errors.append(type(e).__name__)
            done = await asyncio.gather(*(c.get("k", "default") for _ in range(5)), return_exceptions=True)
            errors += [type(e).__name__ for e in done]
            backend = c._backend
            assert backend is not None
            return errors, backend._loop_gets().in_flight
        finally:
            await c.aclose()

    errors, in_flight = asyncio.run(body())
    assert errors == ["BackendUnavailable"] * 8  # as the sync Cache, at 4dcf5dc and now
    assert in_flight == 0
