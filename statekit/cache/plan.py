"""Plans: each cache operation written once, for the sync and the async cache.

A *plan* is a generator that does all the pure work of an operation (key checks,
encoding, names, generations, result parsing, breaker and stampede decisions) and
yields each piece of I/O it needs as an *effect* tuple; whatever runs the plan
performs the effect and sends the result back (or throws its exception in). The
sync side runs plans with :func:`drive` (a plain call per effect); the async side
with :func:`adrive` (an ``await`` per effect). So :class:`~statekit.cache.Cache` and
:class:`~statekit.cache.AsyncCache`, and the sync and async Redis backends, share
every line but the awaits.

Backend effects (:mod:`statekit.cache.redis`): ``(CMD, args)`` one command,
``(RUN, keys, args)`` the cache script, ``(BATCH, commands, slots, read)``
single-slot commands on a Cluster, ``(GET, key)`` one key's stored value (the async
backend's: gets asked together go out as one ``MGET``), ``(SCAN, match, count,
cursors)`` one ``SCAN`` page on every primary (``cursors``: ``None`` to begin, else
the node-name-to-cursor map the previous page returned; the result is ``(cursors,
names)``, no cursors left when every primary was walked). Façade effects (:mod:`statekit.cache`): ``(BE,
name, args, kwargs)`` a backend operation, ``(COMPUTE, fn)`` the user's function,
``(LOCK, key)`` the single-flight lock, ``(SLEEP, seconds)``, ``(HOLD, name,
token)`` / ``(UNHOLD, handle)`` keep a lock extended while computing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar, cast

__all__ = ["BATCH", "BE", "CMD", "COMPUTE", "GET", "HOLD", "LOCK", "RUN", "SCAN", "SLEEP", "UNHOLD", "Plan",
           "adrive", "drive"]

T = TypeVar("T")
#: a plan whose result is a ``T``
Plan = Generator[tuple[Any, ...], Any, T]

CMD, RUN, BATCH, GET, SCAN = "cmd", "run", "batch", "get", "scan"
BE, COMPUTE, LOCK, SLEEP, HOLD, UNHOLD = "be", "compute", "lock", "sleep", "hold", "unhold"


def drive(plan: Plan[T], do: Callable[[tuple[Any, ...]], Any]) -> T:
    """Run *plan* to its end, performing each effect with *do* (its result is sent
    back into the plan, its exception thrown in). An interruption (what a signal
    handler raises: ``KeyboardInterrupt``, ``SystemExit``, a gevent ``Timeout``) is
    thrown in too, as :func:`adrive` throws a cancellation: the plan's handlers run
    then (a half-open breaker trial frees its place, a lock is released), not when the
    suspended plan is collected, which a kept traceback can put off for good."""
    send = plan.send
    try:
        effect = send(None)
        while True:
            try:
                value = do(effect)
            except BaseException as e:  # noqa: BLE001 - handed to the plan, which raises it or recovers
                effect = plan.throw(e)
            else:
                effect = send(value)
    except StopIteration as stop:
        return cast(T, stop.value)


async def adrive(plan: Plan[T], do: Callable[[tuple[Any, ...]], Awaitable[Any]]) -> T:
    """:func:`drive` with an async *do*: a cancellation is thrown into the plan too,
    so its ``finally`` clauses (a lock's release) still run."""
    send = plan.send
    try:
        effect = send(None)
        while True:
            try:
                value = await do(effect)
            except BaseException as e:  # noqa: BLE001 - the plan decides (CancelledError included)
                effect = plan.throw(e)
            else:
                effect = send(value)
    except StopIteration as stop:
        return cast(T, stop.value)
