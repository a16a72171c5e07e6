"""``memory://`` for broadcast: the same contract inside one process (users' tests).

:class:`MemoryClient` stands in for the redis-py client that :mod:`statekit.broadcast`
uses: ``hmget``, a ``pipeline`` of ``hmget``, and ``register_script`` for the four
broadcast scripts, which are implemented here in Python under the store's lock
(atomic, like the Lua originals). A publish is delivered synchronously to every
hub of the same store; there is no subscriber thread. Leases expire on the
monotonic clock like Redis keys do. Shares nothing with other processes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..backends.memory import MemoryStore, get_store

__all__ = ["MemoryClient"]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Pipeline:
    def __init__(self, client: MemoryClient) -> None:
        self._client = client
        self._calls: list[tuple[str, tuple[str, ...]]] = []

    def hmget(self, key: str, *fields: str) -> None:
        self._calls.append((key, fields))

    def execute(self) -> list[list[Any]]:
        return [self._client.hmget(key, *fields) for key, fields in self._calls]


class MemoryClient:
    """An in-process stand-in for the Redis client of broadcast (see module doc)."""

    in_process = True

    def __init__(self, name: str) -> None:
        self.store: MemoryStore = get_store(f"broadcast:{name}")
        self._lock: threading.RLock = self.store.lock

    def _hash(self, key: str) -> dict[str, Any]:
        h = self.store.get(key)
        if h is None:
            h = {}
            self.store.set(key, h)
        return h  # type: ignore[no-any-return]

    def hmget(self, key: str, *fields: str) -> list[Any]:
        with self._lock:
            h = self.store.get(key) or {}
            return [h.get(f) for f in fields]

    def hset(self, key: str, mapping: dict[str, Any]) -> None:
        with self._lock:
            self._hash(key).update({k: v if isinstance(v, bytes) else str(v).encode()
                                    for k, v in mapping.items()})

    def pipeline(self, transaction: bool = False) -> _Pipeline:
        return _Pipeline(self)

    def register_script(self, source: str) -> Callable[..., Any]:
        from .. import broadcast

        impl = {
            broadcast._CLAIM: self._claim,
            broadcast._RENEW: self._renew,
            broadcast._RELEASE: self._release,
            broadcast._PUBLISH: self._publish,
        }[source]

        def run(keys: Sequence[str], args: Sequence[Any]) -> Any:
            with self._lock:
                return impl(list(keys), [a if isinstance(a, bytes) else str(a) for a in args])

        return run

    # -- the scripts, as in statekit.broadcast ------------------------------------
    def _claim(self, keys: list[str], args: list[Any]) -> list[int]:
        state, lease, fence = keys
        owner, lease_ms, slot = _s(args[0]), int(args[1]), int(args[2])
        cur = self.store.get(lease)
        if cur is not None:
            holder, _, token_text = cur.partition("|")
            token = int(token_text)
            if holder != owner:
                ttl = self.store.ttl(lease)
                return [0, token, int((ttl or 0) * 1000)]
            self.store.expire(lease, lease_ms / 1000)
        else:
            token = int(self.store.get(fence) or 0) + 1
            self.store.set(fence, token)
            self.store.set(lease, f"{owner}|{token}", lease_ms / 1000)
        if slot < 0:
            return [1, token, 0]
        h = self._hash(state)
        if slot <= int(h.get("slot", -1)):
            return [1, token, 0]
        h["slot"] = slot
        return [2, token, 0]

    def _renew(self, keys: list[str], args: list[Any]) -> int:
        if self.store.get(keys[0]) == _s(args[0]):
            self.store.expire(keys[0], int(args[1]) / 1000)
            return 1
        return 0

    def _release(self, keys: list[str], args: list[Any]) -> int:
        if self.store.get(keys[0]) == _s(args[0]):
            return int(self.store.delete(keys[0]))
        return 0

    def _publish(self, keys: list[str], args: list[Any]) -> list[Any]:
        state, fence = keys
        token, data, now_ms, new_epoch, channel = args
        if _s(token):
            cur = int(self.store.get(fence) or 0)
            if cur != int(_s(token)):
                return [-1, cur]
        h = self._hash(state)
        epoch = h.setdefault("epoch", new_epoch.encode() if isinstance(new_epoch, str) else new_epoch)
        version = int(h.get("version", 0)) + 1
        h.update({"version": str(version).encode(), "data": data,
                  "updated_at": _s(now_ms).encode()})
        message = b" ".join([epoch, str(version).encode(), _s(now_ms).encode(), data])
        from . import shared as _subscriber

        _subscriber.deliver_local(self.store, _s(channel).encode(), message)
        return [version, epoch]
