"""Sessions carried over from the previous session store on first contact.

Switching the session backend would log every user out: their cookies name sessions
in the old store. With a *previous store* configured, a request whose cookie is not a
statekit cookie is looked up there once::

    store.carry_over = CarryOver(FlaskSessionRedis("redis://old:6379/0"))

If the old store holds a session for that cookie, its data becomes a new statekit
session (a new random id: the old cookie never names it, as after a rotation), the
response sends the new cookie, and the old entry is deleted (``delete=True``, the
default) or left to expire. The user stays logged in with the same data. A cookie
the old store does not verify or know gives a fresh session, exactly as before
(logged to ``statekit.security`` as a rejected cookie). Counted in the session
counters: ``carried_over``, ``carry_over_refused``.

**Old side: read only**, except the delete of the entry carried over. Values are
decoded without pickle where the old store has another format (Flask-Session 0.8's
msgpack, JSON). A pickled value is *unsigned* bytes: Flask-Session's
``SESSION_USE_SIGNER`` signs the id in the cookie, not the value in Redis, and
Django's cache engine pickles the session dict as it is. Such a value is refused
unless the pickle reader is switched on: ``plain_pickle=True``
(``STATEKIT_SESSION_CARRY_OVER_PICKLE`` in the adapters, off by default). Off, a
pickled value is refused like a value in an unknown format: the user gets a fresh
session, counted in ``carry_over_refused`` and logged once to ``statekit.security``
with the setting that would read it. So is an old session of more than
:data:`MAX_SESSION_BYTES` (1 MB), before it is decoded.

This reader is an *opt-in* exception to "no unsigned pickle on a read path", for
the length of the switch. Why it may be switched on: the old app itself unpickled
those same bytes with full pickle on every request, so reading them once more adds
no new trust in the old store, and this reader trusts them less: it reads only
where the old store held nothing else (Flask-Session before 0.7, and only with
``SESSION_USE_SIGNER``, so the cookie names an id the app issued; Django's cache
engine), and as plain data only: :func:`loads_plain_pickle` allows the opcodes of
plain data alone and no name but how protocols 0-2 spell sets and bytes, so no
pickle it accepts calls code, sets an attribute or allocates beyond its own size.
Switch it on only for such an old store, and off again with the carry-over.

**Concurrency.** A browser's parallel requests all carry the old cookie until the
first answer arrives. The first request to carry the session over *claims* the old
cookie in Redis (one atomic script, the key an HMAC of the cookie); the others find
the claim and load that same statekit session (and send its cookie), so all end in
one session. The claim holds the new id encrypted with a pad derived from the old
cookie and the secret key (a Redis dump reveals no usable id) and when it was made:
for ``window`` seconds (the store's ``alias_window``) the old cookie leads to that
session; afterwards it gives a fresh session and is never carried over again while
the claim lives (the old store's session lifetime: a logout is not undone by an old
entry left to expire, nor by a rotation of the secret keys: a claim is looked up
under each key, one ``GET`` per key for a cookie that is not statekit's).

**Switching it off.** Once the old sessions have expired, drop the previous store
(one setting in the adapters): no old-store read or claim is made any more, and an
old cookie is an unknown cookie.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import json
import logging
import math
import pickle
import pickletools
import struct
from collections.abc import Callable, Iterable, Mapping
from io import BytesIO
from itertools import chain
from typing import TYPE_CHECKING, Any, Protocol, cast

from itsdangerous import BadSignature, Signer

from ..errors import BackendUnavailable, SerializationError
from ..redis import translate_errors
from ..serializers import _MAX_SHARED_HASH, _dict_of_pairs, _unflooded
from . import Steps, call, now

if TYPE_CHECKING:
    from . import Session, SessionStore, _StoreCore

__all__ = ["CarryOver", "FlaskSessionRedis", "PreviousStore", "loads_plain_pickle"]

_log = logging.getLogger("statekit.sessions")
_security = logging.getLogger("statekit.security")


class PreviousStore(Protocol):
    """The session store an app used before statekit, read on first contact.

    ``read`` returns the data of the session *cookie* names, or ``None`` when the
    cookie does not verify or names no (live) session; it raises
    :class:`~statekit.errors.BackendUnavailable` when the old store cannot be reached
    (the request is then answered 503 and retried, not logged out), and
    :class:`~statekit.errors.SerializationError` when it holds a session it refuses
    to decode (an unknown format, or a pickle it is not allowed to read; the message
    says why: it is logged to ``statekit.security`` and the user gets a fresh
    session, counted in ``carry_over_refused``). ``forget``
    deletes that entry. Both are called from many threads at once.
    """

    name: str

    def read(self, cookie: str) -> Mapping[str, Any] | None: ...

    def forget(self, cookie: str) -> None: ...


#: the largest old session read (stored, or as django-redis decompresses it): one of
#: more is refused, a fresh session counted in ``carry_over_refused``. The worst
#: shapes cost up to ~0.4 s a MB to decode (the plain-data pickle reader), on every
#: request with a cookie naming it while it is refused
MAX_SESSION_BYTES = 1 << 20


def _size_checked(raw: bytes) -> bytes:
    """*raw*, an old session's bytes. :raises SerializationError: more than
    :data:`MAX_SESSION_BYTES`."""
    if len(raw) > MAX_SESSION_BYTES:
        raise SerializationError(f"an old session of {len(raw)} bytes: more than "
                                 f"statekit.sessions.carryover.MAX_SESSION_BYTES ({MAX_SESSION_BYTES}) "
                                 "are not read")
    return raw


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as pickle protocols 0-2 use it for bytes, latin-1 only."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError("refused: _codecs.encode beyond bytes")
    return text.encode("latin1")


def _no_size(kind: type) -> Any:
    """*kind* (``bytes``, ``bytearray``) from a value, never from a size (``bytes(10**12)``),
    and from a text only in latin-1, as protocols 0-2 write them: another codec could
    cost far more than its input (``punycode`` is quadratic: 19 s for an 83 KB pickle)."""
    def make(*args: Any) -> Any:
        if args and isinstance(args[0], int):
            raise pickle.UnpicklingError(f"refused: {kind.__name__} of a size")
        if len(args) > 2 or len(args) == 2 and str(args[1]).lower() not in ("latin-1", "latin1"):
            raise pickle.UnpicklingError(f"refused: {kind.__name__} through a codec other than latin-1")
        return kind(*args)
    return make


#: the only names a plain-data pickle may use: how protocols 0-2 spell sets and bytes
#: (``set`` and ``frozenset`` are made by :meth:`_PlainUnpickler._new_set`)
_PLAIN_NAMES: dict[tuple[str, str], Any] = {
    **{(m, n): c for m in ("builtins", "__builtin__")
       for n, c in (("set", set), ("frozenset", frozenset), ("bytes", _no_size(bytes)),
                    ("bytearray", _no_size(bytearray)))},
    ("_codecs", "encode"): _latin1,
}


#: opcodes that build objects beyond plain data, or call or set anything outside
#: find_class: BUILD sets attributes (of the allowed functions: process-wide), the
#: others instantiate, look up the extension registry or persistent ids
_REFUSED_OPS = frozenset({"BUILD", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4",
                          "PERSID", "BINPERSID", "NEXT_BUFFER", "READONLY_BUFFER"})


#: opcodes that store into the memo at the index they name
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _check_opcodes(data: bytes) -> None:
    """Refuse :data:`_REFUSED_OPS`, and sizes beyond *data* before the unpickler
    allocates them: a length field (it makes the buffer the field asks for, then
    reads), and a memo index (it grows its memo array to twice the index and clears
    every entry: ``LONG_BINPUT 2**30``, 12 bytes, was 1 GB). A pickler numbers its
    memo 0, 1, 2...: an index is below the count of the opcodes before it."""
    for count, (op, arg, _pos) in enumerate(pickletools.genops(data)):
        if op.name in _REFUSED_OPS:
            raise pickle.UnpicklingError(f"refused: the pickle uses {op.name}")
        if op.name in _MEMO_PUTS and isinstance(arg, int) and arg > count:
            raise pickle.UnpicklingError(f"refused: a memo index ({arg}) beyond the pickle's {count} opcodes")


class _PlainUnpickler(pickle._Unpickler):
    """Python's own unpickler, not the C one: that one builds dicts and sets where
    nothing can look at their keys. Here, before a dict or set is built or grows
    (``DICT``, ``FROZENSET``, ``set()`` and ``frozenset()`` by ``REDUCE`` at once;
    ``SETITEM(S)`` and ``ADDITEMS`` a few at a time, counted across them):

    * its keys' hashes are counted (:func:`statekit.serializers._unflooded`): thousands
      of distinct ints (tuples...) with one hash make it quadratic to build (minutes
      for a pickle of 1 MB);
    * hashing them is charged against the pickle's size: a tuple's or an int's hash is
      not cached, so a tuple sharing its halves through the memo (6 bytes a level)
      costs 2**levels to hash, and a big int hashed as the key of many dicts costs its
      size each time. A tuple is charged as the tree it is, an int by its size."""

    dispatch = dict(pickle._Unpickler.dispatch)
    if TYPE_CHECKING:  # pickle._Unpickler's own, not in its stub
        stack: list[Any]
        append: Callable[[Any], None]

        def pop_mark(self) -> list[Any]: ...

    def __init__(self, file: BytesIO, budget: int) -> None:
        super().__init__(file)
        #: id -> (the dict or set being filled, its keys' hashes, how many were shared)
        self._filling: dict[int, tuple[Any, set[int], list[int]]] = {}
        #: id -> (a tuple made here, what hashing it costs)
        self._costs: dict[int, tuple[tuple[Any, ...], int]] = {}
        #: the hashing left to the keys
        self._hashing = budget

    def find_class(self, module: str, name: str) -> Any:
        found = _PLAIN_NAMES.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refused: the pickle names {module}.{name}")
        return functools.partial(self._new_set, found) if found in (set, frozenset) else found

    def _new_set(self, kind: type, *args: Any) -> Any:
        items: list[Any] = list(*args)
        self._charge(items)
        return kind(_unflooded(items))

    def _cost(self, value: Any) -> int:
        """What hashing *value* costs: a tuple the tree it is, an int its size in 8 bytes
        (neither caches its hash), anything else 1 (str, bytes, frozenset cache theirs)."""
        t = type(value)
        if t is tuple:
            entry = self._costs.get(id(value))
            return entry[1] if entry is not None and entry[0] is value else self._made(value)[1]
        return 1 + value.bit_length() // 64 if t is int else 1

    def _made(self, value: tuple[Any, ...]) -> tuple[tuple[Any, ...], int]:
        entry = self._costs[id(value)] = (value, 1 + sum(map(self._cost, value)))
        return entry

    def _charge(self, keys: list[Any]) -> None:
        self._hashing -= sum(map(self._cost, keys))
        if self._hashing < 0:
            raise pickle.UnpicklingError("refused: hashing its keys costs more than the pickle's size "
                                         "allows (a tuple or an int shared through the memo, hashed again "
                                         "and again)")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused: the pickle holds a persistent id")

    def _admit(self, target: Any, keys: list[Any], kind: type) -> None:
        """Count *keys*' hashes among those already in *target*, a *kind* being filled."""
        if type(target) is not kind:
            raise pickle.UnpicklingError(f"refused: items added to a {type(target).__name__}")
        self._charge(keys)
        entry = self._filling.get(id(target))
        if entry is None:
            entry = self._filling[id(target)] = (target, set(map(hash, cast("Iterable[Any]", target))), [0])
        _target, hashes, shared = entry
        for key in keys:
            h = hash(key)
            if h in hashes:
                shared[0] += 1
                if shared[0] > _MAX_SHARED_HASH:
                    raise pickle.UnpicklingError(f"refused: more than {_MAX_SHARED_HASH} keys of a "
                                                 f"{kind.__name__} share a hash (a hash flood)")
            hashes.add(h)

    def _load_dict(self) -> None:
        items = self.pop_mark()
        keys = items[::2]
        self._charge(keys)
        _unflooded(keys)
        self.append(dict(zip(keys, items[1::2], strict=True)))

    def _load_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        self._admit(self.stack[-1], [key], dict)
        self.stack[-1][key] = value

    def _load_setitems(self) -> None:
        items = self.pop_mark()
        keys = items[::2]
        self._admit(self.stack[-1], keys, dict)
        self.stack[-1].update(zip(keys, items[1::2], strict=True))

    def _load_additems(self) -> None:
        items = self.pop_mark()
        self._admit(self.stack[-1], items, set)
        self.stack[-1].update(items)

    def _load_frozenset(self) -> None:
        items = self.pop_mark()  # first: it sets self.append to the enclosing stack's
        self.append(self._new_set(frozenset, items))

    def _load_tuple(self) -> None:
        items = self.pop_mark()
        self.append(self._made(tuple(items))[0])

    def _load_tuple1(self) -> None:
        self.stack[-1] = self._made((self.stack[-1],))[0]

    def _load_tuple2(self) -> None:
        self.stack[-2:] = [self._made((self.stack[-2], self.stack[-1]))[0]]

    def _load_tuple3(self) -> None:
        self.stack[-3:] = [self._made((self.stack[-3], self.stack[-2], self.stack[-1]))[0]]

    dispatch.update({op[0]: cast(Any, load) for op, load in (
        (pickle.DICT, _load_dict), (pickle.SETITEM, _load_setitem), (pickle.SETITEMS, _load_setitems),
        (pickle.ADDITEMS, _load_additems), (pickle.FROZENSET, _load_frozenset), (pickle.TUPLE, _load_tuple),
        (pickle.TUPLE1, _load_tuple1), (pickle.TUPLE2, _load_tuple2), (pickle.TUPLE3, _load_tuple3))})


def _within(value: Any, budget: int) -> None:
    """Refuse *value* if it holds more than *budget* values counted as a tree (a value
    reached twice counts twice): what storing it will encode. A pickle's memo lets
    a few hundred bytes hold lists that share each other 40 levels deep, 2**40
    values once encoded, or hold themselves; without shared containers a pickle
    spends at least a byte on each value, so a few times its length is ample."""
    stack = [value]
    seen = 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > budget:
            raise pickle.UnpicklingError("refused: the pickle's data is larger than the pickle "
                                         "(containers shared or holding themselves)")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)


def loads_plain_pickle(data: bytes) -> Any:
    """Unpickle *data* holding plain data only (dicts, lists, tuples, sets, strings,
    bytes, numbers, booleans, ``None``). Any pickle naming a class or function (every
    way a pickle has to call code) raises :class:`~statekit.errors.SerializationError`
    before anything is called; the only names allowed are how the old protocols 0-2
    spell sets and bytes (``set``, ``frozenset``, ``bytes``, ``bytearray``, and
    ``_codecs.encode`` for latin-1 only). So is data larger, as a tree, than the
    pickle itself (containers shared through its memo: what storing it would
    encode grows exponentially with its length, or without end), a dict or set of
    which many keys share one hash (quadratic to build: see :class:`_PlainUnpickler`),
    and a pickle of more than :data:`MAX_SESSION_BYTES`."""
    try:
        _check_opcodes(_size_checked(data))
        budget = 4 * len(data) + 1024
        value = _PlainUnpickler(BytesIO(data), budget).load()
        _within(value, budget)
        return value
    except Exception as e:  # noqa: BLE001 - any malformed or refused pickle is one outcome
        raise SerializationError(f"refused an old session's pickle: {e}") from e


class CarryOver:
    """Carries sessions over from *previous* (see the module docstring).

    :param previous: the old store.
    :param delete: delete the old entry once carried over (else it expires on its own).
    :param claim_ttl: seconds a carried-over cookie stays claimed (never carried over
        again): the old store's session lifetime; 14 days by default.
    """

    def __init__(self, previous: PreviousStore, *, delete: bool = True,
                 claim_ttl: float = 14 * 86400) -> None:
        self.previous = previous
        self.delete = delete
        self.claim_ttl = float(claim_ttl)

    def close(self) -> None:
        """Close the old store, if it has a ``close()`` (:class:`FlaskSessionRedis`
        closes the client it built): the session store's ``close``/``aclose`` calls this."""
        close = getattr(self.previous, "close", None)
        if callable(close):
            close()

    @staticmethod
    def _mac(secret: bytes, purpose: bytes, cookie: str) -> bytes:
        return hmac.new(secret, purpose + b"\0" + cookie.encode("utf-8", "replace"), hashlib.sha512).digest()

    def _claim_key(self, store: _StoreCore, cookie: str, secret: bytes) -> str:
        return f"{store.key_prefix}:session-carry:{self._mac(secret, b'claim', cookie)[:20].hex()}"

    def _seal(self, store: _StoreCore, cookie: str, sid: str, t: float) -> bytes:
        pad = self._mac(store._secret, b"pad", cookie)
        return struct.pack(">d", t) + bytes(a ^ b for a, b in zip(sid.encode("ascii"), pad, strict=False))

    def _peek(self, store: _StoreCore, cookie: str) -> Steps[tuple[bytes, bytes] | None]:
        """The claim on *cookie* and the secret key it was made with, looked up under
        each of the store's keys: a claim made before a key rotation stays a claim
        (else the old cookie, spent, would be carried over again after a logout)."""
        for secret in store._secrets:
            seen = yield call("peek", self._claim_key(store, cookie, secret))
            if seen is not None:
                return seen, secret
        return None

    def _open_claim(self, store: _StoreCore, cookie: str, value: bytes,
                    secret: bytes) -> Steps[Session | None]:
        """The session a claim names, if it was made within the window and lives."""
        from . import _ID_RE

        if len(value) < 9:
            return None
        (t,) = struct.unpack(">d", value[:8])
        if now() - t > store.alias_window:
            return None  # claimed long ago: the old cookie is spent
        pad = self._mac(secret, b"pad", cookie)
        sid = bytes(a ^ b for a, b in zip(value[8:], pad, strict=False)).decode("ascii", "replace")
        if not _ID_RE.match(sid):
            return None
        session, superseded = yield from store._load_steps(sid, 0)
        if session is not None:
            session.send_cookie = session._shared = True
        elif superseded:
            # rotated by a parallel request's login: the browser most likely holds (or
            # is about to get) the new cookie, which no cookie for this one may replace
            session = store.new()
            session.superseded = True
        return session

    def take(self, store: SessionStore, cookie: str) -> Session | None:
        """The statekit session for old *cookie*: carried over now, or by a concurrent
        request moments ago; ``None`` when the old store has none for it (or it was
        carried over before the window). Stored before it is returned.

        A session the old store refuses to decode (``read`` raised
        :class:`~statekit.errors.SerializationError`) gives a fresh session: the
        cookie was the old store's, so it is counted in ``carry_over_refused`` and
        logged once to ``statekit.security`` (with the reason), not as a rejected cookie.
        So does a session it decodes whose values statekit cannot store (logged to
        ``statekit.sessions``).

        :raises BackendUnavailable: statekit's Redis, or the old store while reading,
            is unreachable (an old entry that cannot be deleted is only logged: it
            was claimed, and expires on its own).
        """
        return store._run(self.take_steps(store, cookie))

    def take_steps(self, store: _StoreCore, cookie: str) -> Steps[Session | None]:
        """:meth:`take` as steps (:class:`~statekit.sessions._StoreCore`): the async
        store awaits the engine calls and runs the previous store's blocking calls in
        a worker thread (``asyncio.to_thread``)."""
        found = yield from self._peek(store, cookie)
        if found is not None:
            return (yield from self._open_claim(store, cookie, *found))
        try:
            data = yield call(self.previous.read, cookie)
        except SerializationError as e:
            store.counters.incr("carry_over_refused")
            _security.warning("an old %s session was refused: %s", self.previous.name, e)
            return store.new()
        if data is None:
            # a concurrent request may have carried it over and deleted it meanwhile
            found = yield from self._peek(store, cookie)
            return None if found is None else (yield from self._open_claim(store, cookie, *found))
        session = store.new()
        try:
            for key, value in data.items():
                session[key] = value
        except (SerializationError, TypeError, ValueError) as e:
            # the cookie named an old session: a refusal, not a rejected cookie
            store.counters.incr("carry_over_refused")
            _log.warning("an old %s session was not carried over: %s", self.previous.name, e)
            return store.new()
        yield from store._save_steps(session, True)
        seen = yield call("claim", self._claim_key(store, cookie, store._secret),
                          self._seal(store, cookie, session.sid, now()), max(1, int(self.claim_ttl * 1000)))
        if seen is not None:  # a concurrent request carried it over first: use its session
            yield from store._destroy_session_steps(session)
            return (yield from self._open_claim(store, cookie, seen, store._secret))
        if self.delete:
            try:
                yield call(self.previous.forget, cookie)
            except BackendUnavailable as e:
                # carried over and claimed: the old entry is spent (never carried over
                # again) and expires on its own. A 503 now would lose the new cookie,
                # and a retry after the window would find the old cookie spent
                _log.warning("an old %s session was carried over but not deleted: %s",
                             self.previous.name, e)
        store.counters.incr("carried_over")
        session.rotated = session.send_cookie = session._shared = True
        return session


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
#: the seconds from 1970 that msgspec reads as a datetime: years 1 to 9999
_FIRST_SECOND, _LAST_SECOND = -62135596800, 253402300799


def _as_read(value: Any) -> Any:
    """*value*, or a msgpack Timestamp as Flask-Session 0.8 (msgspec) reads it: an aware
    datetime in UTC, the nanoseconds rounded to the microsecond (half up). It writes
    aware datetimes so (naive ones, dates and times as ISO text).
    :raises SerializationError: one msgspec refuses (seconds outside years 1-9999, or
        rounded past 9999): Flask-Session could not read that session either."""
    import msgpack

    if type(value) is not msgpack.Timestamp:
        return value
    if _FIRST_SECOND <= value.seconds <= _LAST_SECOND:
        try:
            microseconds = (value.nanoseconds + 500) // 1000
            return _EPOCH + dt.timedelta(seconds=value.seconds, microseconds=microseconds)
        except OverflowError:
            pass
    raise SerializationError(f"a msgpack Timestamp out of datetime's range ({value.seconds} s from 1970, "
                             f"{value.nanoseconds} ns), which Flask-Session does not read either")


def _flask_session_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A map of Flask-Session's msgpack: its keys' hashes counted as read
    (:func:`statekit.serializers._dict_of_pairs`), then its Timestamps read as datetimes."""
    import msgpack

    value = _dict_of_pairs(pairs)
    if pairs and msgpack.Timestamp in map(type, chain.from_iterable(pairs)):
        value = {_as_read(k): _as_read(v) for k, v in pairs}
    return value


def _flask_session_list(items: list[Any]) -> list[Any]:
    """An array of Flask-Session's msgpack, its Timestamps read as datetimes."""
    import msgpack

    return [_as_read(v) for v in items] if msgpack.Timestamp in map(type, items) else items


def _not_json(name: str) -> Any:
    """``json.loads``'s *parse_constant*: ``NaN``, ``Infinity``, ``-Infinity`` refused."""
    raise ValueError(f"{name}, which is not JSON: Flask-Session (msgspec) never writes it and refuses it")


def _finite(text: str) -> float:
    """``json.loads``'s *parse_float*: a number beyond a float's range (``1e999``) refused,
    as Flask-Session (msgspec) refuses it (Python's json reads it as an infinity)."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"a number out of a float's range ({text[:20]}{'...' if len(text) > 20 else ''}), "
                         "which Flask-Session (msgspec) refuses")
    return value


class FlaskSessionRedis:
    """Flask-Session's Redis layout: the cookie holds the session id (signed with
    itsdangerous, salt ``flask-session``, when ``SESSION_USE_SIGNER`` was on), the
    value under ``<SESSION_KEY_PREFIX><id>`` is msgpack (Flask-Session 0.8), JSON, or a
    pickle (before 0.7; unsigned, as the signer covers only the id: read only with
    *plain_pickle* on and when the signer verified the cookie, and as plain data only).
    Values come back as Flask-Session 0.8 read them: an aware datetime (a msgpack
    Timestamp) as a datetime in UTC; naive datetimes, dates and times as the ISO text
    it wrote. JSON it refuses (``NaN``, ``Infinity``, ``1e999``) is refused.

    :param url: the old Redis, or *client*: a ready redis-py client.
    :param key_prefix: Flask-Session's ``SESSION_KEY_PREFIX``.
    :param secret_keys: the app's ``SECRET_KEY`` (then fallbacks), needed with *use_signer*.
    :param use_signer: Flask-Session's ``SESSION_USE_SIGNER``.
    :param plain_pickle: read pickled values (Flask-Session before 0.7) with
        :func:`loads_plain_pickle`, under a signed id only; off (the default), a
        pickled value is refused (``STATEKIT_SESSION_CARRY_OVER_PICKLE`` in
        flask-statekit; see the module docstring).
    """

    name = "Flask-Session (Redis)"

    def __init__(self, url: str | None = None, *, client: Any = None, key_prefix: str = "session:",
                 secret_keys: tuple[str | bytes, ...] | list[str | bytes] = (),
                 use_signer: bool = False, plain_pickle: bool = False) -> None:
        if client is None:
            if url is None:
                raise ValueError("FlaskSessionRedis needs the old Redis's url or client")
            import redis

            client = redis.Redis.from_url(url)
            self._owned: Any = client  # built here: closed by close(); a client given stays open
        else:
            self._owned = None
        self.client = client
        self.key_prefix = key_prefix
        self.use_signer = use_signer
        self.plain_pickle = plain_pickle
        self._signers = [Signer(k, salt="flask-session", key_derivation="hmac") for k in secret_keys]
        if use_signer and not self._signers:
            raise ValueError("SESSION_USE_SIGNER needs the app's secret key")

    def _sid(self, cookie: str) -> str | None:
        if not self.use_signer:
            return cookie if 0 < len(cookie) <= 256 else None
        for signer in self._signers:
            try:
                return signer.unsign(cookie).decode("utf-8")
            except (BadSignature, UnicodeDecodeError):
                continue
        return None

    def close(self) -> None:
        """Close the client built from *url* (the session store's close calls this
        through :meth:`CarryOver.close`); a *client* given is the caller's to close."""
        owned, self._owned = self._owned, None
        if owned is not None:
            owned.close()

    def read(self, cookie: str) -> Mapping[str, Any] | None:
        import redis

        sid = self._sid(cookie)
        if sid is None:
            return None
        try:
            with translate_errors("reading the previous session store"):
                raw = self.client.get(self.key_prefix + sid)
        except redis.ResponseError as e:
            if not str(e).startswith("WRONGTYPE"):
                raise
            return None  # a key of another kind (without the signer the cookie names any): no session
        if raw is None:
            return None
        return self._decode(_size_checked(raw))

    def _decode(self, raw: bytes) -> dict[str, Any]:
        """The session dict in *raw*. :raises SerializationError: refused, saying why."""
        value: Any
        try:
            import msgpack
        except ImportError:  # without statekit[msgpack]: JSON or a pickle
            value = self._json_or_pickle(raw, "JSON (Flask-Session 0.8's msgpack is read with "
                                              "pip install 'statekit[msgpack]')")
        else:
            try:
                # any key (a session's data may hold a dict of ints), each map's counted; Timestamps
                # read as Flask-Session read them, looked for only where one may be (its type
                # byte is 0xff, which no UTF-8 text holds): each array and map looked at costs
                hooks: dict[str, Any] = {"object_pairs_hook": _dict_of_pairs}
                if b"\xff" in raw:
                    hooks = {"object_pairs_hook": _flask_session_map, "list_hook": _flask_session_list}
                value = msgpack.unpackb(raw, raw=False, strict_map_key=False, **hooks)
            except SerializationError:
                raise  # msgpack, but a hash flood or a Timestamp out of range
            except msgpack.ExtraData:
                # one value and more bytes: not msgpack. JSON and pickles all read so: their
                # first byte is a whole msgpack value (ASCII an int, protocol 2's 0x80 a map)
                value = self._json_or_pickle(raw, "msgpack or JSON")
            except Exception as e:  # noqa: BLE001 - msgpack raises a family of errors
                raise SerializationError(f"not a session: msgpack it cannot read ({e})") from e
        if not isinstance(value, dict):
            raise SerializationError(f"not a session dict but {type(value).__name__}")
        return value

    def _json_or_pickle(self, raw: bytes, formats: str) -> Any:
        """*raw* as JSON, else a pickle (:meth:`_unpickle`; *formats*: those tried). JSON
        as Flask-Session reads it (msgspec): ``NaN``, ``Infinity`` and numbers beyond a
        float's range refused (Python's json reads them; Flask-Session writes ``null``)."""
        try:
            return json.loads(raw, parse_constant=_not_json, parse_float=_finite)
        except RecursionError as e:  # JSON nested too deep: no session statekit would store
            raise SerializationError(f"not a session: {e}") from e
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._unpickle(raw, formats)
        except ValueError as e:  # JSON, but a value Python's json refuses (an int of 5000 digits)
            raise SerializationError(f"JSON it cannot read: {e}") from e

    def _unpickle(self, raw: bytes, formats: str) -> Any:
        """Flask-Session before 0.7 pickled: read only under a signed id, opted in."""
        if not self.use_signer:
            raise SerializationError(f"not {formats}; a pickle (Flask-Session before 0.7) is "
                                     "read only under a signed id (SESSION_USE_SIGNER)")
        if not self.plain_pickle:
            raise SerializationError(f"not {formats}; a pickle (Flask-Session before 0.7) is read "
                                     "as plain data only with STATEKIT_SESSION_CARRY_OVER_PICKLE on "
                                     "(plain_pickle=True)")
        return loads_plain_pickle(raw)

    def forget(self, cookie: str) -> None:
        sid = self._sid(cookie)
        if sid is not None:
            with translate_errors("deleting from the previous session store"):
                self.client.delete(self.key_prefix + sid)
