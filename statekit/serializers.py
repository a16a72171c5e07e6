"""Safe codecs for values that leave the process.

* :class:`JSONSerializer` (the default) — JSON with tagged types, so ``bytes``,
  ``datetime``/``date``/``time``/``timedelta``, ``Decimal``, ``UUID``, ``tuple``,
  ``set``, ``frozenset``, ``markupsafe.Markup`` (Flask's ``flash(Markup(...))``, as
  Flask's cookie sessions keep it) and dicts with non-string keys come back as they
  went in. markupsafe is imported only to read a stored ``Markup`` (a process without
  it gets a :class:`~statekit.errors.SerializationError` naming it).
* :class:`MsgpackSerializer` — the same types through msgpack ext codes; smaller and
  faster for binary-heavy values (``pip install 'statekit[msgpack]'``).
* :class:`WebJSONSerializer` — JSON plus a safe representation of what web caches
  store: a werkzeug/Flask ``Response`` (status, headers, body), an ``HTTPException``
  a view raised (``abort(404)``) and ``markupsafe.Markup`` (template fragments). The
  codec of :mod:`statekit.compat.cachelib`, so Flask-Caching's ``@cached`` views
  and ``{% cache %}`` fragments are cached without pickle.
* :class:`SignedPickleSerializer` — for frameworks that must store arbitrary objects
  (Django's ``cache_page``). Every payload carries an HMAC-SHA256 signature that is
  checked, in constant time, against each configured key *before* any unpickling. A
  payload that fails verification raises :class:`~statekit.errors.SignatureError`
  and is never executed.

Plain, unsigned pickle is not offered: a Redis dump, a replica or a shared cache is
not a trust boundary, and unpickling attacker-controlled bytes runs their code.

Every codec raises :class:`~statekit.errors.SerializationError` naming the type it
cannot encode, and the same error (never anything else) for bytes it cannot decode,
including bytes that would cost far more to decode than their size: a set (or a
dict's keys) of which more than 8 members share a hash with another, the hash flood
that numbers, UUIDs and tuples allow (their hashes are the same in every process).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import functools
import hashlib
import hmac
import json
import pickle  # noqa: S403 - only behind an HMAC check, see SignedPickleSerializer
import re
import sys
import uuid
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any, Protocol, TypeVar, runtime_checkable

from .errors import ConfigError, SerializationError, SignatureError, UnencodableValue

T = TypeVar("T")

__all__ = [
    "JSONSerializer",
    "MsgpackSerializer",
    "Serializer",
    "SignedPickleSerializer",
    "WebJSONSerializer",
    "get_serializer",
    "unencodable_as_pickle_error",
]


@runtime_checkable
class Serializer(Protocol):
    """What a codec provides. ``name`` identifies it in settings and metrics."""

    name: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


def _describe(value: Any) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _length(data: Any) -> str:
    """``"12 bytes"`` for a payload, its type for anything else (never a TypeError)."""
    return f"{len(data)} bytes" if isinstance(data, (bytes, bytearray, memoryview, str)) else _describe(data)


# -- JSON ---------------------------------------------------------------------------

_TAG = "\x00"  # a dict {"\x00": [tag, payload]} is a tagged value
_SCALARS = (str, int, float, bool, type(None))


#: extra tagged types of a codec: class -> (tag, value to a payload of taggable values)
_Extensions = tuple[tuple[type, str, Callable[[Any], Any]], ...]


def _tag(value: Any, ext: _Extensions = ()) -> Any:
    t = type(value)
    if t in _SCALARS:
        return value
    if t is list:
        return [_tag(v, ext) for v in value]
    if t is dict:
        if _TAG in value or not all(type(k) is str for k in value):
            return {_TAG: ["m", [[_tag(k, ext), _tag(v, ext)] for k, v in value.items()]]}
        return {k: _tag(v, ext) for k, v in value.items()}
    if t is tuple:
        return {_TAG: ["t", [_tag(v, ext) for v in value]]}
    if t is bytes or t is bytearray:
        return {_TAG: ["b", base64.b64encode(value).decode("ascii")]}
    if t is dt.datetime:
        return {_TAG: ["dt", _iso(value)]}
    if t is dt.date:
        return {_TAG: ["d", value.isoformat()]}
    if t is dt.time:
        return {_TAG: ["tm", _iso(value)]}
    if t is dt.timedelta:
        return {_TAG: ["td", [value.days, value.seconds, value.microseconds]]}
    if t is decimal.Decimal:
        return {_TAG: ["dec", str(value)]}
    if t is uuid.UUID:
        return {_TAG: ["u", value.hex]}
    if t is set:
        return {_TAG: ["s", [_tag(v, ext) for v in value]]}
    if t is frozenset:
        return {_TAG: ["fs", [_tag(v, ext) for v in value]]}
    if _is_markup(value):
        return {_TAG: ["mk", str(value)]}
    for cls, tag, payload in ext:
        if isinstance(value, cls):
            return {_TAG: [tag, _tag(payload(value), ext)]}
    raise SerializationError(f"cannot serialize a value of type {_describe(value)!r} with the json codec")


def _is_markup(value: Any) -> bool:
    """Whether *value* is a ``markupsafe.Markup``, without importing markupsafe (there
    is no Markup unless something imported it)."""
    markupsafe = sys.modules.get("markupsafe")
    return markupsafe is not None and isinstance(value, markupsafe.Markup)


def _markup(payload: Any) -> Any:
    """The ``Markup`` of a stored ``mk`` payload (the JSON tag, msgpack's ext code 10)."""
    try:
        from markupsafe import Markup
    except ImportError as e:
        raise SerializationError("a stored markupsafe.Markup (Flask's flash(Markup(...)), a rendered "
                                 "fragment) cannot be read without markupsafe: pip install markupsafe") from e
    if type(payload) is not str:
        raise SerializationError("not a markup payload")
    return Markup(payload)  # noqa: S704 - a fragment its writer marked safe


def _iso(value: dt.datetime | dt.time | dt.date) -> str:
    if isinstance(value, (dt.datetime, dt.time)):
        offset = value.utcoffset()
        if offset is not None and offset.microseconds:
            # fromisoformat() (3.10, 3.11) drops the fraction of a second of an
            # offset: refuse rather than bring back another instant
            raise SerializationError(
                f"cannot serialize a {_describe(value)!r} whose UTC offset has a fraction of a second"
            )
    return value.isoformat()


#: members of a decoded set (keys of a decoded dict) that may share a hash with another
_MAX_SHARED_HASH = 8


def _unflooded(members: Any) -> Any:
    """*members*, of a set or the keys of a dict being decoded, unless more than
    :data:`_MAX_SHARED_HASH` share a hash with another. Numbers, decimals, UUIDs and
    tuples hash alike in every process (str and bytes are seeded per process), so a
    writer can pick thousands of distinct values with one hash, and a set or dict of
    n of them takes n**2/2 comparisons to build (1 MB of JSON, 40 000 ints: 10 s).
    The set of their hashes is built in linear time: equal hashes are one member.
    :raises SerializationError: a flood."""
    if len(members) > _MAX_SHARED_HASH and len(members) - len(set(map(hash, members))) > _MAX_SHARED_HASH:
        raise SerializationError(f"refused: more than {_MAX_SHARED_HASH} members of a set or keys "
                                 "of a dict share one hash (a hash flood)")
    return members


def _dict_of_pairs(pairs: list[Any]) -> dict[Any, Any]:
    """The dict of *pairs* (the JSON codec's ``m`` tag, a msgpack map read pair by
    pair), its keys counted first (:func:`_unflooded`)."""
    if len(pairs) > _MAX_SHARED_HASH:
        _unflooded([k for k, _v in pairs])
    return dict(pairs)


_UNTAG: dict[str, Callable[[Any], Any]] = {
    "m": _dict_of_pairs,
    "t": tuple,
    "b": lambda p: base64.b64decode(p, validate=True),
    "dt": dt.datetime.fromisoformat,
    "d": dt.date.fromisoformat,
    "tm": dt.time.fromisoformat,
    "td": lambda p: dt.timedelta(days=p[0], seconds=p[1], microseconds=p[2]),
    "dec": decimal.Decimal,
    "u": uuid.UUID,
    "s": lambda p: set(_unflooded(p)),
    "fs": lambda p: frozenset(_unflooded(p)),
    "mk": _markup,
}


def _untag_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and _TAG in obj:
        tag, payload = obj[_TAG]
        return _UNTAG[tag](payload)
    return obj


#: what ``json.dumps(..., separators=(",", ":"), ensure_ascii=False)`` builds per call,
#: built once (the same text; 1.6 against 3.4 µs for a small dict)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class JSONSerializer:
    """JSON with tagged types (the default codec).

    Integers are written as their decimal text, so Redis ``INCRBY`` works on values
    this codec stored. Timezone-aware datetimes keep their UTC offset (a ``ZoneInfo``
    comes back as a fixed offset; the instant is the same)."""

    name = "json"
    _ext: _Extensions = ()

    def _hook(self, obj: dict[str, Any]) -> Any:
        return _untag_hook(obj)

    def dumps(self, value: Any) -> bytes:
        try:
            return _ENCODER.encode(_tag(value, self._ext)).encode("utf-8")
        except SerializationError:
            raise
        except (TypeError, ValueError, RecursionError) as e:
            raise SerializationError(
                f"cannot serialize a value of type {_describe(value)!r} with the json codec: {e}"
            ) from e

    def _json_decoder(self) -> json.JSONDecoder:
        """The codec's decoder (its tag hook), one per codec: ``json.loads`` with a hook
        builds one per call. The cache runs its C scanner itself (``_CacheCore._loads``:
        no copy of the payload, no whitespace checks)."""
        decoder = self.__dict__.get("_decoder")
        if decoder is None:
            decoder = self.__dict__["_decoder"] = json.JSONDecoder(object_hook=self._hook)
        return decoder

    def loads(self, data: bytes) -> Any:
        try:
            decoder = self.__dict__.get("_decoder") or self._json_decoder()
            return decoder.decode(data if isinstance(data, str) else str(data, "utf-8"))
        except Exception as e:  # a crafted tag payload can raise Overflow/Attribute/RecursionError
            raise SerializationError(f"the {self.name} codec refused a payload of {_length(data)}") from e


def _response_payload(response: Any) -> list[Any]:
    if response.direct_passthrough or response.is_streamed and not response.implicit_sequence_conversion:
        raise SerializationError("cannot serialize a streamed or passed-through response (a file?)")
    return [_writable("a response", _status_line, response.status),
            [[k, v] for k, v in response.headers.items()], response.get_data()]


#: a status as servers send it: three digits, then a space and a reason of tabs, spaces
#: and visible characters (RFC 9112 4)
_STATUS_LINE = re.compile(r"([0-9]{3})(?: [\t\x20-\x7e\x80-\xff]*)?")

_NOT_HTTP = "not an HTTP status (100-599, RFC 9110 15; a reason of visible characters)"


def _status_code(code: Any) -> int:
    """*code*, a cached response's or HTTP exception's status. :raises SerializationError:
    not one of 100-599 (RFC 9110 15): werkzeug makes a response of any int, which Flask
    answered ('1000000000000000000000000000000 UNKNOWN') and gunicorn failed."""
    if type(code) is not int or not 100 <= code <= 599:
        raise SerializationError(f"{code!r:.40} is {_NOT_HTTP}")
    return code


def _status_line(status: Any) -> str:
    """*status*, a cached response's status line: a :func:`_status_code` of three
    digits, then a reason of visible characters (:data:`_STATUS_LINE`). :raises
    SerializationError: not one."""
    line = _STATUS_LINE.fullmatch(status) if isinstance(status, str) else None
    if line is None:
        raise SerializationError(f"{status!r:.40} is {_NOT_HTTP}")
    _status_code(int(line[1]))
    return line[0]


def _description(text: Any) -> str | None:
    """*text*, an HTTP exception's description: a str or ``None`` (werkzeug renders it
    as text). :raises SerializationError: anything else (``abort(400, description={...})``,
    say)."""
    if not isinstance(text, (str, type(None))):
        raise SerializationError(f"a description of type {_describe(text)!r} is not text (a str or None)")
    return text


def _writable(what: str, check: Callable[[Any], T], value: Any) -> T:
    """*value* as *check* reads it back (the reader's own check), on writing: a
    :class:`~statekit.errors.SerializationError` naming *what* is written instead, so
    the codec never stores what it refuses to read (a miss on every read, the view run
    again each time, for as long as the entry lives)."""
    try:
        return check(value)
    except SerializationError as e:
        raise SerializationError(f"cannot serialize {what} with the web-json codec: {e}") from None


def _response(payload: list[Any]) -> Any:
    from werkzeug.wrappers import Response

    status, headers, body = payload
    if not (isinstance(status, str) and isinstance(body, bytes)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in headers)):
        raise SerializationError("not a response payload")
    return Response(body, status=_status_line(status), headers=[(k, v) for k, v in headers])


def _http_exception_payload(exc: Any) -> list[Any]:
    code = exc.code if exc.code is None else _writable("an HTTP exception", _status_code, exc.code)
    return [code, _writable("an HTTP exception", _description, exc.description),
            exc.get_response()]


def _http_exception(payload: list[Any]) -> Any:
    from werkzeug.exceptions import HTTPException, default_exceptions
    from werkzeug.wrappers import Response

    code, description, response = payload
    _description(description)
    if not (response is None or type(response) is Response):
        raise SerializationError("not an HTTP exception payload")
    if code is None and response is not None:  # abort(a response): it answers with that response
        return HTTPException(description, response=response)
    cls = default_exceptions.get(_status_code(code))
    if cls is None:
        exc = HTTPException(description, response=response)
        exc.code = code
        return exc
    return cls(description=description, response=response)


class WebJSONSerializer(JSONSerializer):
    """:class:`JSONSerializer` plus a safe representation of what web framework caches
    store, so they need no pickle:

    * a werkzeug (Flask) ``Response``: status, headers and body; it comes back as a
      ``werkzeug.wrappers.Response`` (Flask turns it into its own response class).
      A streamed or passed-through response (``send_file``) is refused.
    * an ``HTTPException`` a view raised (``abort(404)``, Flask-Caching caches it):
      code, description and the response it renders; it comes back as werkzeug's
      class for that code (a custom subclass comes back as that code's class);
      ``abort(response)``, which has no code, with its response.
      A response or exception whose status is not one of 100-599 with a reason of
      visible characters, or an exception whose description is not a str, is refused
      on writing (a :class:`~statekit.errors.SerializationError` at the caller, before
      any I/O: Flask-Caching logs it and serves the view's answer uncached) and on
      reading (a miss: a crafted entry).
    * ``markupsafe.Markup`` (a rendered template fragment) comes back as ``Markup``,
      so autoescaping does not escape it again (a tag of :class:`JSONSerializer`'s
      own, the same for sessions).

    Everything else is :class:`JSONSerializer`'s format: either codec reads what the
    other wrote, except that the plain JSON codec refuses the first two tags. Nothing
    is executed on reading, but whoever can write to the store can change what a
    cached page or fragment shows, as with any cached HTML; where that must be ruled
    out, use :class:`SignedPickleSerializer`, whose payloads cannot be forged.
    """

    name = "web-json"

    def __init__(self) -> None:
        ext: list[tuple[type, str, Callable[[Any], Any]]] = []
        try:
            from werkzeug.exceptions import HTTPException
            from werkzeug.wrappers import Response
        except ImportError:  # nothing of werkzeug's to store, then
            pass
        else:
            ext += [(Response, "rsp", _response_payload), (HTTPException, "hx", _http_exception_payload)]
        self._ext = tuple(ext)

    def _hook(self, obj: dict[str, Any]) -> Any:
        if len(obj) == 1 and _TAG in obj:
            tag, payload = obj[_TAG]
            web = _WEB_UNTAG.get(tag)
            if web is not None:
                return web(payload)
        return _untag_hook(obj)


_WEB_UNTAG: dict[str, Callable[[Any], Any]] = {"rsp": _response, "hx": _http_exception}


# -- msgpack ------------------------------------------------------------------------

_EXT_CODES = {
    dt.datetime: 1, dt.date: 2, dt.time: 3, decimal.Decimal: 4, uuid.UUID: 5,
    tuple: 6, set: 7, frozenset: 8, dt.timedelta: 9,
}

#: tuples, sets, frozensets and timedeltas nested in one another, at most: each is an
#: ext value packed (and read) by a nested msgpack call with a C stack of its own
#: (~40 KB), so 200 levels, a few hundred bytes, overflowed a thread's 8 MB stack
#: (SIGSEGV) on reading. Deeper is refused both ways: no stored value is unreadable
_MAX_EXT_DEPTH = 32
_TOO_DEEP = f"tuples, sets, frozensets and timedeltas nest at most {_MAX_EXT_DEPTH} deep in this codec"


#: the heads msgpack reads a Timestamp from (type -1 of 4, 8 or 12 bytes): fixext 4 and
#: 8, the ones it writes, and ext 8, 16 and 32, which it reads as well
_TIMESTAMP_HEAD = re.compile(rb"[\xd6\xd7]\xff|(?:\xc7|\xc8\x00|\xc9\x00\x00\x00)[\x04\x08\x0c]\xff")


def _may_hold_timestamp(data: bytes) -> bool:
    """Whether *data* may hold a msgpack Timestamp: one of the heads msgpack reads it
    from (its type byte 0xff looked for first: one ``memchr``; never in UTF-8 text, and
    an int -1 or 255 or bytes holding 0xff seldom follow such a head)."""
    return b"\xff" in data and _TIMESTAMP_HEAD.search(data) is not None


def _no_timestamp(stamp: type, value: T, items: Iterable[Any]) -> T:
    """*value*, unless *items* (of *value*, as msgpack read them) hold a msgpack
    Timestamp (*stamp*): a :class:`~statekit.errors.SerializationError`."""
    if stamp in map(type, items):
        raise SerializationError("the msgpack codec refused a payload: it holds a msgpack Timestamp "
                                 "(ext -1), which statekit does not write")
    return value


class MsgpackSerializer:
    """msgpack with the same tagged types as :class:`JSONSerializer`, as ext codes
    (``Markup`` is code 10).
    Tuples, sets, frozensets and timedeltas nest at most 32 deep in one another (a
    :class:`~statekit.errors.SerializationError` beyond, writing or reading)."""

    name = "msgpack"

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError as e:
            raise ConfigError(
                "the msgpack codec needs msgpack: pip install 'statekit[msgpack]'"
            ) from e
        self._msgpack = msgpack

    def _default(self, value: Any, depth: int = 0) -> Any:
        m = self._msgpack
        t = type(value)
        code = _EXT_CODES.get(t)
        if code is None:
            if t is bytearray:
                return bytes(value)
            if _is_markup(value):
                return m.ExtType(10, str(value).encode())
            raise SerializationError(
                f"cannot serialize a value of type {_describe(value)!r} with the msgpack codec"
            )
        if depth >= _MAX_EXT_DEPTH and code in (6, 7, 8, 9):
            raise SerializationError(
                f"cannot serialize a value of type {_describe(value)!r} with the msgpack codec: {_TOO_DEEP}"
            )
        if t in (tuple, set, frozenset):
            body = self._pack(list(value), depth + 1)
        elif t is uuid.UUID:
            body = value.bytes
        elif t is dt.timedelta:
            body = self._pack([value.days, value.seconds, value.microseconds], depth + 1)
        else:
            body = (str(value) if t is decimal.Decimal else _iso(value)).encode()
        return m.ExtType(code, body)

    def _ext_hook(self, code: int, data: bytes, depth: int = 0, counted: bool = False) -> Any:
        if depth >= _MAX_EXT_DEPTH and code in (6, 7, 8, 9):
            raise SerializationError(f"the msgpack codec refused a payload: {_TOO_DEEP}")
        if code in (6, 7, 8):
            items = self._unpack(data, depth + 1, counted)
            return (tuple, set, frozenset)[code - 6](items if code == 6 else _unflooded(items))
        if code == 5:
            return uuid.UUID(bytes=data)
        if code == 9:
            d, s, us = self._unpack(data, depth + 1, counted)
            return dt.timedelta(days=d, seconds=s, microseconds=us)
        text = data.decode()
        if code == 1:
            return dt.datetime.fromisoformat(text)
        if code == 2:
            return dt.date.fromisoformat(text)
        if code == 3:
            return dt.time.fromisoformat(text)
        if code == 4:
            return decimal.Decimal(text)
        if code == 10:
            return _markup(text)
        raise SerializationError(f"unknown msgpack ext code {code}")

    def _pack(self, value: Any, depth: int = 0) -> bytes:
        packed: bytes = self._msgpack.packb(
            value, default=self._default if not depth else functools.partial(self._default, depth=depth),
            strict_types=True, use_bin_type=True
        )
        return packed

    def _unpack(self, data: bytes, depth: int = 0, counted: bool = False) -> Any:
        """*data* with maps keyed by str or bytes only (seeded hashes: msgpack builds them,
        and raises ValueError for another key), or, *counted*, by anything, each map's
        keys counted first (:func:`_dict_of_pairs`); the ext values inside alike.

        A msgpack Timestamp (ext -1, which msgpack reads itself, past *ext_hook*) is
        refused, at any depth and as a key: statekit never writes one. Looked for only
        when *data* holds the head of one (:func:`_may_hold_timestamp`): each array
        and map then checked as msgpack builds it."""
        hook = (self._ext_hook if not depth and not counted
                else functools.partial(self._ext_hook, depth=depth, counted=counted))
        stamp = self._msgpack.Timestamp if _may_hold_timestamp(data) else None
        hooks: dict[str, Any] = {}
        if stamp is not None:
            hooks["list_hook"] = lambda items: _no_timestamp(stamp, items, items)
        if counted:
            hooks["object_pairs_hook"] = _dict_of_pairs if stamp is None else (
                lambda pairs: _dict_of_pairs(_no_timestamp(stamp, pairs, chain.from_iterable(pairs))))
        elif stamp is not None:
            hooks["object_hook"] = lambda d: _no_timestamp(stamp, d, d.values())  # (keys: str or bytes)
        value = self._msgpack.unpackb(data, ext_hook=hook, raw=False, strict_map_key=not counted,
                                      use_list=True, **hooks)
        return value if stamp is None else _no_timestamp(stamp, value, (value,))

    def dumps(self, value: Any) -> bytes:
        try:
            return self._pack(value)
        except SerializationError:
            raise
        except (TypeError, ValueError, OverflowError, RecursionError) as e:
            raise SerializationError(
                f"cannot serialize a value of type {_describe(value)!r} with the msgpack codec: {e}"
            ) from e

    def loads(self, data: bytes) -> Any:
        try:
            try:
                return self._unpack(data)
            except ValueError as e:
                if "strict_map_key" not in str(e):
                    raise
            # a map keyed by numbers, UUIDs, tuples... (at any ext level): the whole payload
            # once more, every map's keys counted
            return self._unpack(data, counted=True)
        except SerializationError:
            raise
        except Exception as e:  # msgpack raises a family of its own errors and ValueError
            raise SerializationError(f"the msgpack codec refused a payload of {_length(data)}") from e


# -- signed pickle ------------------------------------------------------------------

_SIG_LEN = 32
_SALT = b"statekit.signed-pickle.v1"


def _key_list(keys: Iterable[str | bytes] | str | bytes) -> list[str | bytes]:
    """The non-empty keys; a lone str or bytes is one key, not one per character."""
    return [k for k in ([keys] if isinstance(keys, (str, bytes)) else keys) if k]


def _derive(key: str | bytes) -> bytes:
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return hmac.new(raw, _SALT, hashlib.sha256).digest()


class _Mac:
    """HMAC-SHA256 under one key, keyed once: :mod:`hmac`'s object for the key is
    made here and copied per message (``hmac.new`` per call runs the key schedule
    again: 1.15 against 1.7 µs for a small pickle). Copying takes the object's lock,
    so one object serves every thread. Copied or pickled (a codec inside settings
    that are deep-copied), it is made again from its key."""

    __slots__ = ("_key", "_keyed")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def __reduce__(self) -> tuple[type[_Mac], tuple[bytes]]:
        return _Mac, (self._key,)

    def __call__(self, body: bytes | memoryview) -> bytes:
        mac = self._keyed.copy()
        mac.update(body)
        return mac.digest()


class SignedPickleSerializer:
    """Pickle behind an HMAC-SHA256 signature, for objects JSON cannot carry.

    :param keys: secret keys, newest first. The newest signs; every key verifies, so
        keys can be rotated by prepending a new one and dropping the oldest later.

    The signature covers the whole pickle and is verified before ``pickle.loads`` is
    called. Anyone who can write to the store but does not hold a key cannot make a
    payload this codec will unpickle. Anyone who *does* hold a key can run code in
    every process that reads the store: treat the keys like the app's secret key.
    """

    name = "signed-pickle"

    def __init__(self, keys: Iterable[str | bytes], *, protocol: int = pickle.HIGHEST_PROTOCOL):
        keys = _key_list(keys)
        if not keys:
            raise ConfigError("the signed-pickle codec needs at least one secret key")
        self._macs = [_Mac(_derive(k)) for k in keys]
        self._protocol = protocol

    def dumps(self, value: Any) -> bytes:
        try:
            body = pickle.dumps(value, protocol=self._protocol)
        except Exception as e:  # pickle raises PicklingError, TypeError, AttributeError ...
            raise SerializationError(
                f"cannot serialize a value of type {_describe(value)!r} with the signed-pickle codec: {e}"
            ) from e
        return self._macs[0](body) + body

    def loads(self, data: bytes) -> Any:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SerializationError(f"the signed-pickle codec refused a payload of {_length(data)}")
        data = bytes(data)
        if len(data) <= _SIG_LEN:
            raise SignatureError("signed-pickle payload is too short to carry a signature")
        sig, body = data[:_SIG_LEN], data[_SIG_LEN:]
        for mac in self._macs:
            if hmac.compare_digest(sig, mac(body)):
                try:
                    return pickle.loads(body)  # noqa: S301 - verified above
                except Exception as e:
                    raise SerializationError("signed-pickle payload could not be unpickled") from e
        raise SignatureError("signed-pickle payload failed signature verification; not unpickled")


def get_serializer(
    spec: str | Serializer | None = None, *, secret_keys: Iterable[str | bytes] | None = None
) -> Serializer:
    """Return a codec from a name (``"json"``, ``"msgpack"``, ``"signed-pickle"``) or
    pass a ready one through. ``None`` means JSON."""
    if spec is None or spec == "json":
        return JSONSerializer()
    if not isinstance(spec, str):
        if isinstance(spec, Serializer):
            return spec
        raise ConfigError(f"not a serializer: {spec!r} (needs name, dumps and loads)")
    if spec == "msgpack":
        return MsgpackSerializer()
    if spec == "signed-pickle":
        keys = _key_list(secret_keys or ())
        if not keys:
            raise ConfigError(
                "the signed-pickle codec needs secret keys (STATEKIT_SECRET_KEYS or secret_keys=)"
            )
        return SignedPickleSerializer(keys)
    if spec == "pickle":
        raise ConfigError(
            "unsigned pickle is not offered: a store writer could run code in your processes; "
            "use 'signed-pickle' with secret keys"
        )
    raise ConfigError(f"unknown serializer {spec!r}; choose json, msgpack or signed-pickle")


class _AsPickleError:
    """:func:`unencodable_as_pickle_error`'s context manager: a class, not a
    ``@contextmanager`` generator (made, entered and left on every Django ``set``:
    ~0.75 µs that way, ~0.15 µs this way)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        if isinstance(error, SerializationError) and not isinstance(error, UnencodableValue):
            raise UnencodableValue(str(error)) from error


_AS_PICKLE_ERROR = _AsPickleError()


def unencodable_as_pickle_error() -> _AsPickleError:
    """Raise an encode-time :class:`~statekit.errors.SerializationError` as
    :class:`~statekit.errors.UnencodableValue` (a ``pickle.PickleError``), as the
    Django and cachelib cache contracts ask (a context manager)."""
    return _AS_PICKLE_ERROR
