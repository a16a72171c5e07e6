"""Finish a step even when the task waiting for it is cancelled.

An ASGI server cancels a request's task when its client goes away. Some steps must
not stop half-way: an upload thread still writing (its blob is deleted after it, or
the next put would wait for it), or the second half of a change Redis has made
already (a Cluster session's index update). :func:`settle` waits for such a step to
the end, however often the caller is cancelled meanwhile, then raises the first
cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

__all__ = ["settle"]

_T = TypeVar("_T")


async def settle(step: asyncio.Future[_T],
                 on_cancel: Callable[[], object] | None = None) -> asyncio.Future[_T]:
    """Wait until *step* is done, then raise the first cancellation the caller got
    meanwhile, if any; else return *step*, done (its exception retrieved: the caller
    decides what to raise). *on_cancel* runs at each cancellation (e.g. dropping a
    thread-pool job that has not started)."""
    cancelled: asyncio.CancelledError | None = None
    while not step.done():
        try:
            await asyncio.wait([step])
        except asyncio.CancelledError as e:
            cancelled = cancelled or e
            if on_cancel is not None:
                on_cancel()
    if not step.cancelled():
        step.exception()
    if cancelled is not None:
        raise cancelled
    return step
