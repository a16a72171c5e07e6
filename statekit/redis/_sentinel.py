"""redis-py's ``Sentinel`` (sync and asyncio) whose "no master" error says, in a few
words, which service was looked up, which sentinels were asked and what each said.

redis-py's ``MasterNotFoundError`` names only the service when the sentinels
answered (a wrong service name in the URL), and else embeds each failed sentinel
client's repr: every connection keyword argument, about 1,500 characters a
sentinel, which reached the ``BackendUnavailable`` a user sees, its log line and
its 503. This one reads (the error map adds what the call was)::

    No master found for service 'nosuch': sentinel 127.0.0.1:26379 knows no service
    'nosuch' (it watches 'statekit'); sentinel 127.0.0.1:26380 failed
    (ConnectionError: Error 111 connecting to 127.0.0.1:26380. Connection refused.)

It is still redis-py's ``MasterNotFoundError`` (a ``ConnectionError``), raised by
redis-py's own ``discover_master``: the subclass only records each sentinel's
answer to ``SENTINEL MASTERS`` while that runs (a context variable: per thread,
per asyncio task) and rewrites the message. No URL credential is in it: only
addresses, service names and the servers' error texts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

__all__ = ["no_master", "sentinel_class"]

_T = TypeVar("_T")

#: the answers of the sentinels asked by the discovery running in this context
_heard: ContextVar[dict[int, object] | None] = ContextVar("statekit_sentinel_answers", default=None)

#: how much of a sentinel's error text, and how many of the services it watches, a message holds
_TEXT = 160
_NAMES = 5


def _hear(client: Any, answer: _T) -> _T:
    """Record *answer* as *client*'s (a sentinel's) in the discovery running, if any."""
    heard = _heard.get()
    if heard is not None:
        heard[id(client)] = answer
    return answer


@contextlib.contextmanager
def _asking(client: Any) -> Iterator[None]:
    """Record the error asking *client* (a sentinel) raises."""
    try:
        yield
    except Exception as e:
        _hear(client, e)
        raise


@contextlib.contextmanager
def _discovering(sentinel: Any, service: str, not_found: type[Exception]) -> Iterator[None]:
    """Collect the sentinels' answers while *sentinel* discovers the master of
    *service*; its *not_found* error (redis-py's ``MasterNotFoundError``) is raised
    again with :func:`no_master`'s message."""
    heard: dict[int, object] = {}
    token = _heard.set(heard)
    try:
        yield
    except not_found:
        answers = [(_address(client), heard.get(id(client))) for client in sentinel.sentinels]
        raise not_found(no_master(service, answers, sentinel.min_other_sentinels)) from None
    finally:
        _heard.reset(token)


class _AsksToldSentinels:
    """Mixin for redis-py's ``Sentinel``: the sentinel clients it made are
    ``told_class``'s (a subclass adding no state), which record their answers to
    ``SENTINEL MASTERS``."""

    told_class: Any
    sentinels: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for client in self.sentinels:
            client.__class__ = self.told_class


def _address(client: Any) -> str:
    kwargs = client.connection_pool.connection_kwargs
    host = str(kwargs.get("host"))
    return f"[{host}]:{kwargs.get('port')}" if ":" in host else f"{host}:{kwargs.get('port')}"


def _flags(state: Any) -> str:
    flags = state.get("flags", "")
    return ",".join(sorted(flags)) if isinstance(flags, (set, frozenset)) else str(flags)


def _said(service: str, answer: object, min_other_sentinels: int) -> str:
    """What one sentinel's *answer* to ``SENTINEL MASTERS`` (its masters by name, or
    the error asking it raised; ``None``: not asked) says about *service*."""
    if answer is None:
        return "was not asked"
    if isinstance(answer, BaseException):
        text = str(answer) or "no message"
        if len(text) > _TEXT:
            text = text[:_TEXT] + "..."
        return f"failed ({type(answer).__name__}: {text})"
    masters: Any = answer
    state = masters.get(service)
    if not state:
        names = sorted(map(str, masters))
        watched = ", ".join(map(repr, names[:_NAMES])) or "none"
        if len(names) > _NAMES:
            watched += f" and {len(names) - _NAMES} more"
        return f"knows no service {service!r} (it watches {watched})"
    if not state.get("is_master") or state.get("is_sdown") or state.get("is_odown"):
        return f"reports its master {state.get('ip')}:{state.get('port')} down (flags {_flags(state)})"
    return (f"sees {state.get('num-other-sentinels')} other sentinels, fewer than "
            f"min_other_sentinels {min_other_sentinels}")


def no_master(service: str, answers: Iterable[tuple[str, object]], min_other_sentinels: int) -> str:
    """The message of a failed master discovery of *service*: each ``(address,
    answer)`` of *answers* in the order the sentinels were asked."""
    said = "; ".join(f"sentinel {address} {_said(service, answer, min_other_sentinels)}"
                     for address, answer in answers)
    return f"No master found for service {service!r}: {said or 'no sentinel configured'}"


_classes: dict[bool, Any] = {}


def sentinel_class(aio: bool = False) -> Any:
    """redis-py's ``Sentinel`` (with *aio*, ``redis.asyncio``'s) whose
    ``MasterNotFoundError`` says what each sentinel answered (module docstring)."""
    cls = _classes.get(aio)
    if cls is None:
        cls = _classes[aio] = _async_sentinel() if aio else _sync_sentinel()
    return cls


def _sync_sentinel() -> Any:
    import redis
    import redis.sentinel

    class Told(redis.Redis):
        def sentinel_masters(self) -> Any:
            with _asking(self):
                return _hear(self, super().sentinel_masters())

    class Sentinel(_AsksToldSentinels, redis.sentinel.Sentinel):  # type: ignore[misc]
        told_class = Told

        def discover_master(self, service_name: str) -> Any:
            with _discovering(self, service_name, redis.sentinel.MasterNotFoundError):
                return super().discover_master(service_name)

    return Sentinel


def _async_sentinel() -> Any:
    import redis.asyncio
    import redis.asyncio.sentinel

    class Told(redis.asyncio.Redis):
        async def sentinel_masters(self) -> Any:
            with _asking(self):
                return _hear(self, await super().sentinel_masters())

    class Sentinel(_AsksToldSentinels, redis.asyncio.sentinel.Sentinel):  # type: ignore[misc]
        told_class = Told

        async def discover_master(self, service_name: str) -> Any:
            with _discovering(self, service_name, redis.asyncio.sentinel.MasterNotFoundError):
                return await super().discover_master(service_name)

    return Sentinel
