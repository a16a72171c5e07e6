"""Server-side sessions in Redis (or another engine), framework-neutral.

::

    store = SessionStore("redis://127.0.0.1:6379/0", secret_keys=["s3cret"])
    session = store.open(request.cookies.get("session"))   # one Redis round trip
    session["cart"] = ["apple"]
    store.save(session)                                     # one round trip, changed keys only
    response.set_cookie("session", store.sign(session.sid), httponly=True, samesite="Lax")

**Storage.** One Redis hash per session, under a key derived from a SHA-256 of the
session id (a Redis dump holds no usable cookie): one field per session key plus
metadata (created, last seen, user id, version). Values go through a tagged JSON or
msgpack codec (:mod:`statekit.serializers`), never pickle.

**Concurrency.** :meth:`SessionStore.save` writes only the keys the request changed
or deleted, in one atomic engine write (one Lua script on Redis). Two concurrent
requests that change *different* keys both keep their change; for the *same* key
the last writer wins, for that key only.
:meth:`SessionStore.incr` is an atomic counter. No write recreates a session that
was destroyed, revoked or expired meanwhile. The per-user index follows the user
stored in the session (``m:u``, last writer wins like any key): a save or rotation by
a request that loaded the session before another request changed its user indexes it
under the stored user, so it is listed and revoked as that user's, and no one else's.

**Ids and cookies.** Ids are 256-bit random values (plus a 4-hex-digit slot tag kept
across rotations, so a session's old and new keys share a Redis Cluster slot). The
cookie carries the id signed in itsdangerous's format (HMAC-SHA256); a list of secret keys allows key
rotation (the first signs, all verify). A tampered, truncated, foreign-key-signed or
oversized cookie gives a fresh session without any Redis call and is logged to the
``statekit.security`` logger.

**Timeouts** (idle, sliding; absolute lifetime) are checked at load from the stored
metadata, and mirrored in the Redis TTL. An unmodified request writes nothing except
a TTL refresh at most once per ``refresh_interval``. **Cookie refresh:** adapters send
an unchanged session's cookie again (a sliding ``Expires``) only with such a write
(``session.written``), never from a request that wrote nothing: a read-only request
in flight at a login does not know of the rotation, and its old cookie would replace
the new one in the browser (logged out). A write learns of the rotation (it follows
the alias: ``session.through_alias``), and then no cookie is sent. So the cookie's
expiry tracks the server's TTL, at no Redis call on an unchanged request.

**Rotation** (:meth:`SessionStore.rotate`, on login) moves the data to a new id in
one script; the old id becomes a *tombstone alias* for ``alias_window`` seconds. No
session fixation: the old id never reads the new (logged-in) state. A request that
*loads* with the old cookie after the rotation gets a fresh, empty session, as with
an unknown id (Django's own engines do the same), whoever sends it: the browser that
logged in, or an attacker who planted that cookie. While the alias lives the adapters
send no cookie for it (``session.superseded``), neither a new one nor a deletion: the
browser that logged in may have sent that request before the login answered, and
its answer would replace the new cookie (logged out); unless that request logs in
itself (a rotation: its cookie is the browser's newest login, sent as any login's,
so a login retried after one that failed with a 5xx is not lost). Only requests already *in flight*
(they loaded the session before the rotation) use the alias: their writes (a save,
``incr``, a logout) follow it into the new session, so none is lost and the old id
never comes back. A rotation by such a request (two logins at once) does not take the
rotated session over (its new id would reach a pre-rotation cookie): it gets a new
session of its own with the data it loaded, if the session still lives.

**Devices.** :meth:`SessionStore.list_user_sessions` lists a user's live sessions
(a :class:`SessionInfo` each: when created and last seen, and a *handle* that names
the session without revealing its id); :meth:`SessionStore.revoke_session` signs one
out. Pass it the signed-in user, ``store.revoke_session(request.form["handle"],
current_user.id)``: it deletes the session only if that user holds it (checked in
the destroy script itself), so a handle another user sends (a device page shows
them) signs no one out and returns ``False``. :meth:`SessionStore.revoke_user` signs
a user out everywhere.

**Redis Cluster.** A session's hash, its rotation alias and its successor share a
slot (the id's tag is the hash tag), so save, rotate and incr stay single atomic
scripts. The per-user index lives in the user's slot: in cluster mode it is updated
by a second call right after the session script, and :meth:`SessionStore.revoke_user`
reads the index then deletes (a login or rotation at that very instant may escape
it). Standalone and Sentinel do both in one script.

**Near cache** (``near_cache=N``, opt-in; standalone or Sentinel Redis, any
connection kind: TCP, TLS, unix socket, RESP2 or RESP3). Each process keeps a copy
of the sessions it recently loaded or saved, so a request whose session is
unchanged since needs no Redis call at all (a save still
needs one). Redis keeps the copies coherent: the connections that read and write
sessions run ``CLIENT TRACKING on REDIRECT <listener> NOLOOP``
(:class:`~statekit.redis.transport.Transport` with ``tracking=``), so every later change of a
session by any other connection (a save elsewhere, a rotation, a revocation, the
key expiring) sends its key to a listener thread, which drops the copy. Every
command on one session runs on the same connection (one of a few, chosen by the
key: ``TRACKED_LANES``), so ``NOLOOP`` keeps the process's own saves from
invalidating the copies they leave, whichever thread or task served the request;
a tracked connection that closes flushes the copies (Redis forgets what it
tracked). Before a
copy is used, that listener's connection is checked for messages not handled yet (a
zero-timeout ``poll``), so a message that has reached this host is never missed,
whatever the thread scheduling. The delivery itself races with the writer's own
response (separate connections, no common order), so the same browser's next
request is ordered after its writes by a **version token**: each
save bumps the session's version (``m:v``), the adapters send it in a second cookie
(``<cookie name>_v``, :meth:`SessionStore.version_token`), and a load uses a copy only
if it is at least that version (``open(..., version_token=...)``). The token is not
signed: a forged one can only make the near cache miss. Logout, rotation and
revocation also wait (one ``PING``) until Redis has written their invalidations, so
other processes drop a revoked session's copies within the delivery time. Copies
are used only while the listener is connected; a drop flushes them all. A copy is
kept at most ``refresh_interval`` seconds. Costs: one more connection per process
(the listener's), and one message per change of a session this process holds (per
thread connection that read it). In
short: a browser always reads its own writes (0 lost updates, tested under
gunicorn); a change made elsewhere (another device, an admin's revocation) reaches
this process's copy when its invalidation arrives: well under a millisecond on an
idle LAN, longer on an overloaded host.

**Outages.** Redis unreachable raises :class:`~statekit.errors.BackendUnavailable`
(nothing partial is written: every save is one script). With
``outage_policy="anonymous"``, :meth:`SessionStore.open` returns an empty read-only
session instead (``session.unavailable`` is true; assigning raises).

**Costs that grow with the work.** A session is decoded lazily: a value is decoded
when first read (:class:`Session`), so a request that reads two keys of a session
stored as ten thousand decodes two. :meth:`SessionStore.revoke_user` deletes in
batches of :data:`~statekit.sessions.redis.REVOKE_BATCH` sessions, one script each,
so a user with tens of thousands of sessions never blocks Redis for the other
clients; it ends when a batch finds no other session of the user left in the
index, so a session created or rotated while it runs (indexed in the same script
as its write) is revoked too.

**Async.** :class:`~statekit.sessions.aio.AsyncSessionStore` is this store with
every Redis call awaited: the same constructor, methods and stored format (keys,
Lua scripts, codecs), so sync and async workers share sessions both ways. Both run
the same steps (:class:`_StoreCore`: each operation a generator that yields the
engine calls it needs); only how a call is made differs.

**Engines.** The store does ids, cookies, codecs, timeouts and the diff of a
request's changes; an *engine* stores the hashes and user indexes and makes each
operation atomic: the :class:`~statekit.sessions.protocol.SessionEngine` Protocol
(typed results: :class:`~statekit.sessions.protocol.Status`,
:class:`~statekit.sessions.protocol.Result`). The URL's scheme picks it:
``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``, ``redis+cluster://``
and ``memory://`` are :class:`~statekit.sessions.redis.RedisEngine` (``memory://``
on an in-process fakeredis, running the same Lua scripts).

**Adding an engine** (say ``sqlite://``, in a package of your own):

1. Implement :class:`~statekit.sessions.protocol.SessionEngine` (``load``,
   ``write``, ``rotate``, ``incr``, ``destroy``, ``revoke_user``, ``list_user``,
   ``claim``, ``peek``, ``close``) and a classmethod ``from_url(url, *, key_prefix,
   counters, **options)``; each method atomic, as its docstring says. A
   ``SessionStore(engine=...)`` also takes an engine object directly.
2. Register it by entry point, the scheme as its name::

       [project.entry-points."statekit.sessions"]
       sqlite = "mypackage.sessions:SQLiteEngine"

   ``SessionStore("sqlite:///var/app/sessions.db", secret_keys=[...])`` (or
   ``STATEKIT_SESSION_URL``) then finds it (:func:`statekit.backends.load_backend`).
   ``AsyncSessionStore`` finds it too and runs its methods in worker threads; a
   native async engine implements
   :class:`~statekit.sessions.protocol.AsyncSessionEngine` (pass it as ``engine=``).
3. Run the shipped contract suite on it: subclass
   :class:`statekit.testing.contracts.sessions.SessionEngineContract` in your tests
   and give it a ``session_url`` fixture (and ``unreachable_session_url`` if your
   backend can be unreachable). statekit's own engines run exactly this suite.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from itsdangerous import BadSignature, Signer, want_bytes

from ..backends import load_backend
from ..config import Settings, number, url_and_scheme
from ..errors import BackendUnavailable, ConfigError, InvalidKey, SerializationError, SessionError
from ..metrics import Counters
from ..serializers import Serializer, _key_list, get_serializer
from .protocol import IndexOp, NotSent, Result, SessionEngine, Status
from .session import Committed, Session, SessionInfo

if TYPE_CHECKING:
    from .carryover import CarryOver

__all__ = ["AsyncSessionStore", "Committed", "Session", "SessionInfo", "SessionStore", "parse_version_token",
           "security_log"]

#: rejected cookies and other security events
security_log = logging.getLogger("statekit.security")

#: Seconds between two log lines of refused cookies of one kind (see ``_reject``).
REJECT_LOG_INTERVAL = 60.0

_ID_RE = re.compile(r"[0-9a-f]{4}[A-Za-z0-9_-]{43}\Z")
#: a cookie as :meth:`_StoreCore.sign` writes it: the id, ``.``, and HMAC-SHA256's 32 bytes
#: in unpadded URL-safe base64 (the last character's two spare bits zero). itsdangerous
#: also verifies variants (characters outside the alphabet dropped, padding or spare bits
#: added): no store issues them, so they are refused, and never fill the memo of cookies.
_COOKIE_RE = re.compile(r"[0-9a-f]{4}[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]\Z")
_MAX_KEY_LEN = 256
_SALT = "statekit.session.v1"
#: rotation aliases followed at most (each rotation within the alias window adds one)
_HOPS = 3
#: the built-in engines by URL scheme (others come from entry points, group
#: ``statekit.sessions``: see "Adding an engine" in the module docstring)
ENGINES = dict.fromkeys(("redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "memory"),
                        "statekit.sessions.redis:RedisEngine")


_T = TypeVar("_T")
_K = TypeVar("_K")
#: entries a store's memo of verified cookies, ids' handles and signed ids holds at
#: most (each emptied when full: see :func:`_remember`)
MEMO_SIZE = 8192
#: what a store's steps yield: ``(engine method name or blocking function, args, kwargs)``
Call = tuple[str | Callable[..., Any], tuple[Any, ...], dict[str, Any]]
#: a store operation as a generator of engine calls (see :class:`_StoreCore`)
Steps = Generator[Call, Any, _T]


def now() -> float:
    """Wall-clock seconds (metadata is shared between machines)."""
    return time.time()


class _DerivedOnceSigner(Signer):
    """itsdangerous's ``Signer`` deriving each secret key once instead of on every
    sign and verify (the derivation is an HMAC of its own)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._derived: dict[bytes, bytes] = {}

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        raw = self.secret_key if secret_key is None else want_bytes(secret_key)
        key = self._derived.get(raw)
        if key is None:
            key = self._derived[raw] = super().derive_key(raw)
        return key


class _CookieSigner:
    """Signs and verifies session cookies with itsdangerous (HMAC-SHA256,
    ``key_derivation="hmac"``, salt :data:`_SALT`). Comparison is constant-time.
    Immutable after construction, so safe to share between threads.

    :param keys: secret keys, newest first: the first signs, all verify.
    """

    __slots__ = ("_signer",)

    def __init__(self, keys: list[bytes]) -> None:
        # itsdangerous signs with its *last* key and verifies with all of them
        self._signer = _DerivedOnceSigner(
            list(reversed(keys)), salt=_SALT, key_derivation="hmac", digest_method=hashlib.sha256
        )

    def sign(self, value: str) -> bytes:
        return self._signer.sign(value)

    def unsign(self, signed: str | bytes) -> bytes | None:
        """The signed value, or ``None`` if the signature does not verify."""
        try:
            return self._signer.unsign(signed)
        except BadSignature:
            return None


def _remember(memo: dict[_K, _T], key: _K, value: _T) -> _T:
    """Put *value* under *key* in one of a store's memos (what a pure function of an
    immutable input gave: the id of a cookie that verified, an id's handle, an id's
    signed cookie), emptying it first when it holds :data:`MEMO_SIZE` entries: bounded,
    one lookup per hit, no lock (a race between threads can only lose entries)."""
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[key] = value
    return value


def _handle_of(sid: str) -> str:
    """The handle of session id *sid*: its slot tag and a SHA-256 of it (a Redis dump
    holds no usable cookie)."""
    return f"{{{sid[:4]}}}:{hashlib.sha256(sid.encode()).hexdigest()[:40]}"


def parse_version_token(token: str | None) -> int:
    """The session version a version-token cookie asks for (0 if none or malformed:
    the token only makes the near cache stricter, so it needs no signature)."""
    if token and len(token) <= 12 and token.isdigit():
        return int(token)
    return 0


def _near_size(value: Any) -> int:
    """``near_cache=`` (or a setting's text: on/off/a number) as a number of sessions."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("", "0", "off", "false", "no"):
            return 0
        if word in ("on", "true", "yes"):
            return 10_000
        value = int(word) if word.isdigit() else value
    if value is True:
        return 10_000
    if value is False or value is None:
        return 0
    if not isinstance(value, int) or value < 0:
        raise ConfigError(f"near_cache={value!r} must be on, off or a number of sessions")
    return value


def _float(raw: Any, default: float = 0.0) -> float:
    """A stored timestamp or timeout; *default* for one statekit never writes (text,
    ``nan``, ``inf``: a creation time of ``nan`` made a session outlive its lifetime)."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return default
    return value if math.isfinite(value) else default


def call(target: str | Callable[..., Any], *args: Any, **kwargs: Any) -> Call:
    """One call a store's steps ask their driver to make: *target* is an engine
    method's name (``"load"``, ``"write"``...) or a plain blocking function (the
    carry-over's previous store), with its arguments."""
    return (target, args, kwargs)


class _StoreCore:
    """What :class:`SessionStore` and :class:`~statekit.sessions.aio.AsyncSessionStore`
    share: the settings, ids and cookies, codecs, timeouts, the diff of a request's
    changes, and each operation as *steps*: a generator that yields the engine calls
    it needs (:func:`call`) and is sent their results. The sync store makes those
    calls directly, the async one awaits them; nothing else differs, so both read and
    write exactly the same stored sessions."""

    engine: Any

    def __init__(self, url: str | None = None, *, client: Any = None,
                 secret_keys: Iterable[str | bytes] = (), key_prefix: str = "statekit",
                 idle_timeout: float | dt.timedelta = 14 * 86400,
                 absolute_lifetime: float | dt.timedelta = 30 * 86400,
                 refresh_interval: float = 60.0, alias_window: float = 10.0,
                 codec: str | Serializer = "json", outage_policy: str = "raise",
                 user_key: str | None = None, max_cookie_size: int = 256,
                 session_class: type[Session] | None = None, near_cache: int | bool | str = 0,
                 engine: Any = None) -> None:
        keys = _key_list(secret_keys)  # a lone str is one key, not one per character
        if not keys:
            raise ConfigError("sessions need secret_keys (STATEKIT_SECRET_KEYS or the app's SECRET_KEY)")
        if outage_policy not in ("raise", "anonymous"):
            raise ConfigError(f"outage_policy={outage_policy!r} must be 'raise' or 'anonymous'")
        # seconds, or a timedelta (config.number, as a cache's ttl)
        idle_timeout, absolute_lifetime, refresh_interval, alias_window = (
            number(value, name, positive=True, text=False, unit="seconds")
            for name, value in (("idle_timeout", idle_timeout), ("absolute_lifetime", absolute_lifetime),
                                ("refresh_interval", refresh_interval), ("alias_window", alias_window)))
        # by name, before the codec is made: its own complaint (no secret keys, unsigned
        # pickle not offered) is not why a session store refuses it
        if "pickle" in str(codec if isinstance(codec, str) else getattr(codec, "name", "")).lower():
            raise ConfigError("sessions never use pickle; choose the json or msgpack codec")
        self.codec = get_serializer(codec)
        self._signer = _CookieSigner([k if isinstance(k, bytes) else k.encode() for k in keys])
        # what signing, verifying and hashing ids gave before (the keys never change):
        # cookie -> id, id -> handle, id -> cookie (:func:`_remember`)
        self._verified: dict[str | bytes, str] = {}
        self._reject_log: dict[str, tuple[float, int]] = {}  # kind: (next line due, not logged)
        self._handles: dict[str, str] = {}
        self._signed: dict[str, str] = {}
        # the codec's own loads (it keeps one decoder): its errors are SerializationError,
        # whatever a corrupt stored value makes a tag's decoder raise
        self._loads = self.codec.loads
        self.key_prefix = key_prefix
        self.idle_timeout = float(idle_timeout)
        self.absolute_lifetime = float(absolute_lifetime)
        self.refresh_interval = float(refresh_interval)
        self.alias_window = float(alias_window)
        self.outage_policy = outage_policy
        self.user_key = user_key
        self.max_cookie_size = max_cookie_size
        self.session_class = session_class or Session
        self.counters = Counters("sessions", key_prefix, names=(
            "loads", "misses", "expired", "saves", "refreshes", "conflicts", "rotations",
            "destroyed", "rejected_cookies", "outages", "near_hits", "carried_over", "carry_over_refused"))
        #: the secret keys as bytes, newest first (the first signs and keys new claims)
        self._secrets = tuple(k if isinstance(k, bytes) else k.encode() for k in keys)
        self._secret = self._secrets[0]
        #: the previous session store read on first contact (:mod:`statekit.sessions.carryover`)
        self.carry_over: CarryOver | None = None
        if engine is not None:
            self.engine = engine
            return
        near = _near_size(near_cache)
        options: dict[str, Any] = {"near_cache": near, "near_max_age": self.refresh_interval} if near else {}
        if client is not None:
            self.engine = self._client_engine(client, options)
            return
        if url is None:
            url = Settings.from_env().require("session_url")
        self.engine = self._url_engine(*url_and_scheme(url), options)  # stripped, as pasted from an env file

    def _client_engine(self, client: Any, options: dict[str, Any]) -> Any:
        """The engine for a ready client (the Redis engine of this store's kind)."""
        raise NotImplementedError("_client_engine")

    def _url_engine(self, url: str, scheme: str, options: dict[str, Any]) -> Any:
        """The engine for *url* (its *scheme* picks it)."""
        raise NotImplementedError("_url_engine")

    @property
    def near_cache(self) -> bool:
        """Whether loads may be served from this process's near cache (adapters then
        send the version token, :meth:`version_token`)."""
        return getattr(self.engine, "near", None) is not None

    def version_token(self, session: Session, sent: str | None) -> str | None:
        """The value to send in the version-token cookie after this request: the
        session's version if this request changed it past the token the browser
        *sent*; else ``None`` (also without a near cache)."""
        if not self.near_cache or session.version <= max(session.loaded_version, parse_version_token(sent)):
            return None
        return str(session.version)

    # -- ids, keys, cookies ------------------------------------------------------

    def _handle(self, sid: str) -> str:
        """The handle of id *sid* (remembered for the ids of cookies this store
        verified or signed, not for every new id)."""
        return self._handles.get(sid) or _handle_of(sid)

    def _key(self, sid: str) -> str:
        return self._key_of(self._handle(sid))

    def _key_of(self, handle: str) -> str:
        """The engine's storage key for *handle* (Redis engines), else the handle."""
        key: Callable[[str], str] | None = getattr(self.engine, "key", None)
        return handle if key is None else key(handle)

    @staticmethod
    def _new_id(tag: str | None = None) -> str:
        return (tag or secrets.token_hex(2)) + secrets.token_urlsafe(32)

    def sign(self, sid: str) -> str:
        """The cookie value for session id *sid*."""
        cookie = self._signed.get(sid)
        if cookie is None:
            cookie = _remember(self._signed, sid, self._signer.sign(sid).decode("ascii"))
            if _ID_RE.match(sid):  # as a load would check it
                self._known(cookie, sid)
        return cookie

    def unsign(self, cookie: str | bytes | None, *, context: str | Callable[[], str] = "") -> str | None:
        """The session id in *cookie*, or ``None`` (logged to ``statekit.security``)
        if the cookie is oversized, tampered with, truncated, signed with an unknown
        key or malformed. Never touches Redis. *context* (text, or a function giving
        it, called only when a cookie is rejected) is added to the log line."""
        if not cookie:
            return None
        sid, reason = self._verify(cookie)
        if sid is not None:
            return sid
        self._reject(reason, context)
        return None

    def _verify(self, cookie: str | bytes) -> tuple[str | None, str]:
        """``(id, "")`` for a valid cookie, else ``(None, why it is refused)``."""
        if len(cookie) > self.max_cookie_size:
            return None, f"oversized ({len(cookie)} bytes)"
        known = self._verified.get(cookie)
        if known is not None:
            return known, ""
        raw = self._signer.unsign(cookie)
        if raw is None:
            return None, "bad signature (tampered, truncated or signed with an unknown key)"
        sid = raw.decode("ascii", "replace")
        if not _ID_RE.match(sid):
            return None, "malformed id"
        if not _COOKIE_RE.match(cookie if isinstance(cookie, str) else cookie.decode("latin-1")):
            return None, "altered signature encoding (a valid cookie with characters added or changed)"
        self._known(cookie, sid)
        return sid, ""

    def _known(self, cookie: str | bytes, sid: str) -> None:
        """Remember that *cookie* (signed by this store, or verified by it) names *sid*,
        and *sid*'s handle: the next request with that cookie neither verifies its
        signature nor hashes the id again. Only cookies that verified are remembered,
        so a forged one is checked (and refused) every time; a lookup compares the
        whole cookie, whose hash an attacker cannot aim at (str hashing is keyed)."""
        _remember(self._verified, cookie, sid)
        if sid not in self._handles:
            _remember(self._handles, sid, _handle_of(sid))

    def _reject(self, reason: str, context: str | Callable[[], str]) -> None:
        """Count a refused cookie (``rejected_cookies``, every one) and log it to
        ``statekit.security``: the first of each kind at once, then at most one line
        per kind every :data:`REJECT_LOG_INTERVAL` seconds, saying how many were not
        logged. A stale population of cookies (another app's on the same domain, one
        signed with a retired key) would otherwise log a WARNING on every request."""
        self.counters.incr("rejected_cookies")
        kind = reason.split(" (", 1)[0]
        t = time.monotonic()
        due, quiet = self._reject_log.get(kind, (0.0, 0))
        if t < due:
            self._reject_log[kind] = (due, quiet + 1)
            return
        self._reject_log[kind] = (t + REJECT_LOG_INTERVAL, 0)
        if callable(context):
            context = context()
        security_log.warning("rejected session cookie: %s%s%s", reason, f" [{context}]" if context else "",
                             f" ({quiet} more of this kind since the last such line, not logged)"
                             if quiet else "")

    def _encode(self, key: Any, value: Any) -> bytes:
        if not isinstance(key, str) or not key or len(key) > _MAX_KEY_LEN:
            raise InvalidKey(
                f"session keys must be non-empty strings of at most {_MAX_KEY_LEN} chars: {key!r}")
        try:
            return self.codec.dumps(value)
        except SerializationError as e:
            t = type(value)
            raise SerializationError(
                f"session key {key!r}: cannot store a value of type "
                f"{t.__module__ + '.' if t.__module__ != 'builtins' else ''}{t.__qualname__} "
                f"with the {self.codec.name} codec") from e

    def _decode(self, key: str, raw: bytes) -> Any:
        """A stored value of *key* (:class:`Session` decodes each on first read)."""
        try:
            return self._loads(raw)
        except SerializationError as e:
            raise SerializationError(f"session key {key!r}: stored value cannot be decoded") from e

    def new(self) -> Session:
        """A fresh, empty session with a new id; stored on its first save that has
        something to store."""
        return self.session_class(self, self._new_id())

    # -- metadata ------------------------------------------------------------------

    def _meta(self, raw: Mapping[str, bytes], t: float) -> dict[str, Any] | None:
        """The metadata of the stored session *raw*, or ``None`` if it has ended at *t*.
        Metadata no statekit writes (a version or user that does not parse, a time of
        ``nan`` or ``inf``: a tampered or corrupted hash) is never trusted: the
        session counts as ended (it was served forever, or raised ``ValueError``)."""
        created, last_seen = _float(raw.get("m:c")), _float(raw.get("m:s"))
        idle = (_float(raw["m:i"]) or None) if raw.get("m:i") else None
        try:
            user = raw["m:u"].decode() if "m:u" in raw else None
            version = int(raw.get("m:v") or 0)
        except ValueError:  # UnicodeDecodeError included
            return None
        if self._ended(t, created, last_seen, idle):
            return None
        return {"created": created, "last_seen": last_seen, "idle": idle, "user": user, "version": version}

    def _ended(self, t: float, created: float, last_seen: float, idle_override: float | None) -> bool:
        """Whether a session with this stored metadata has passed its idle timeout or
        its absolute lifetime at *t* (checked from the metadata, not the Redis TTL)."""
        return t - last_seen > (idle_override or self.idle_timeout) or t - created > self.absolute_lifetime

    def _user_of(self, session: Session) -> str | None:
        if self.user_key is not None:
            value = session.get(self.user_key)
            return None if value is None else str(value)
        return session.user_id

    def _index_op(self, session: Session, t: float, user: str | None, member: str,
                  old_member: str | None = None, *, loaded: str | None = None) -> IndexOp | None:
        old = session.loaded_user or loaded
        if user is None and old is None and old_member is None:
            return None  # a rotation always passes one: the engine checks its user
        return IndexOp(member=member, score=t, cutoff=t - self.absolute_lifetime,
                       ttl_ms=int(self.absolute_lifetime * 1000), add=user,
                       remove=old if old and (old != user or old_member) else None,
                       old_member=old_member or member)

    # -- the operations, as steps ------------------------------------------------------

    #: whether :meth:`_call` returns an awaitable (the async store) or the result
    _awaits = False

    def _call(self, op: Call) -> Any:
        """Make one call of the steps (:func:`call`): the sync and async stores' only
        difference (the async one returns an awaitable)."""
        raise NotImplementedError("_call")

    async def _drive(self, steps: Steps[_T]) -> _T:
        """Run *steps* to the end, each call they yield made by :meth:`_call` and its
        result (or exception) sent back into them."""
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = steps.send(reply) if error is None else steps.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            error = None
            try:
                reply = self._call(op)
                if self._awaits:
                    reply = await reply
            except BaseException as e:  # noqa: BLE001 - raised in the steps, where they may handle it
                reply, error = None, e

    def _open_steps(self, cookie: str | bytes | None, context: str | Callable[[], str],
                    version_token: str | None) -> Steps[Session]:
        if not cookie:
            return self.new()
        sid, reason = self._verify(cookie)
        try:
            if sid is None:
                carry = self.carry_over
                carried = None
                if carry is not None:
                    text = cookie if isinstance(cookie, str) else cookie.decode("utf-8", "replace")
                    carried = yield from carry.take_steps(self, text)
                if carried is not None:
                    return carried
                self._reject(reason, context)
                fresh = self.new()
                fresh.foreign_cookie = True
                return fresh
            session, superseded = yield from self._load_steps(sid, parse_version_token(version_token))
        except BackendUnavailable:
            if self.outage_policy != "anonymous":
                raise
            session = self.session_class(self, sid or "", new=False)
            session.unavailable = True
            return session
        if session is None:
            session = self.new()
            session.superseded = superseded
        return session

    def _load_steps(self, sid: str, min_version: int) -> Steps[tuple[Session | None, bool]]:
        """Load *sid*: the session (or ``None``), and whether *sid* names a tombstone
        (rotated away)."""
        handle = self._handle(sid)
        raw = yield call("load", handle, min_version)
        self.counters.incr("loads")
        if "m:c" not in raw:
            self.counters.incr("misses")
            return None, "m:a" in raw
        meta = self._meta(raw, now())
        if meta is None:
            self.counters.incr("expired")
            return None, False
        data = {field[2:]: value for field, value in raw.items() if field[:2] == "d:"}
        return self.session_class(self, sid, new=False, meta=meta, raw=data, handle=handle), False

    def _create_steps(self, data: Mapping[str, Any] | None, user_id: str | None) -> Steps[Session]:
        session = self.new()
        session.update(data or {})
        session.user_id = user_id
        yield from self._save_steps(session, True)
        return session

    def _save_steps(self, session: Session, force: bool) -> Steps[bool]:
        session.written = False
        if session.unavailable or session.destroyed:
            return False
        t = now()
        user = self._user_of(session)
        sets, dels = self._changes(session, user)
        pending = session._pending if session.new else None
        idle = session.idle_timeout or self.idle_timeout
        if not sets and not dels and not force:
            # at most half the idle timeout: a session used more often than that never ends.
            # A carried-over session whose cookie is still to be sent writes: a parallel
            # request of the browser that found it through the claim may have rotated it
            # (a login), and its cookie would then replace the new one (through_alias)
            shared = session._shared and session.send_cookie
            if session.new or (not shared and t - session.last_seen < min(self.refresh_interval, idle / 2)):
                yield from self._drop_pending_steps(session)  # a lost create of what is gone now
                session.modified = False
                return True
            self.counters.incr("refreshes")
        sets["m:s"] = repr(t).encode()
        if session.new:
            # a create whose reply was lost is sent again as the same create (its m:c:
            # the engine knows it), never as another (a "collision", or a second session)
            sets["m:c"] = sets["m:s"] if pending is None else pending["m:c"]
        created = _float(sets["m:c"]) if session.new else session.created
        ttl = min(idle, created + self.absolute_lifetime - t)
        if ttl <= 0:
            return False
        if session.new:
            dels += [f for f in pending or () if f not in sets]  # set then, no longer held
            session._pending = {**(pending or {}), **sets}
        try:
            result = yield from self._write_steps(session, sets, dels, max(1, int(ttl * 1000)), t, user,
                                                  self._pending_user(pending))
        except NotSent:
            if session.new:
                session._pending = pending  # this create reached no backend: stored as before it
            raise
        session._pending = None
        if result.status is Status.EXISTS:
            raise SessionError("session id collision; refusing to overwrite")
        if result.status is not Status.DONE:
            self.counters.incr("conflicts")
            session.destroyed = True
            return False
        self.counters.incr("saves")
        self._saved(session, sets, dels, t, user, result.version)
        return True

    def _commit_steps(self, session: Session, had_data: bool) -> Steps[Committed]:
        """:meth:`SessionStore.commit`'s steps. A logout (:meth:`Session.logging_out`:
        cleared, or emptied) saves the session emptied (what was set after the clear
        held back), then destroys it: the old id names nothing any more, whatever a
        copy of its cookie may be used for. An outage between the two leaves it
        stored empty, and its retry completes the logout. Unless a login in a
        parallel request rotated the session since this request loaded it: the
        emptying save follows the alias, only the keys it removed go from the new
        session, and what was set after the clear is saved into it. What was set
        after a ``destroy()`` in the view is carried the same way. A session that
        ended otherwise (revoked, destroyed by another request, expired: the save
        finds it gone) carries nothing: its data, a login included, stays ended."""
        after: dict[str, Any] = {}
        if session.logging_out(had_data):
            after = session.copy()
            for key in after:
                dict.__delitem__(session, key)
            yield from self._save_steps(session, True)
            if not session.through_alias:
                yield from self._destroy_session_steps(session)
            else:
                session.update(after)
        saved = yield from self._save_steps(session, False)
        if not session.destroyed or not (after or session._destroyed_here and session):
            return Committed(saved, None)
        carried = self.new()
        carried.update(after or session.copy())
        yield from self._save_steps(carried, False)
        return Committed(saved, carried)

    def _changes(self, session: Session, user: str | None) -> tuple[dict[str, bytes], list[str]]:
        """The fields a save of *session* sets and deletes: the data keys whose
        encoding differs from the stored one (all keys after ``modified = True`` or
        for a new session, else only those assigned or deleted), the user, the idle
        timeout override."""
        sets: dict[str, bytes] = {}
        dels: list[str] = []
        stored = session._encoded
        if session.new or session._full_diff:
            keys: Iterable[str] = list(session) + [k for k in stored if k not in session]
        else:
            keys = session._touched if session._modified else ()
        fresh = session._fresh or {}
        for k in keys:
            if k not in session:
                if k in stored:
                    dels.append("d:" + k)
                continue
            value = dict.__getitem__(session, k)
            if value.__class__ is bytes and value is stored.get(k):
                continue  # never decoded, so never changed
            known = fresh.get(k)
            enc = known[1] if known is not None and known[0] is value else self._encode(k, value)
            if stored.get(k) != enc:
                sets["d:" + k] = enc
        if user != session.loaded_user:
            if user is None:
                dels.append("m:u")
            else:
                sets["m:u"] = user.encode()
        if session.idle_timeout != session._loaded_idle:
            if session.idle_timeout:
                sets["m:i"] = repr(float(session.idle_timeout)).encode()
            else:
                dels.append("m:i")
        return sets, dels

    def _write_steps(self, session: Session, sets: dict[str, bytes], dels: list[str], ttl_ms: int,
                     t: float, user: str | None, sent_user: str | None) -> Steps[Result]:
        """The engine write of a save, following rotations by other requests (this
        request loaded the session before them: its write goes to the successor).
        *sent_user*: the user a lost create of this new session may have indexed."""
        for _ in range(_HOPS + 1):
            result: Result = yield call("write", session.handle, create=session.new, sets=sets, dels=dels,
                                        ttl_ms=ttl_ms, index=self._index_op(session, t, user, session.handle,
                                                                            loaded=sent_user))
            if result.status is not Status.ROTATED or session.new:
                return result
            assert result.handle is not None
            session.handle = result.handle
        return result

    def _saved(self, session: Session, sets: Mapping[str, bytes], dels: list[str], t: float,
               user: str | None, version: int) -> None:
        """Bring *session* in line with what the save stored."""
        for f, v in sets.items():
            if f[:2] == "d:":
                session._encoded[f[2:]] = v
        for f in dels:
            if f[:2] == "d:":
                session._encoded.pop(f[2:], None)
        if session.new:
            session.created = _float(sets["m:c"])
            session.send_cookie = True
        session.version = version
        session.new = session.modified = False
        session.written = True
        session.last_seen = t
        session.loaded_user = session.user_id = user
        session._loaded_idle = session.idle_timeout

    @staticmethod
    def _pending_user(pending: Mapping[str, bytes] | None) -> str | None:
        """The user creates of a new session whose outcome is unknown may have indexed."""
        user = (pending or {}).get("m:u")
        return None if user is None else user.decode()

    def _drop_pending_steps(self, session: Session) -> Steps[None]:
        """Delete what creates of new *session* whose reply was lost may have stored:
        it is not to be stored (emptied, destroyed) or moves to a new id (rotated),
        and no cookie will ever name it."""
        if session.new and session._pending is not None:
            yield call("destroy", session.handle, self._pending_user(session._pending))
            session._pending = None

    def _rotate_steps(self, session: Session) -> Steps[Session]:
        if session.unavailable:
            raise BackendUnavailable("the session store is unavailable: cannot rotate the session id")
        yield from self._drop_pending_steps(session)
        new_sid = self._new_id(session.sid[:4])
        new_handle = self._handle(new_sid)
        if not session.new:
            # the id this request loaded, not the alias target a write of it followed
            # (session.handle): that is the rotated session, which must not be taken over
            old_handle = self._handle(session.sid)
            op = self._index_op(session, now(), session.loaded_user, new_handle, old_handle)
            result: Result = yield call("rotate", old_handle, new_handle,
                                        max(1, int(self.alias_window * 1000)), op)
            rotated = result.status is Status.ROTATED and result.handle is not None
            if rotated and (yield from self._lives_steps(result.handle or "")):
                # rotated by another request since this one loaded it: following the
                # alias would hand the rotated (maybe logged-in) session to a cookie
                # from before that rotation. This request keeps what it loaded, as a
                # new session of its own.
                self.counters.incr("conflicts")
                session._decode_all()
                session._encoded.clear()
                session.new, session.loaded_user, session._loaded_idle = True, None, None
            elif result.status is not Status.DONE:
                self.counters.incr("conflicts")
                dict.clear(session)
                session._encoded.clear()
                session.new, session.loaded_user, session.user_id = True, None, None
        self.counters.incr("rotations")
        session.sid, session.handle, session.rotated = new_sid, new_handle, True
        session.superseded = False  # a login: its cookie goes out whatever the request sent
        session.send_cookie = not session.new
        session.destroyed = session._destroyed_here = False
        return session

    def _lives_steps(self, handle: str) -> Steps[bool]:
        """Whether the session a rotation alias names (following further aliases)
        still lives: destroyed or revoked, it must not come back as a copy."""
        _, raw = yield from self._follow_steps(handle)
        return "m:c" in raw

    def _follow_steps(self, handle: str) -> Steps[tuple[str, Mapping[str, bytes]]]:
        """The handle *handle* leads to through rotation aliases (itself if it is
        none), and its hash."""
        raw = yield call("load", handle, 0)
        for _ in range(_HOPS):
            if "m:a" not in raw:
                break
            handle = raw["m:a"].decode()
            raw = yield call("load", handle, 0)
        return handle, raw

    def _destroy_session_steps(self, session: Session) -> Steps[None]:
        if not session.new:
            yield from self._destroy_steps(session.handle, session.loaded_user)
        yield from self._drop_pending_steps(session)
        dict.clear(session)
        session._encoded.clear()
        session.destroyed = session._destroyed_here = True

    def _destroy_steps(self, handle: str, user: str | None, check_user: bool = False) -> Steps[bool]:
        """Delete session *handle*, and the one it is a rotation alias of (*user*: the
        index to drop it from). With *check_user*, only if *user* holds it: the engine
        checks the session an alias leads to (the alias's owner is its successor's)
        atomically with deleting it, and the aliases followed go after it. Whether a
        live session was deleted."""
        aliases: list[str] = []
        for _ in range(_HOPS + 1):
            # check_user is passed only when set: an engine written before it still logs out
            result: Result = yield (call("destroy", handle, user, check_user=True) if check_user
                                    else call("destroy", handle, user))
            if result.status is not Status.ROTATED or result.handle is None:
                break
            aliases.append(handle)
            handle = result.handle
        deleted = result.status is Status.DONE
        if check_user and deleted:
            for alias in aliases:
                yield call("destroy", alias, None)
        if deleted or not check_user:
            self.counters.incr("destroyed")
        return deleted

    def _revoke_session_steps(self, handle: str, user_id: str | None) -> Steps[bool]:
        if user_id is None:
            return (yield from self._destroy_steps(handle, None))
        return (yield from self._destroy_steps(handle, str(user_id), check_user=True))

    def _incr_steps(self, session: Session, key: str, amount: int) -> Steps[int]:
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise TypeError(f"session incr of {key!r}: the amount must be an int, not "
                            f"{type(amount).__name__}")
        self._encode(key, amount)
        if session.unavailable:
            raise BackendUnavailable("the session store is unavailable: cannot increment")
        if session.new or (session.modified and (key in session._touched or session._full_diff)):
            yield from self._save_steps(session, session.new)
        for _ in range(_HOPS + 1):
            result: Result = yield call("incr", session.handle, "d:" + key, amount, self.codec.name)
            if result.status is not Status.ROTATED or result.handle is None:
                break
            session.handle = result.handle  # rotated meanwhile: follow
        if result.status is not Status.DONE:
            session.destroyed = True
            raise SessionError("the session ended; cannot increment")
        session.version = result.version
        dict.__setitem__(session, key, result.value)
        session._encoded[key] = self.codec.dumps(result.value)
        return result.value

    def _list_steps(self, user_id: str) -> Steps[list[SessionInfo]]:
        t = now()
        out = []
        for handle, h in (yield call("list_user", str(user_id), t - self.absolute_lifetime)):
            meta = self._meta(h, t)  # as load() would judge it
            if meta is not None:
                out.append(SessionInfo(handle=handle, created=meta["created"], last_seen=meta["last_seen"],
                                       user_id=meta["user"]))
        return out

    def _revoke_steps(self, user_id: str, except_session: Session | str | None) -> Steps[int]:
        keep = ""
        if isinstance(except_session, Session):
            keep = except_session.handle
        elif except_session:
            keep = except_session
        if keep:
            # rotated since it was loaded (a login in another tab of that browser): the
            # session to keep is the one its alias names
            keep, _ = yield from self._follow_steps(keep)
        deleted: int = yield call("revoke_user", str(user_id), keep)
        return deleted


class SessionStore(_StoreCore):
    """Create, load, save, rotate and destroy server-side sessions.

    :param url: ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``,
        ``redis+cluster://`` or ``memory://``; ``STATEKIT_SESSION_URL`` by default.
    :param client: a ready redis-py client instead of a URL.
    :param engine: a ready :class:`~statekit.sessions.protocol.SessionEngine`
        instead of a URL (*key_prefix* and *near_cache* are then the engine's).
    :param secret_keys: cookie signing keys, newest first (required).
    :param idle_timeout: seconds without a request after which the session ends.
    :param absolute_lifetime: seconds after creation after which it ends regardless.
    :param refresh_interval: an unmodified request refreshes the TTL at most this often
        (and at least every half idle timeout, so an active session never ends).
    :param alias_window: seconds after :meth:`rotate` during which requests that loaded
        the session before it still write through its old id (a load with the old id
        gets a fresh session at once).
    :param codec: ``"json"`` or ``"msgpack"`` (or a serializer object without pickle).
    :param outage_policy: ``"raise"`` or ``"anonymous"`` (see the module docstring).
    :param user_key: a session key whose value is the user id (``"_user_id"`` for
        Flask-Login, ``"_auth_user_id"`` for Django); otherwise set ``session.user_id``.
    :param session_class: a :class:`Session` subclass to hand out (adapters use it).
    :param near_cache: keep up to this many recently used sessions in this process
        (``True`` or ``"on"``: 10,000) and load them without a Redis call, kept coherent by Redis
        client-side caching; ``0`` (the default) turns it off. See "Near cache" in the
        module docstring.

    Every method that talks to Redis raises
    :class:`~statekit.errors.BackendUnavailable` when it cannot be reached within the
    client's timeouts; nothing is then half-written.
    """

    engine: SessionEngine

    def _client_engine(self, client: Any, options: dict[str, Any]) -> SessionEngine:
        from .redis import RedisEngine

        return RedisEngine(client, self.key_prefix, near_cache=options.get("near_cache", 0),
                           near_max_age=self.refresh_interval, counters=self.counters)

    def _url_engine(self, url: str, scheme: str, options: dict[str, Any]) -> SessionEngine:
        cls = load_backend("sessions", scheme, ENGINES)
        engine: SessionEngine = cls.from_url(url, key_prefix=self.key_prefix, counters=self.counters,
                                             **options)
        return engine

    def _call(self, op: Call) -> Any:
        target, args, kwargs = op
        return (getattr(self.engine, target) if isinstance(target, str) else target)(*args, **kwargs)

    def _run(self, steps: Steps[_T]) -> _T:
        """Run *steps*, making each call they ask for on the engine (the sync store's
        only I/O): :meth:`_StoreCore._drive`, whose calls never suspend here, so one
        ``send`` runs it to the end."""
        drive = self._drive(steps)
        try:
            drive.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        drive.close()
        raise RuntimeError("a sync session engine returned an awaitable")

    def close(self) -> None:
        """Release the engine's connections and threads, and the :attr:`carry_over`'s
        old store (:meth:`~statekit.sessions.carryover.CarryOver.close`)."""
        try:
            self.engine.close()
        finally:
            if self.carry_over is not None:
                self.carry_over.close()

    def create(self, data: Mapping[str, Any] | None = None, *, user_id: str | None = None) -> Session:
        """A new session with *data*, stored now."""
        return self._run(self._create_steps(data, user_id))

    def open(self, cookie: str | bytes | None, *, context: str | Callable[[], str] = "",
             version_token: str | None = None) -> Session:
        """The session a request's cookie names, or a fresh one if the cookie is
        missing, invalid, or names a session that ended. One Redis round trip for a
        valid cookie, none otherwise. With :attr:`carry_over` set, a cookie that is not
        a statekit cookie is looked up in the previous store first (see
        :mod:`statekit.sessions.carryover`): a session carried over is returned stored,
        with ``send_cookie`` set.

        :raises BackendUnavailable: Redis (or the previous store) is unreachable and
            ``outage_policy`` is ``"raise"``; with ``"anonymous"`` an empty read-only
            session is returned.
        """
        return self._run(self._open_steps(cookie, context, version_token))

    def load(self, sid: str, *, min_version: int = 0) -> Session | None:
        """Load session *sid* (an unsigned id), or ``None`` if it does not exist,
        passed its idle timeout or absolute lifetime, or was rotated to a new id (its
        old id is a tombstone: never followed by a load, see "Rotation" in the module
        docstring). One round trip (none from the near cache, for a copy of at least
        *min_version*)."""
        return self._run(self._load_steps(sid, min_version))[0]

    def save(self, session: Session, *, force: bool = False) -> bool:
        """Store what this request changed. Returns ``False`` when the session was
        destroyed, revoked or expired meanwhile (nothing is written then).

        Writes nothing for an unmodified session, except a TTL refresh when the last
        one is older than ``refresh_interval`` (``session.written`` tells whether this
        save wrote; a write by a request in flight at a rotation follows the alias, and
        ``session.through_alias`` is then true). A modified session writes only the
        changed and deleted keys (one atomic engine write, all or nothing). A read-only
        (outage) session is never written.

        :raises SerializationError: a value cannot be encoded (names the key).
        :raises BackendUnavailable: Redis unreachable: nothing was written, unless
            the write reached Redis and only its reply was lost (a timeout; the
            outcome is unknown, and the write is never sent again by itself). Calling
            ``save`` again is safe: it writes the same changes, and for a new session
            the same create (never a second session, nor a "session id collision");
            a ``rotate`` or ``destroy`` instead deletes what that create may have stored.
        """
        return self._run(self._save_steps(session, force))

    def commit(self, session: Session, *, had_data: bool) -> Committed:
        """The save a framework adapter makes at the end of each request, instead of
        :meth:`save`: it also ends a logout. *had_data*: whether *session* held data
        when the request opened it (``bool(session)`` right after :meth:`open`).

        A session the request cleared (:meth:`Session.clear`), or emptied key by key
        when it had data, is a logout: it is saved empty, then destroyed, so its id
        names nothing any more whatever a copy of its cookie is used for; what the
        request set after the clear (a "logged out" message), or after a
        :meth:`destroy` in the view, is stored under a new id, the returned
        ``carried`` session. Any other session is saved as by :meth:`save`; one
        revoked, destroyed by another request or expired since it was opened is not
        stored, and nothing of it is carried (its login stays ended).

        What the adapter's response then sets (the :class:`Committed` returned:
        ``saved``, ``carried``): after a logout (``session.destroyed``) ``carried``'s
        cookie, or else a deletion of the cookie; when not ``saved`` (revoked or
        expired meanwhile) nothing; else the version token
        (:meth:`version_token`), and the cookie if ``session.send_cookie`` (stored
        first now, rotated, carried over) or a write refreshed the expiry
        (``session.written``), unless the write followed a rotation
        (``session.through_alias``: the browser holds the newer cookie). A request
        whose cookie named a rotated-away session (``session.superseded``) or an
        outage's read-only session (``session.unavailable``) sends no cookie.
        statekit's Flask and Starlette adapters are worked examples.

        If a login in a parallel request rotated the session since this one loaded
        it, the emptying save follows the rotation: only the keys this request removed
        go from the new session, which lives on, and what was set after the clear is
        saved into it.

        :raises BackendUnavailable: Redis unreachable (as :meth:`save`). A logout it
            interrupted may have stored the session empty without destroying it; the
            same request's retry completes the logout.
        """
        return self._run(self._commit_steps(session, had_data))

    def rotate(self, session: Session) -> Session:
        """Give *session* a new id (call it on login). Its data moves to the new id
        in one script; the old id becomes a tombstone alias for ``alias_window``
        seconds: requests that loaded the session before still write through it,
        while a load with the old id gets a fresh session. The adapter must send
        the new cookie (``session.send_cookie``).

        If another request rotated the session since this one loaded it, *session*
        becomes a new session of its own holding the data this request loaded (stored
        by the next :meth:`save`): the rotated session and its new id stay with the
        request that rotated it. If the session was destroyed or revoked meanwhile,
        *session* becomes a new, empty session: a revoked session never comes back
        through a rotation.

        :raises BackendUnavailable: Redis unreachable; the old id still works, unless
            the rotation reached Redis and only its reply was lost (a timeout): the
            data is then at a new id this request never learned, and the old id is a
            tombstone (its next load gets a fresh session). A retried ``rotate`` of
            the same *session* finds that rotation and, as for one made by another
            request, gives *session* a new id of its own with the data it loaded.
        """
        return self._run(self._rotate_steps(session))

    def destroy(self, session: Session) -> None:
        """Delete *session* now (logout). Concurrent requests of this session then
        cannot write it back; their saves return ``False``."""
        self._run(self._destroy_session_steps(session))

    def destroy_id(self, sid: str) -> None:
        """Delete the session with id *sid* (an unsigned id), if it exists."""
        self._run(self._destroy_steps(self._handle(sid), None))

    def incr(self, session: Session, key: str, amount: int = 1) -> int:
        """Atomically add *amount* to the integer under *key* (0 if absent) and
        return the new value; concurrent increments are never lost. Stores a new
        session first, and this request's changes first when *key* is among them (an
        assignment or deletion of *key* is not overridden). Under a network timeout
        the increment may have been applied once already (Redis gives no exactly-once
        answer).

        :raises SessionError: the session ended, or the value is not an integer.
        :raises TypeError: *amount* is no ``int`` (a float was truncated, text parsed).
        """
        return self._run(self._incr_steps(session, key, amount))

    # -- per-user index -------------------------------------------------------------

    def list_user_sessions(self, user_id: str) -> list[SessionInfo]:
        """The live sessions of *user_id*, least recently seen first."""
        return self._run(self._list_steps(user_id))

    def revoke_user(self, user_id: str, except_session: Session | str | None = None) -> int:
        """Log *user_id* out everywhere (but *except_session*, a session or handle:
        if another request rotated it since, the session it was rotated to): delete
        their sessions, including any created while this runs. Returns how many were
        deleted. Requests of those sessions in flight cannot write them
        back. Runs in batches (see the engine's ``revoke_user``): a user with tens of
        thousands of sessions never holds up the other clients of Redis."""
        return self._run(self._revoke_steps(user_id, except_session))

    def revoke_session(self, handle: str, user_id: str | None = None) -> bool:
        """Delete the session named by *handle* (a :attr:`SessionInfo.handle` from
        :meth:`list_user_sessions`) if *user_id* holds it; returns whether a session
        was deleted. A handle listed before its device logged in again (a rotation)
        names the session it was rotated to, which is deleted (with the old handle)
        if *user_id* holds it. Another user's session, an anonymous one, or none at
        all: ``False``, and nothing changes. The check and the delete are one atomic
        engine step, so a "sign out this device" view may pass the handle its form
        sent::

            @app.post("/devices/sign-out")
            def sign_out():
                ok = store.revoke_session(request.form["handle"], current_user.id)
                return ("", 204) if ok else ("no such device", 404)

        Without *user_id* (an administrator's revocation) the session is deleted
        whoever holds it: never pass ``None`` for a user taken from a request."""
        return self._run(self._revoke_session_steps(handle, user_id))


def __getattr__(name: str) -> Any:
    # the async store imports this module: it is looked up on first use
    if name == "AsyncSessionStore":
        from .aio import AsyncSessionStore

        return AsyncSessionStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
