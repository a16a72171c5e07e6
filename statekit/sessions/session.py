"""The session a request works with: a dict that records what the request changed
and decodes stored values only when they are read."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import BackendUnavailable

if TYPE_CHECKING:
    from . import SessionStore, _StoreCore

__all__ = ["Committed", "Session", "SessionInfo", "warn_secure_cookie_over_http"]

_log = logging.getLogger("statekit.sessions")

_IMMUTABLE = frozenset({str, int, float, bool, bytes, type(None)})


class Session(dict[str, Any]):
    """The data of one session: a dict that records whether it was modified.

    Values are checked against the store's codec on assignment, so a value that
    cannot be stored fails where it is assigned, with a
    :class:`~statekit.errors.SerializationError` naming the key and the type. In-place
    changes of a mutable value (``session["cart"].append(x)``) are not seen: set
    ``session.modified = True`` or assign the value again.

    **Lazy decoding.** A loaded session decodes a stored value the first time it is
    read (``session[k]``, ``get``, ``items()``, comparing, copying), so a request
    that reads two keys of a session of ten thousand decodes two. Keys starting
    with ``_`` (the frameworks' own: Flask's ``_permanent``, Flask-Login's
    ``_user_id``, Django's ``_auth_user_id``) are decoded at load. A stored value
    that cannot be decoded raises :class:`~statekit.errors.SerializationError`
    where it is read. Until then the dict itself holds the stored bytes: read it
    through these methods, not ``dict.get(session, k)``.

    ``sid`` is the raw id (put :meth:`SessionStore.sign` of it in the cookie);
    ``handle`` names the stored session (it follows a rotation by another request:
    see :attr:`through_alias`); ``new`` is true until the session is first stored;
    ``send_cookie`` tells the adapter the id changed (first stored, or rotated) and
    the cookie must be sent; ``unavailable`` marks the read-only session served
    during an outage.
    """

    #: destroyed by this request (:meth:`SessionStore.destroy`, a logout), which emptied
    #: it: what it holds since was set after, and is carried to a new id by
    #: :meth:`SessionStore.commit`; not a session a save or ``incr`` found revoked or
    #: ended, whose data (a login included) stays ended
    _destroyed_here = False

    def __init__(self, store: _StoreCore, sid: str, data: Mapping[str, Any] | None = None, *,
                 new: bool = True, meta: Mapping[str, Any] | None = None,
                 raw: Mapping[str, bytes] | None = None, handle: str | None = None) -> None:
        super().__init__(data or {})
        meta = meta or {}
        self.store = store
        self.sid = sid
        self.handle = handle or store._handle(sid)
        self.new = new
        self._modified = False
        self._full_diff = False
        self._touched: set[str] = set()
        self.rotated = False
        self.send_cookie = False
        #: whether the last :meth:`SessionStore.save` wrote to the store (a change or a
        #: TTL refresh): only a write learns of a rotation by another request, so the
        #: adapters send an unchanged session's refresh cookie only then
        self.written = False
        self.destroyed = False
        self.unavailable = False
        #: :meth:`clear` was called: a stored session is then logged out at the
        #: adapter's save (:meth:`logging_out`), whatever was set after the clear, and
        #: even if it held nothing (a logout an outage cut between its save and its
        #: destroy, retried)
        self.cleared = False
        #: the cookie named a session rotated to a new id moments ago (a tombstone):
        #: this is a fresh session instead, and the browser most likely holds the new
        #: cookie already, so adapters send no session cookie (kept or deleted) for it;
        #: a rotation (a login in this request) clears it
        self.superseded = False
        #: the cookie named nothing this store knows: not one it signed, nor (with a
        #: carry-over) a session of the previous store, or one carried over before the
        #: window: another app's cookie of the same name, most likely, which adapters
        #: leave alone (a session the previous store holds and refuses is not this)
        self.foreign_cookie = False
        self.created: float = meta.get("created", 0.0)
        self.last_seen: float = meta.get("last_seen", 0.0)
        self.loaded_user: str | None = meta.get("user")
        self.user_id: str | None = self.loaded_user
        self.idle_timeout: float | None = meta.get("idle")
        #: the stored version (``m:v``), bumped by every save that changed something
        self.version: int = meta.get("version", 0)
        self.loaded_version = self.version
        self._loaded_idle = self.idle_timeout
        #: the stored encoding of each key (what a save compares against). A key whose
        #: dict value is that very bytes object has not been decoded yet. A *raw* dict
        #: is adopted as it is (the store builds a new one for each load).
        self._encoded: dict[str, bytes] = raw if type(raw) is dict else dict(raw or {})
        # the encodings of immutable values, made at assignment or decoded from (reused
        # by save: see _encoding_of)
        self._fresh: dict[str, tuple[Any, bytes]] | None = None
        if raw:
            dict.update(self, self._encoded)
            for key in [k for k in self._encoded if k[0] == "_"]:
                self._decoded(key)
        # its id reached other requests before its cookie reached the browser (a
        # carry-over's claim): a save writes, to learn of a rotation by one of them
        self._shared = False
        # the fields sent by creates of this new session whose outcome is unknown (a
        # reply lost): the next save sends the same create (their m:c), never another
        self._pending: dict[str, bytes] | None = None

    @property
    def key(self) -> str:
        """The storage key of :attr:`handle` (``<prefix>:session:<handle>`` in Redis)."""
        return self.store._key_of(self.handle)

    # -- lazy decoding ----------------------------------------------------------------

    def _decoded(self, key: str) -> Any:
        """The value of *key* (present), decoded now if it was not yet."""
        value = dict.__getitem__(self, key)
        if value.__class__ is bytes and value is self._encoded.get(key):
            raw, value = value, self.store._decode(key, value)
            dict.__setitem__(self, key, value)
            self._encoding_of(key, value, raw)  # a full diff then compares it by identity
        return value

    def _decode_all(self) -> None:
        encoded = self._encoded
        for key in [k for k, v in dict.items(self) if v.__class__ is bytes and v is encoded.get(k)]:
            self._decoded(key)

    def __getitem__(self, key: str) -> Any:
        return self._decoded(key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        # dict's own test: a subclass's __contains__ (Flask's marks the session accessed,
        # as its get already did) is a second Python call per get
        return self._decoded(key) if dict.__contains__(self, key) else default

    def __iter__(self) -> Any:
        # defined here so that dict(session) and {**session} read values through
        # __getitem__ (CPython copies a dict subclass's slots directly unless it
        # overrides __iter__)
        return dict.__iter__(self)

    def items(self) -> Any:
        self._decode_all()
        return dict.items(self)

    def values(self) -> Any:
        self._decode_all()
        return dict.values(self)

    def copy(self) -> dict[str, Any]:
        self._decode_all()
        return dict(dict.items(self))

    def __eq__(self, other: object) -> bool:
        self._decode_all()
        if isinstance(other, Session):
            other._decode_all()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]

    def __or__(self, other: Any) -> dict[str, Any]:  # type: ignore[override]
        return self.copy() | other  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        self._decode_all()
        return dict.__repr__(self)

    # -- changes ----------------------------------------------------------------------

    @property
    def modified(self) -> bool:
        """Whether this request changed the session. Setting it to ``True`` yourself
        (after changing a value in place) makes the next save compare every key."""
        return self._modified

    @modified.setter
    def modified(self, value: bool) -> None:
        self._modified = value
        self._full_diff = value
        if not value:
            self._touched.clear()
            self._fresh = None

    @property
    def maybe_stored(self) -> bool:
        """Whether this new session's first save reached the store and its reply was
        lost (a timeout, or the request cancelled): it may be stored under
        :attr:`sid`. The next :meth:`SessionStore.save` sends the same create, never a
        second session; an adapter answering 503 may send the cookie anyway, so the
        browser's retry continues this session if it was stored (else that cookie
        opens a fresh one). A create the engine refused before sending it
        (:class:`~statekit.sessions.protocol.NotSent`: the connection refused) is
        certainly not stored: this stays false."""
        return self.new and self._pending is not None

    @property
    def through_alias(self) -> bool:
        """Whether this request loaded the session before another request rotated it
        (a request in flight with the pre-login cookie) and its writes followed the
        rotation's alias: that old cookie must not be sent back (it names a
        tombstone now, and would replace the new cookie in the browser)."""
        return not self.new and self.handle != self.store._handle(self.sid)

    def _changing(self, key: str) -> None:
        if self.unavailable:
            raise BackendUnavailable("the session store is unavailable: this session is read-only")
        self._modified = True
        self._touched.add(key)

    def __setitem__(self, key: str, value: Any) -> None:
        enc = self.store._encode(key, value)
        self._changing(key)
        super().__setitem__(key, value)
        self._encoding_of(key, value, enc)

    def _encoding_of(self, key: str, value: Any, enc: bytes) -> None:
        """Remember that *enc* encodes *value* (assigned, or decoded from *enc*) if it
        cannot change in place: a save reuses it while *key* holds that very object,
        so the comparison after ``modified = True`` (a permanent Flask session's every
        request) encodes again only the values that could have changed in place."""
        if type(value) in _IMMUTABLE:
            if self._fresh is None:
                self._fresh = {}
            self._fresh[key] = (value, enc)

    def __delitem__(self, key: str) -> None:
        self._changing(key)
        super().__delitem__(key)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def __ior__(self, other: Any) -> Session:  # type: ignore[override,misc]
        self.update(other)
        return self

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            value = self._decoded(key)
            self._changing(key)
            dict.__delitem__(self, key)
            return value
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        if self.unavailable:
            raise BackendUnavailable("the session store is unavailable: this session is read-only")
        if not self:
            return super().popitem()  # KeyError
        key = next(reversed(dict.keys(self)))
        return key, self.pop(key)

    def clear(self) -> None:
        for key in list(self):
            self._changing(key)
        super().clear()
        self.cleared = True

    def logging_out(self, had_data: bool) -> bool:
        """Whether this request's save ends this stored session (a logout): it was
        :meth:`clear`-ed, whatever was set after (Flask's ``session.clear();
        flash("logged out")``), or emptied key by key (*had_data*: it held data when
        loaded). The adapters then destroy it and store what was set after the clear
        under a fresh id (:meth:`SessionStore.commit`)."""
        return not self.destroyed and not self.new and (self.cleared or had_data and not self)

    def _sync_store(self, what: str) -> SessionStore:
        from . import SessionStore

        if not isinstance(self.store, SessionStore):
            raise TypeError(f"a session of an async store: use 'await store.{what}(session, ...)'")
        return self.store

    def rotate(self) -> None:
        """Give this session a new id now (see :meth:`SessionStore.rotate`; with an
        :class:`~statekit.sessions.aio.AsyncSessionStore`, ``await store.rotate(session)``)."""
        self._sync_store("rotate").rotate(self)

    def incr(self, key: str, amount: int = 1) -> int:
        """Atomically add *amount* to an integer key (see :meth:`SessionStore.incr`)."""
        return self._sync_store("incr").incr(self, key, amount)

    def destroy(self) -> None:
        """Delete this session now (see :meth:`SessionStore.destroy`)."""
        self._sync_store("destroy").destroy(self)


@dataclass(frozen=True)
class SessionInfo:
    """One entry of :meth:`SessionStore.list_user_sessions`. ``handle`` names the
    session for :meth:`SessionStore.revoke_session` (given the signed-in user, it
    deletes only that user's session) without revealing its id."""

    handle: str
    created: float
    last_seen: float
    user_id: str | None


class Committed(NamedTuple):
    """What :meth:`SessionStore.commit` did: whether it stored the session (``False``:
    it ended, or was destroyed or revoked meanwhile, and nothing of it was written) and
    the session that carries what the request set after a logout, stored under a new
    id (``None`` when there is none): send its cookie instead of deleting the cookie."""

    saved: bool
    carried: Session | None


#: hosts whose plain-http pages browsers still send ``Secure`` cookies to
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
#: when the next "Secure cookie over plain http" line may be logged, and how many
#: were not logged since the last one (see :func:`warn_secure_cookie_over_http`)
_plain_http_log: list[Any] = [0.0, 0]
_plain_http_lock = threading.Lock()
#: what the "Secure cookie over plain http" line tells to change for plain-http development
_PLAIN_HTTP_FIX = "set STATEKIT_SESSION_COOKIE_SECURE=false"


def _host_name(host: str) -> str:
    """*host* (a ``Host`` header: ``name``, ``name:port``, ``[::1]:port``) without its
    port and brackets, in lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def warn_secure_cookie_over_http(https: bool, host: str | None, fix: str = _PLAIN_HTTP_FIX) -> None:
    """Log (``statekit.sessions``, WARNING) that a session cookie marked ``Secure`` was
    set on a request that arrived over plain http at *host*: no client sends such a
    cookie back over http, so every request starts a new, empty session. The adapters
    call it whenever they set a ``Secure`` session cookie, with their framework's own
    view of the scheme (*https*: Flask's ``request.is_secure``, Django's
    ``request.is_secure()``, the ASGI scope's scheme), so a proxy's forwarded scheme
    the app trusts (ProxyFix, ``SECURE_PROXY_SSL_HEADER``, ``--forwarded-allow-ips``)
    counts as https. Not logged for https, nor for localhost, 127.0.0.1 and ::1
    (browsers send Secure cookies to their http pages). The first at once, then at
    most one line a process every ``REJECT_LOG_INTERVAL`` seconds, saying how many
    were not logged, as the refused-cookie log does. *fix*: what turns ``Secure`` off
    where the adapter reads it (the Starlette adapter's names ``https_only`` too)."""
    if https or host is None or _host_name(host) in _LOCAL_HOSTS:
        return
    from . import REJECT_LOG_INTERVAL

    t = time.monotonic()
    with _plain_http_lock:
        due, quiet = _plain_http_log
        if t < due:
            _plain_http_log[1] = quiet + 1
            return
        _plain_http_log[:] = [t + REJECT_LOG_INTERVAL, 0]
    _log.warning(
        "session cookie marked Secure sent to a plain-http request (Host: %s): clients send it back "
        "only over https, so every request starts a new, empty session. Serve the app over https "
        "(behind a proxy that ends TLS, trust its forwarded scheme: Flask's ProxyFix, Django's "
        "SECURE_PROXY_SSL_HEADER, the server's forwarded headers such as --forwarded-allow-ips), "
        "or %s for plain-http development%s", host, fix,
        f" ({quiet} more since the last such line, not logged)" if quiet else "")
