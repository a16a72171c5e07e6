"""How late an event loop runs: a heartbeat task beside the code under test.

::

    async with LoopLag() as lag:
        await asyncio.gather(*(store.put(body) for body in bodies))
    print(f"worst lag {lag.worst * 1000:.1f} ms over {lag.beats} beats")

A loop that something blocks (a synchronous call, a busy thread holding the GIL)
wakes the heartbeat late; the worst delay is what a request on that loop would have
waited. Timing belongs in reports and benchmarks, not in assertions.
"""

from __future__ import annotations

import asyncio

__all__ = ["LoopLag"]


class LoopLag:
    """An async context manager that runs a task sleeping *interval* seconds in a loop
    and records how much later than asked it woke: :attr:`lags` (seconds, one per
    wake-up), :attr:`worst`, :attr:`beats` and :meth:`percentile`."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.worst = 0.0
        self.beats = 0
        self.lags: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            asked = loop.time()
            await asyncio.sleep(self.interval)
            lag = loop.time() - asked - self.interval
            self.lags.append(lag)
            self.worst = max(self.worst, lag)
            self.beats += 1

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._beat())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    def percentile(self, q: float) -> float:
        """The *q*-th fraction of the measured lags (``0.5``: the median), in seconds
        (0 before any beat)."""
        if not self.lags:
            return 0.0
        ordered = sorted(self.lags)
        return ordered[min(int(len(ordered) * q), len(ordered) - 1)]

    def summary(self) -> dict[str, float]:
        """Median, p90 and worst lag in ms, and the number of beats (for reports)."""
        return {"lag_ms_median": round(self.percentile(0.5) * 1000, 2),
                "lag_ms_p90": round(self.percentile(0.9) * 1000, 2),
                "lag_ms_max": round(self.worst * 1000, 2), "heartbeats": self.beats}
