"""Redis clients from URLs: standalone, TLS, unix socket, Sentinel and Cluster; the
one error map and the one retry rule every statekit Redis path follows.

Every client gets connect and socket timeouts, and clients are shared per process
through :func:`get_client`: one connection pool per URL, which redis-py resets on its
own in a forked child (gunicorn workers); the asyncio stores of a URL share
:func:`statekit.redis.aio.get_async_client`'s, one per running loop. A URL's ``max_connections`` (a Cluster's:
each node's) bounds its pool, and a caller past it waits for a connection another
gives back, up to the socket timeout (a ``BlockingConnectionPool``; redis-py's plain
pool fails at once with ``Too many connections``); the transport keeps some of it
between calls, never all (:mod:`statekit.redis.transport`). A Cluster client's
commands and pipelines through redis-py take turns of the rest (:class:`ClusterGate`),
so no pipeline waits in one node's pool holding another node's connection.

**The retry rule** (the same for redis-py's own calls and for
:class:`statekit.redis.transport.Transport`, on every server line; it lives here
only: the connection classes of :func:`with_rule`, the ``Retry`` of
:func:`retry_policy` and :func:`call_with_rule`):

* A failure *before* a command is sent (connecting, the handshake, a health check,
  a pooled or idle socket found closed by the server) may be retried: nothing
  reached the server. redis-py's ``Retry`` (exponential backoff, ``retries`` from
  the URL, default 2) does it.
* A reply that says the node refused the command unapplied (``READONLY``, also
  wrapped in a script error as Redis 6.2 sends it; ``MASTERDOWN``; ``LOADING``)
  drops the connection, so the next attempt asks Sentinel (or DNS) for the master
  again, and may be retried like a failure before sending.
* A failure *after* the command went out (a timeout, a reset while waiting for the
  reply) leaves its outcome unknown: a write (``INCR``, a session save script, a
  lock release, a publish) is never sent again; the caller gets
  :class:`~statekit.errors.BackendUnavailable` and nothing is applied twice. An
  idempotent read (:data:`IDEMPOTENT_READS`) may be sent once more after the
  connection dropped, never after a timeout (a slow server would only make the
  caller wait twice as long).
* A connection whose replies were not all read (the call was interrupted between
  sending and reading: ``KeyboardInterrupt``, a signal handler's exception) is
  dropped before it is used again (a pool checkout, the transport's next command):
  the late reply would otherwise be read as the next caller's.

In redis-py the command-level retry (``Redis._execute_command``,
``Pipeline.execute``, ``PubSub``) and the connect-level one share one ``Retry``
object, so the rule is carried by the connections: statekit's clients use
subclasses of redis-py's connection classes (:func:`with_rule`) that raise
:class:`OutcomeUnknown` for a failure after sending (which the ``Retry`` built by
:func:`retry_policy` refuses, and which RedisCluster's own retry loop, matching
exact types, does not retry either; its pipelines, which match by ``isinstance``, count
it among the errors they raise at once, ``NOT_NODE_FAILURE_ERRORS``) and
:class:`NotApplied` for a wrong-node reply.
Pub/sub reads keep redis-py's own handling (a partial message is resumed; a lost
connection is reconnected and re-subscribed: reading again resends nothing); a
failed pub/sub send makes the broadcast subscriber reconnect and re-read what it
may have missed. A ready client passed by the caller (``Cache(client=...)``) keeps
its own retry settings on the redis-py path; the transport follows the rule for it.

**The error map** (:func:`unavailable`, used by :class:`translate_errors` and the
transport): connection errors, timeouts, wrong-node and not-now replies
(``CLUSTERDOWN``, ``TRYAGAIN``) and authentication failures (``NOAUTH``,
``WRONGPASS``, ``HELLO must be called with the client already authenticated``,
Redis's ``Protocol error: unauthenticated multibulk length``) all become
``BackendUnavailable``; the message of an authentication failure says so. A command
the user's ACL refuses (``NOPERM``, a channel or key it may not use, a command a
script runs that it may not) is :class:`PermissionRefused`, a ``BackendUnavailable``
whose message names the user and the list to grant (docs/backends.md): nothing
applied, but no retry fixes it (the same command is refused again).
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from .._fork import reset_in_child
from ..backends import require
from ..config import DEFAULT_CONNECT_TIMEOUT, DEFAULT_SOCKET_TIMEOUT, BackendURL, parse_url
from ..errors import BackendUnavailable, ConfigError

if TYPE_CHECKING:
    import redis
    from redis.cluster import RedisCluster

    RedisClient: TypeAlias = "redis.Redis | RedisCluster"
else:
    RedisClient = Any

__all__ = [
    "ACL_GUIDE",
    "IDEMPOTENT_READS",
    "PermissionRefused",
    "RedisClient",
    "acl_user",
    "call_with_rule",
    "cluster_unapplied",
    "create_client",
    "get_client",
    "is_cluster",
    "is_read",
    "key_slot",
    "memory_client",
    "refused_unapplied",
    "reply_problem",
    "reset_memory",
    "retry_policy",
    "translate_errors",
    "unavailable",
    "with_rule",
]

_monotonic = time.monotonic
_clients: dict[tuple[int, str, tuple[tuple[str, Any], ...]], Any] = {}
_clients_lock = threading.Lock()

#: commands that only read: after the connection dropped mid-call (not after a
#: timeout) they may be sent once more
IDEMPOTENT_READS = frozenset({
    b"GET", b"MGET", b"EXISTS", b"TTL", b"PTTL", b"HGET", b"HMGET", b"HGETALL",
    b"HEXISTS", b"HLEN", b"ZRANGE", b"ZRANGEBYSCORE", b"ZSCORE", b"ZCARD", b"PING",
})

# An error reply's code, at the start ("READONLY You can't ...", Redis 7+ and Valkey
# also for an error inside a script) or after "-" inside a script error (Redis 6.2:
# "ERR Error running script (call to f_...): @user_script:1: @user_script: 1:
# -READONLY You can't write against a read only replica.").
_CODE = re.compile(r"(?:^|: -)(READONLY|MASTERDOWN|LOADING|CLUSTERDOWN|TRYAGAIN|OOM|BUSY|NOAUTH|WRONGPASS)\b")
_AUTH_TEXT = ("unauthenticated multibulk", "unauthenticated bulk", "invalid password",
              "invalid username-password", "must be called with the client already authenticated")
#: how Redis and Valkey word an ACL refusal: ``NOPERM ...`` (redis-py strips the code:
#: "this user has no permissions to run the 'x' command", "User u has no permissions
#: to ...", "No permissions to access a channel"), and inside a script Redis 6.2's
#: "The user executing the script can't run this command" or 7+'s "ACL failure in script"
_ACL_TEXT = ("has no permissions to", "no permissions to access", "the user executing the script can't",
             "acl failure in script")
#: where the commands, keys and channels statekit needs are listed
ACL_GUIDE = "docs/backends.md, 'The Redis ACL statekit's own backends need'"
_WRONG_NODE = frozenset({"READONLY", "MASTERDOWN"})
#: nothing applied, the server cannot serve it now: loading, a cluster without all its
#: slots, a resharding slot, out of memory (``maxmemory`` with ``noeviction``), a
#: script running past ``busy-reply-threshold``
_NOT_NOW = frozenset({"LOADING", "CLUSTERDOWN", "TRYAGAIN", "OOM", "BUSY"})

Problem = Literal["wrong node", "not now", "authentication", "permission"]


def reply_problem(message: str) -> Problem | None:
    """What the error reply *message* (with its code, as the server sent it) says
    about the server rather than the command: ``"wrong node"`` (a replica or a
    demoted master: ask for the master again; nothing was applied), ``"not now"``
    (loading, cluster down, out of memory, busy with a script: nothing was
    applied), ``"authentication"`` (missing or wrong credentials), ``"permission"``
    (the user's ACL refuses a command, key or channel: :data:`_ACL_TEXT`), or ``None``
    (an error of the command itself)."""
    m = _CODE.search(message)
    if m is not None:
        code = m.group(1)
        if code in _WRONG_NODE:
            return "wrong node"
        if code in _NOT_NOW:
            return "not now"
        return "authentication"
    low = message.lower()
    if any(text in low for text in _AUTH_TEXT):
        return "authentication"
    if low.startswith("noperm") or any(text in low for text in _ACL_TEXT):
        return "permission"
    return None


def is_read(args: Sequence[Any]) -> bool:
    """Whether the command *args* only reads (:data:`IDEMPOTENT_READS`)."""
    name = args[0]
    return (name if isinstance(name, bytes) else str(name).encode()).upper() in IDEMPOTENT_READS


#: Cluster error replies that say the node applied nothing and redis-py's
#: ``RedisCluster`` knows what to do: redirect, wait for the slot, refresh its map,
#: load the script (redis-py strips some codes from the message: their types too)
_CLUSTER_UNAPPLIED = frozenset({"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "NOSCRIPT"})
_CLUSTER_UNAPPLIED_TYPES = frozenset({"MovedError", "AskError", "TryAgainError", "ClusterDownError",
                                      "NoScriptError"})


def cluster_unapplied(error: BaseException) -> bool:
    """Whether the error reply *error* of a Cluster node says nothing was applied and
    the command may go through ``RedisCluster`` (``MOVED``, ``ASK``, ``TRYAGAIN``,
    ``CLUSTERDOWN``, ``NOSCRIPT``)."""
    return (type(error).__name__ in _CLUSTER_UNAPPLIED_TYPES
            or str(error).split(" ", 1)[0].upper() in _CLUSTER_UNAPPLIED)


_slot_of: Any = None  # redis.crc.key_slot, imported on first use (redis is optional)


def key_slot(key: bytes | str) -> int:
    """The Redis Cluster hash slot of *key* (redis-py's ``key_slot``: hash tags apply)."""
    global _slot_of
    if _slot_of is None:
        from redis.crc import key_slot as slot

        _slot_of = slot
    return int(_slot_of(key if isinstance(key, bytes) else key.encode()))


def cluster_client_glitch(exc: BaseException) -> bool:
    """Whether *exc* is an ``AttributeError`` raised inside redis-py's cluster client
    while its topology changes (a node whose connection it dropped during a reshard:
    ``'NoneType' object has no attribute 'redis_connection'``), before the command was
    sent: a moment of unavailability, not a bug of the caller's. One raised while
    redis-py handled a failure after sending (:func:`_sent_before`) is not: the
    command may have been applied."""
    return isinstance(exc, AttributeError) and _in_cluster_client(exc) and _sent_before(exc) is None


def _sent_before(exc: BaseException,
                 kinds: tuple[type[BaseException], ...] | None = None) -> BaseException | None:
    """The error of one of *kinds* (default :class:`OutcomeUnknown`: a command sent,
    its reply lost) that *exc* was raised while handling, if any."""
    if kinds is None:
        if _rules is None:
            return None
        kinds = (_rules.OutcomeUnknown,)
    seen = exc.__context__
    while seen is not None:
        if isinstance(seen, kinds):
            return seen
        seen = seen.__context__
    return None


def _in_cluster_client(exc: BaseException) -> bool:
    """Whether *exc* was raised in redis-py's cluster client's code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = tb.tb_frame.f_code.co_filename.replace("\\", "/") if tb is not None else ""
    return where.endswith(("redis/cluster.py", "redis/asyncio/cluster.py", "redis/commands/parser.py"))


def refused_unapplied(exc: BaseException) -> bool:
    """Whether the redis-py ``ConnectionError`` *exc* stands for a reply that says the
    node applied nothing (sync and asyncio alike): ``LOADING`` (redis-py raises it as
    ``BusyLoadingError``, a ``ConnectionError``) or ``READONLY``, which redis-py's
    Sentinel connection turns into a ``ConnectionError`` ("The previous master is now
    a slave") after dropping the connection. Such a command is sent again like one
    that was never sent (the retry rule), not reported as one whose outcome is
    unknown."""
    import redis

    return isinstance(exc, redis.BusyLoadingError) or isinstance(exc.__context__, redis.ReadOnlyError)


def _problem_of(exc: BaseException) -> Problem | None:
    """:func:`reply_problem` for a redis-py exception (which strips the code)."""
    import redis

    e = redis.exceptions
    if isinstance(exc, e.ConnectionError) and isinstance(exc.__context__, e.ReadOnlyError):
        return "wrong node"  # a Sentinel connection's READONLY (refused_unapplied)
    if isinstance(exc, (e.AuthenticationError, e.AuthenticationWrongNumberOfArgsError)):
        return "authentication"
    if isinstance(exc, (e.ReadOnlyError, e.MasterDownError)):
        return "wrong node"
    if isinstance(exc, (e.BusyLoadingError, e.ClusterDownError, e.TryAgainError)):
        return "not now"
    if isinstance(exc, e.ResponseError):
        code = getattr(exc, "status_code", None)
        return reply_problem(f"{code} {exc}" if code else str(exc))
    return None


def _no_such_database(error: BaseException) -> bool:
    """Whether the error reply *error* is the server's refusal of a ``SELECT`` of a
    database it does not have (Redis and Valkey: ``ERR DB index is out of range``)."""
    return "DB index is out of range" in str(error)


def _missing_database(conn: Any, databases: Any) -> ConfigError:
    """The :class:`~statekit.errors.ConfigError` for the redis-py connection *conn*
    whose handshake's ``SELECT`` named a database its server does not have: the URL's
    database number is wrong, which no retry or wait fixes (a
    :class:`~statekit.errors.BackendUnavailable` would be retried, answered 503 "try
    again" and open the circuit breaker). *databases* is the server's ``CONFIG GET
    databases`` reply (``[b"databases", b"16"]``, a RESP3 map, or ``None`` when the
    server refused it)."""
    if isinstance(databases, dict):
        databases = [item for pair in databases.items() for item in pair]
    count = databases[1] if isinstance(databases, (list, tuple)) and len(databases) == 2 else None
    count = count.decode() if isinstance(count, bytes) else count
    if isinstance(count, str) and count.isascii() and count.isdigit() and int(count) > 0:
        limit = f"it has {count}, 0 to {int(count) - 1} (its 'databases' setting)"
    else:
        limit = "it refused the SELECT (its 'databases' setting, 16 unless changed, is the limit)"
    return ConfigError(f"the Redis URL names database {conn.db}, which the Redis at {conn._host_error()} "
                       f"does not have: {limit}; fix the URL's /N or ?db=")


def _tls_unanswered(conn: Any, error: BaseException) -> None:
    """Raise redis-py's ``TimeoutError`` *error* of a TLS connection's (a ``rediss://``
    URL's) connect, sync or asyncio, again with what is likely: a server without TLS on
    that port reads the TLS handshake as the start of a command and never answers it,
    so redis-py says only 'Timeout connecting to server'. Returns for any other error
    or a connection without TLS (the caller raises it as it is)."""
    import redis
    from redis.asyncio.connection import SSLConnection as AsyncSSLConnection

    if not isinstance(error, redis.TimeoutError) or \
            not isinstance(conn, (redis.connection.SSLConnection, AsyncSSLConnection)):
        return
    raise type(error)(f"{error} {conn._host_error()} over TLS (a rediss:// URL): a Redis with no TLS on "
                      "that port never answers the TLS handshake; if it has none, use redis://") from error


class PermissionRefused(BackendUnavailable):
    """The Redis user's ACL refused a command, key or channel (``NOPERM``): an
    operator's grant fixes it (the list: :data:`ACL_GUIDE`), no retry does. Nothing of
    that command was applied (a script's commands before the refused one were)."""


def acl_user(client: Any) -> str | None:
    """The ACL user the redis-py client *client* (any kind, or one of its
    connections) authenticates as: its URL's, ``"default"`` without one, ``None`` when
    a credential provider says."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if kwargs is None:  # a Cluster client
        kwargs = getattr(getattr(client, "nodes_manager", None), "connection_kwargs", None)
    if kwargs is None and hasattr(client, "credential_provider"):  # a connection
        kwargs = {"username": getattr(client, "username", None),
                  "credential_provider": client.credential_provider}
    if not isinstance(kwargs, dict) or kwargs.get("credential_provider") is not None:
        return None
    return str(kwargs.get("username") or "default")


def unavailable(what: str, message: str, problem: Problem | None,
                user: str | None = None) -> BackendUnavailable:
    """The :class:`~statekit.errors.BackendUnavailable` for a failed *what* call
    (*user*: the client's ACL user, named by a permission refusal)."""
    if problem == "permission":
        who = f"Redis user {user!r}" if user else "the Redis URL's user"
        return PermissionRefused(f"the ACL of {who} refused {what}: {message}; grant it what "
                                 f"{ACL_GUIDE} lists")
    if problem == "authentication":
        return BackendUnavailable(
            f"Redis refused authentication during {what} (check the username and password "
            f"in the URL): {message}"
        )
    if problem == "wrong node":
        return BackendUnavailable(f"Redis cannot write during {what} (a replica, or a failover "
                                  f"in progress; reconnecting to the master): {message}")
    return BackendUnavailable(f"Redis unavailable during {what}: {message}")


class _Rule:
    """Mixin for a redis-py connection class: the retry rule (module docstring).

    A failure while connecting, in the handshake or a health check is left as
    redis-py raises it (retryable); one after the command was sent is raised as
    :class:`OutcomeUnknown`, a wrong-node or loading reply as :class:`NotApplied`
    (after dropping the connection). Other replies (``CLUSTERDOWN``, ``TRYAGAIN``:
    RedisCluster's own retry handles them) are left as they are."""

    _statekit_setup = 0  # > 0 while connecting or checking health: nothing of a command sent
    _statekit_replies = 0  # replies read of the commands sent last (a pipeline's)
    _statekit_atomic = False  # the commands sent last are a transaction (MULTI ... EXEC)
    #: replies still to read of the commands sent last. Not zero when the connection
    #: is checked out again (connect(): every pool checkout, Sentinel's too), the call
    #: that sent them was interrupted before reading them all (KeyboardInterrupt, a
    #: signal handler's exception: redis-py's clients give the connection back then):
    #: it is dropped, so the next command never reads another caller's reply
    _statekit_unread = 0
    _statekit_batch = 0  # commands in the last pack_commands() (a pipeline)

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        if self._statekit_unread and self._sock:  # type: ignore[attr-defined]
            self.disconnect()
        return super().connect(*args, **kwargs)  # type: ignore[misc]

    def connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
        self._statekit_setup += 1
        try:
            return super().connect_check_health(*args, **kwargs)  # type: ignore[misc]
        except Exception as e:
            _tls_unanswered(self, e)  # raises it with a hint, if one fits
            raise
        finally:
            self._statekit_setup -= 1

    def on_connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
        self._statekit_setup += 1
        try:
            return super().on_connect_check_health(*args, **kwargs)  # type: ignore[misc]
        except _rule().redis.ResponseError as e:
            if not _no_such_database(e):
                raise
            raise _missing_database(self, self._statekit_databases()) from e
        finally:
            self._statekit_setup -= 1

    def _statekit_databases(self) -> Any:
        """The server's ``CONFIG GET databases`` reply on this connection, or ``None``
        when it refuses it (a managed Redis without ``CONFIG``)."""
        redis = _rule().redis
        try:
            self.send_command("CONFIG", "GET", "databases", check_health=False)  # type: ignore[attr-defined]
            return self.read_response()  # type: ignore[attr-defined]
        except redis.RedisError:
            return None

    def disconnect(self, *args: Any, **kwargs: Any) -> Any:
        self._statekit_unread = 0
        return super().disconnect(*args, **kwargs)  # type: ignore[misc]

    def pack_commands(self, commands: Any) -> Any:
        packed = super().pack_commands(commands)  # type: ignore[misc]
        self._statekit_batch = len(commands) if isinstance(commands, (list, tuple)) else 0
        return packed

    def check_health(self) -> Any:
        if not (self.health_check_interval and _monotonic() > self.next_health_check):  # type: ignore[attr-defined]
            return None  # not due (the common case: no bookkeeping)
        self._statekit_setup += 1
        try:
            return super().check_health()  # type: ignore[misc]
        finally:
            self._statekit_setup -= 1

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self._statekit_setup:
            return super().send_packed_command(command, check_health)  # type: ignore[misc,no-any-return]
        rule = _rule()
        if not self._sock:  # type: ignore[attr-defined]
            # connect(), not connect_check_health(): a Sentinel connection asks the
            # sentinels for the master again there (after a wrong-node reply dropped it)
            self.connect()  # type: ignore[attr-defined]
        if check_health:
            self.check_health()
        batch = self._statekit_batch
        if batch:  # several commands (pack_commands, cluster_batch): a transaction if MULTI first
            self._statekit_batch = 0
            self._statekit_unread = batch
            first = command[0] if isinstance(command, list) and command else command
            multi = rule.multi
            head = first[: len(multi)]
            self._statekit_atomic = (head if type(head) is bytes else bytes(head)).upper() == multi
        else:  # one command: a refusal is its first reply (_statekit_refused reads no flag)
            self._statekit_unread = 1
            self._statekit_atomic = False
        self._statekit_replies = 0
        try:
            super().send_packed_command(command, check_health=False)  # type: ignore[misc]
        except (rule.redis.ConnectionError, rule.redis.TimeoutError) as e:
            raise rule.OutcomeUnknown(f"{e} (sending a command: its outcome is unknown)") from e

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        if self._statekit_setup:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        rule = _rule()
        redis = rule.redis
        if kwargs.get("disconnect_on_error", True) is False:
            # a pub/sub read (or push notifications): the connection stays in use and
            # redis-py resumes a partial message; re-reading it resends nothing
            try:
                reply = super().read_response(*args, **kwargs)  # type: ignore[misc]
            except redis.ResponseError:
                self._statekit_unread = max(self._statekit_unread - 1, 0)
                raise
            self._statekit_unread = max(self._statekit_unread - 1, 0)
            return reply
        try:
            reply = super().read_response(*args, **kwargs)  # type: ignore[misc]
        except redis.ResponseError as e:
            # CLUSTERDOWN and TRYAGAIN stay as they are: RedisCluster handles them
            if _problem_of(e) == "wrong node":
                raise self._statekit_refused(e) from e
            self._statekit_replies += 1
            self._statekit_unread = max(self._statekit_unread - 1, 0)
            raise
        except (rule.NotApplied, redis.AuthenticationError):
            raise
        except (redis.ConnectionError, redis.TimeoutError) as e:
            # redis-py's Sentinel connection turns READONLY into a ConnectionError,
            # and LOADING is a ConnectionError: replies, nothing applied
            if refused_unapplied(e):
                raise self._statekit_refused(e) from e
            # the reply may still come: never read by the next command (redis-py's
            # Sentinel connection before 8.2 reads with disconnect_on_error=False)
            self.disconnect()  # type: ignore[attr-defined]
            raise rule.OutcomeUnknown(f"{e} (waiting for a reply: the outcome is unknown)") from e
        self._statekit_replies += 1
        self._statekit_unread = max(self._statekit_unread - 1, 0)
        return reply

    def read_replies(self, count: int) -> tuple[list[Any], Exception | None]:
        """The next *count* replies of the commands just sent (a pipeline), read from
        the parser directly (no per-reply wrapper: a few µs less per reply), error
        replies as values. Returns the replies read and, if reading stopped early, the
        error: :class:`OutcomeUnknown` (a dropped connection or a timeout: the rest were
        sent, their outcome is unknown) or what :meth:`_statekit_refused` makes of a
        wrong-node reply; the connection is dropped then."""
        rule = _rule()
        redis = rule.redis
        read = self._parser.read_response  # type: ignore[attr-defined]
        error_cls = redis.ResponseError
        out: list[Any] = []
        try:
            while len(out) < count:
                reply = read()
                if isinstance(reply, error_cls) and _problem_of(reply) == "wrong node":
                    self._statekit_replies = len(out)
                    return out, self._statekit_refused(reply)
                out.append(reply)
        except (OSError, redis.ConnectionError, redis.TimeoutError) as e:
            self.disconnect()  # type: ignore[attr-defined]
            return out, rule.OutcomeUnknown(f"{e} (waiting for a reply: the outcome is unknown)")
        except BaseException:
            self.disconnect()  # type: ignore[attr-defined]
            raise
        self._statekit_replies += count
        self._statekit_unread = max(self._statekit_unread - count, 0)
        if self.health_check_interval:  # type: ignore[attr-defined]
            self.next_health_check = _monotonic() + self.health_check_interval  # type: ignore[attr-defined]
        return out, None

    def _statekit_refused(self, error: Exception) -> Exception:
        """The error for a reply that says the node applied nothing (the connection is
        dropped): :class:`NotApplied`, unless replies to earlier commands sent with it
        came first (a pipeline, not a transaction): those were applied (a failover
        between them), and sending them again would apply them twice."""
        rule = _rule()
        self.disconnect()  # type: ignore[attr-defined]
        if self._statekit_replies and not self._statekit_atomic:
            return rule.OutcomeUnknown(f"{error} (after {self._statekit_replies} replies to the commands "
                                       "sent with it: those were applied; not sent again)")
        return rule.NotApplied(f"{error} (nothing applied)")


class _RuleClasses:
    """The redis-py classes of the rule, built on first use (redis is optional)."""

    def __init__(self) -> None:
        import redis

        self.redis = redis

        class OutcomeUnknown(redis.ConnectionError):
            """A command was sent and no reply came: it may or may not have been
            applied. Never retried (a subclass: RedisCluster retries exact types)."""

        class NotApplied(redis.ConnectionError):
            """The node refused the command unapplied (a replica, a demoted master,
            loading); the connection was dropped. Safe to retry."""

        from redis.retry import Retry

        class Refused(Exception):
            """Carries an error :func:`_retryable` refuses out of ``Retry``'s loop."""

        class RuleRetry(Retry):  # type: ignore[misc]
            """redis-py's ``Retry`` that raises what :func:`_retryable` refuses at once,
            after the failure callback (redis-py before 8.2 has no ``is_retryable``
            checker on the object). What the callback raises instead is dropped: a
            pipeline's turns any error while watching into a ``WatchError``, which
            ``Redis.transaction()`` answers by running the transaction again."""

            def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
                refused: list[Exception] = []

                def attempt() -> Any:
                    try:
                        return do()
                    except Exception as e:
                        if not _retryable(e):
                            refused.append(e)
                            raise Refused from None
                        raise

                try:
                    return super().call_with_retry(attempt, fail, *args, **kwargs)
                except Refused:
                    pass
                error = refused[0]
                try:
                    if kwargs.get("with_failure_count", len(args) > 1 and args[1]):
                        fail(error, 1)
                    else:
                        fail(error)
                except Exception:  # noqa: S110 - the refused error is the one to raise
                    pass
                raise error

        from redis.cluster import AbstractRedisCluster

        # redis-py's cluster pipelines give every command of a node whose replies they
        # could not read that error, then send each again alone and, out of that, the
        # whole pipeline again while their retry allows, matching the error by
        # isinstance (a ConnectionError): an OutcomeUnknown is one of the errors its
        # cluster clients raise at once, without a retry (their "not a node failure")
        kept = getattr(AbstractRedisCluster, "NOT_NODE_FAILURE_ERRORS", None)
        if kept is not None and OutcomeUnknown not in kept:
            AbstractRedisCluster.NOT_NODE_FAILURE_ERRORS = (*kept, OutcomeUnknown)

        #: ``MULTI`` as redis-py packs it (how a transaction's packed commands begin)
        self.multi = b"".join(redis.Connection().pack_command("MULTI"))  # type: ignore[no-untyped-call]
        self.OutcomeUnknown = OutcomeUnknown
        self.NotApplied = NotApplied
        self.Retry = RuleRetry
        self.classes: dict[type, type] = {}
        self.lock = threading.Lock()


_rules: _RuleClasses | None = None


_rules_lock = threading.Lock()


def _new_locks_in_child() -> None:
    """A forked child gets new module locks: a parent thread inside :func:`get_client`
    or building the rule's classes at fork time held one, and no thread of the child
    would ever release it (its first ``get_client`` waited for ever)."""
    global _clients_lock, _rules_lock
    _clients_lock, _rules_lock = threading.Lock(), threading.Lock()
    if _rules is not None:
        _rules.lock = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_in_child)


def _rule() -> _RuleClasses:
    """The rule's classes, built once per process (under a lock: two threads building
    them at once would make two ``OutcomeUnknown`` classes, one of them retryable)."""
    global _rules
    if _rules is None:
        with _rules_lock:
            if _rules is None:
                _rules = _RuleClasses()
    return _rules


def with_rule(connection_class: type) -> type:
    """The subclass of the redis-py *connection_class* that follows the retry rule
    (cached; a class that already follows it is returned as is)."""
    if issubclass(connection_class, _Rule):
        return connection_class
    rule = _rule()
    with rule.lock:
        cls = rule.classes.get(connection_class)
        if cls is None:
            cls = rule.classes[connection_class] = type(
                f"Statekit{connection_class.__name__}", (_Rule, connection_class), {}
            )
        return cls


def _retryable(error: Exception) -> bool:
    rule = _rule()
    return not isinstance(error, (rule.OutcomeUnknown, rule.redis.AuthenticationError))


def retry_policy(retries: int = 2, cap: float = 0.25) -> Any:
    """redis-py's ``Retry`` for the rule: exponential backoff, *retries* attempts more,
    on connection errors and timeouts except :class:`OutcomeUnknown` (a command sent,
    its outcome unknown) and authentication failures (retrying cannot fix them)."""
    from redis.backoff import ExponentialBackoff

    return _rule().Retry(ExponentialBackoff(cap=cap, base=0.02), retries)


def _timed_out(exc: BaseException | None) -> bool:
    import redis

    while exc is not None:
        if isinstance(exc, (redis.TimeoutError, TimeoutError)):
            return True
        exc = exc.__cause__
    return False


def call_with_rule(do: Any, fail: Any, retry: Any = None, *, read: bool = False,
                   error: Exception | None = None) -> Any:
    """Run ``do()`` (send one command and read its reply) under the retry rule.

    The first attempt runs bare (no ``Retry`` bookkeeping on the hot path; a caller
    that made it itself passes its *error*). After a connection error or timeout,
    ``fail(error)`` drops the connection; then :class:`OutcomeUnknown` (the command
    went out) is raised, except for a *read* (an idempotent command,
    :data:`IDEMPOTENT_READS`) after a dropped connection (not a timeout), which runs
    once more (by *retry*, so a refused reconnect is retried; a second unknown outcome
    is not); an authentication failure is raised; anything else (nothing was
    applied: a refused connect, a wrong-node reply) is retried by *retry* (a
    :func:`retry_policy`; ``None``: not retried). Other errors propagate as raised.
    """
    rule = _rule()
    if error is None:
        try:
            return do()
        except (rule.redis.ConnectionError, rule.redis.TimeoutError) as e:
            error = e
    elif not isinstance(error, (rule.redis.ConnectionError, rule.redis.TimeoutError)):
        raise error
    fail(error)
    if isinstance(error, rule.OutcomeUnknown):
        if not read or _timed_out(error):
            raise error
        # once: sent again, its outcome unknown again, *retry* refuses it; a connect
        # refused on the way (a restarted server) is retried as any unsent command
        return do() if retry is None else retry.call_with_retry(do, fail)
    if retry is None or not _retryable(error):
        raise error
    return retry.call_with_retry(do, fail)


def outcome_unknown(exc: BaseException) -> bool:
    """Whether *exc* (or what it wraps) says a command was sent and its outcome is unknown."""
    rule = _rule()
    while exc is not None:
        if isinstance(exc, rule.OutcomeUnknown):
            return True
        exc = exc.__cause__  # type: ignore[assignment]
    return False


#: the URL's ``retries`` and ``retry_backoff_cap`` when it gives none
_RETRY_DEFAULTS = (2, 0.25)


def _common_kwargs(parsed: BackendURL, overrides: dict[str, Any]) -> dict[str, Any]:
    """The redis-py keyword arguments of *parsed* (sync and asyncio clients alike);
    ``retry`` is the rule's :func:`retry_policy` and ``statekit_retry`` the URL's
    ``(retries, backoff cap)`` (the asyncio layer builds its own from it and pops it)."""
    require("redis", feature="redis:// URLs")
    opts = dict(parsed.options)
    opts.update(overrides)
    for option in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        path = opts.get(option)
        # else each connect fails as an outage, naming neither the option nor the file
        if isinstance(path, str) and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            raise ConfigError(f"option {option}={path!r}: no such file, or not readable")
    retries = opts.pop("retries", _RETRY_DEFAULTS[0])
    cap = opts.pop("retry_backoff_cap", _RETRY_DEFAULTS[1])
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": opts.pop("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        "socket_timeout": opts.pop("socket_timeout", DEFAULT_SOCKET_TIMEOUT),
        "health_check_interval": opts.pop("health_check_interval", 30),
        "retry": retry_policy(retries, cap),
        "statekit_retry": (retries, cap),
    }
    if parsed.username:
        kwargs["username"] = parsed.username
    if parsed.password:
        kwargs["password"] = parsed.password
    kwargs.update(opts)
    return kwargs


def _adopt(client: redis.Redis) -> redis.Redis:
    """Make *client*'s pool open connections that follow the rule (before any is made)."""
    pool = client.connection_pool
    pool.connection_class = with_rule(pool.connection_class)
    return client


def _blocking(client: Any, bounded: bool) -> Any:
    """*client* (made for a URL; sync or ``redis.asyncio``), when the URL *bounded* its
    pool (``max_connections``), on a ``BlockingConnectionPool`` (of its side) of its
    own pool's settings: past ``max_connections`` a caller waits for a connection
    another gives back, up to the socket timeout (``None``: as long as it takes; then
    ``BackendUnavailable``), instead of failing at once with ``MaxConnectionsError``
    (redis-py's plain pool). Else *client* as it is."""
    if not bounded:
        return client
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs.pop("maint_notifications_pool_handler", None)  # the old pool's: the new one makes its own
    blocking = _side(pool).BlockingConnectionPool(
        max_connections=pool.max_connections, timeout=kwargs["socket_timeout"],
        connection_class=pool.connection_class, **kwargs)
    return type(client).from_pool(blocking)


def _side(pool: Any) -> Any:
    """``redis``, or ``redis.asyncio`` for an asyncio *pool*."""
    import redis.asyncio

    return redis.asyncio if isinstance(pool, redis.asyncio.ConnectionPool) else redis


_blocking_sentinel_pools: dict[bool, Any] = {}


def _sentinel_waits(kwargs: dict[str, Any], *, aio: bool = False) -> dict[str, Any]:
    """The arguments of redis-py's ``Sentinel.master_for`` (sync, or with *aio*
    ``redis.asyncio``'s) for a master pool that waits for a connection past the
    URL's ``max_connections``, as :func:`_blocking`'s does, if *kwargs* (the
    client's) have one; else none."""
    if "max_connections" not in kwargs:
        return {}
    pool_class = _blocking_sentinel_pools.get(aio)
    if pool_class is None:
        import redis.asyncio.sentinel
        import redis.sentinel

        side: Any = redis.asyncio if aio else redis

        class BlockingSentinelConnectionPool(side.sentinel.SentinelConnectionPool,  # type: ignore[misc]
                                             side.BlockingConnectionPool):  # type: ignore[misc]
            """A Sentinel master's pool that waits for a connection when all are in use."""

        pool_class = _blocking_sentinel_pools[aio] = BlockingSentinelConnectionPool
    return {"connection_pool_class": pool_class, "timeout": kwargs["socket_timeout"]}


def create_client(url: str | BackendURL, **overrides: Any) -> RedisClient:
    """Create a new Redis client for a ``redis://``, ``rediss://``, ``unix://``,
    ``redis+sentinel://`` or ``redis+cluster://`` URL, following the retry rule
    (module docstring). With ``max_connections`` (a Cluster's: each node's) a caller
    past it waits for a connection, up to the socket timeout, instead of failing at
    once (a ``BlockingConnectionPool``).

    :param overrides: keyword arguments for the redis-py client, applied over the
        URL's options (``socket_timeout=None`` for a blocking pub/sub reader, say).
    """
    parsed = parse_url(url, kinds=("redis",)) if isinstance(url, str) else url
    if parsed.kind != "redis":
        raise ConfigError(f"{parsed.scheme}:// is not a Redis URL")
    kwargs = _common_kwargs(parsed, overrides)
    kwargs.pop("statekit_retry")
    import redis

    if parsed.scheme == "redis+cluster":
        from redis.cluster import ClusterNode

        kwargs.pop("db", None)
        kwargs.pop("health_check_interval", None)
        kwargs.pop("sentinel_password", None)
        gate = None
        if "max_connections" in kwargs:  # each node's pool waits for a connection (module docstring)
            kwargs["connection_pool_class"] = functools.partial(redis.BlockingConnectionPool,
                                                                timeout=kwargs["socket_timeout"])
            gate = ClusterGate(int(kwargs["max_connections"]), kwargs["socket_timeout"])
        return _lazy_cluster(
            gate,
            startup_nodes=[ClusterNode(h, p) for h, p in parsed.hosts],  # type: ignore[no-untyped-call]
            **kwargs,
        )
    if parsed.scheme == "redis+sentinel":
        from redis.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

        from ._sentinel import sentinel_class

        sentinel_kwargs = {
            "socket_connect_timeout": kwargs["socket_connect_timeout"],
            "socket_timeout": kwargs["socket_timeout"],
        }
        sentinel_password = kwargs.pop("sentinel_password", None)
        if sentinel_password:
            sentinel_kwargs["password"] = sentinel_password
        ssl = kwargs.pop("ssl", False) in (True, "true", "1", "yes")
        managed = SentinelManagedSSLConnection if ssl else SentinelManagedConnection
        kwargs["connection_class"] = with_rule(managed)
        sentinel = sentinel_class()(
            list(parsed.hosts), sentinel_kwargs=sentinel_kwargs, **kwargs
        )
        master: redis.Redis = sentinel.master_for(parsed.service, db=parsed.db,  # type: ignore[no-untyped-call]
                                                  **_sentinel_waits(kwargs))
        return master
    kwargs.pop("sentinel_password", None)
    bounded = "max_connections" in kwargs
    if parsed.scheme == "unix":
        return _adopt(_blocking(redis.Redis(unix_socket_path=parsed.path, db=parsed.db, **kwargs), bounded))
    host, port = parsed.hosts[0]
    if parsed.scheme == "rediss":
        kwargs["ssl"] = True
    return _adopt(_blocking(redis.Redis(host=host, port=port, db=parsed.db, **kwargs), bounded))


_lazy_cluster_class: Any = None
#: ``WATCH`` as a pipeline's ``execute_command`` may be given it
_WATCH = frozenset({"WATCH", "watch", b"WATCH", b"watch"})
_gated_cluster_class: Any = None

#: guards the making of a :class:`ClusterGate`'s semaphore (held for no I/O)
_gates_made = threading.Lock()


class ClusterGate:
    """The turns of a sync Redis Cluster client of a URL with ``max_connections``
    (its ``statekit_gate``): every command through ``RedisCluster.execute_command``,
    every pipeline (``ClusterPipeline.execute``; a transaction's from its ``WATCH``,
    which holds a node's connection, to its reset: :meth:`hold`) of the client takes
    one, every store's on the client together (the transport's background script
    loads take a place of their node's kept share instead). redis-py's sync
    pipeline takes its nodes' connections one at a time and keeps those it has while
    it waits in the next node's ``BlockingConnectionPool``: two pipelines visiting two
    nodes in opposite orders each held one node's last connection and waited for the
    other's for the socket timeout. A turn uses one connection of a node at most (a
    pipeline one of each of its nodes), and there are as many turns as each node's
    pool has connections besides those the transports keep between calls
    (:func:`~statekit.redis.transport.kept_share`; a thread's direct commands on them
    take no turn): so a caller in a turn never waits in a node's pool for a
    connection another caller holds. A caller past them waits its turn up to
    *timeout* (the socket timeout, as the node pools wait; ``None``: as long as it
    takes), then :func:`~statekit.redis.transport.pool_busy`, nothing sent. A call
    made in a turn its thread holds (a pipeline's redirected commands) runs in that
    turn. The asyncio client's is :class:`statekit.redis.aio._ClusterGate`.

    The semaphore and the thread-local depth are made on first use, by the
    ``threading`` of that moment: a client made before gevent patched it (a preloaded
    app) gets gevent's, whose wait yields to the other greenlets and whose locals
    count each greenlet's nesting apart. A forked child starts with every turn free."""

    __slots__ = ("max_connections", "timeout", "turns", "_free", "_held", "__weakref__")

    def __init__(self, max_connections: int, timeout: float | None) -> None:
        from .transport import kept_share

        self.max_connections = max_connections
        self.timeout = float(timeout) if timeout else None
        self.turns = max_connections - kept_share(max_connections)
        self._free: threading.BoundedSemaphore | None = None
        self._held: threading.local | None = None
        reset_in_child(self)

    def reset_after_fork(self) -> None:
        """In a forked child: every turn free (the parent's holders are not there)."""
        self._free = self._held = None

    def _made(self) -> tuple[threading.BoundedSemaphore, threading.local]:
        with _gates_made:
            if self._free is None or self._held is None:
                self._free, self._held = threading.BoundedSemaphore(self.turns), threading.local()
            return self._free, self._held

    def __enter__(self) -> ClusterGate:
        free, held = self._free, self._held
        if free is None or held is None:
            free, held = self._made()
        depth = getattr(held, "depth", 0)
        if not depth and not free.acquire(timeout=self.timeout):
            from .transport import pool_busy

            raise pool_busy("a Redis Cluster call", self)
        held.depth = depth + 1
        return self

    def __exit__(self, *exc: object) -> None:
        free, held = self._free, self._held
        assert free is not None and held is not None
        held.depth -= 1
        if not held.depth:
            free.release()

    def hold(self) -> tuple[int, bool]:
        """Take a turn, as ``with gate:`` does, for a caller that keeps a node's
        connection past the call that took it (a transaction's pipeline from its
        ``WATCH`` until its ``reset()``): the token for :meth:`give_back` (this
        thread, and whether a turn was taken: not within one this thread holds)."""
        held = self._held
        taken = held is None or self._free is None or not getattr(held, "depth", 0)
        self.__enter__()
        return threading.get_ident(), taken

    def give_back(self, token: tuple[int, bool]) -> None:
        """Give back the turn :meth:`hold` took. From another thread (a pipeline the
        garbage collector resets there) the turn is freed; the holding thread's count
        of nested turns is out of reach there and stays (its later calls take none)."""
        owner, taken = token
        if owner == threading.get_ident():
            self.__exit__()
        elif taken and self._free is not None:
            self._free.release()


def _adopt_cluster(cluster: Any) -> None:
    """Make the pools of *cluster*'s nodes, and of nodes it finds later, open
    connections that follow the rule. (redis-py before 8.2 hands a cluster's
    ``connection_class`` to ``Redis()``, which refuses it.) The connections of the
    first topology query are closed: they were made before."""
    nodes = cluster.nodes_manager
    create = nodes.create_redis_node

    def create_redis_node(host: str, port: int, **kwargs: Any) -> Any:
        return _adopt(create(host, port, **kwargs))

    nodes.create_redis_node = create_redis_node
    for node in cluster.get_nodes():
        if node.redis_connection is not None:
            pool = _adopt(node.redis_connection).connection_pool
            pool.disconnect()
            pool.reset()


def _lazy_cluster(gate: ClusterGate | None, **kwargs: Any) -> RedisClient:
    """A ``RedisCluster`` that contacts the cluster on first use, not when created.

    redis-py's ``RedisCluster()`` fetches the slot map in its constructor, so an app
    created while the cluster is away would fail to start (and gunicorn would give
    up on its workers). This one is created at once; its first command connects,
    and raises :class:`~statekit.errors.BackendUnavailable` (then again on the next
    command) until the cluster answers, like a standalone client. With a *gate* (a
    URL's ``max_connections``) its commands and pipelines take turns
    (:class:`ClusterGate`); without, it is redis-py's class but for the lazy start."""
    global _lazy_cluster_class, _gated_cluster_class
    if _lazy_cluster_class is None:
        from redis.cluster import RedisCluster

        class LazyRedisCluster(RedisCluster):  # type: ignore[misc]
            def __init__(self, **kw: Any) -> None:  # noqa: D107 - see _lazy_cluster
                object.__setattr__(self, "_statekit_kwargs", kw)
                # reentrant: the constructor running in this thread reads attributes it
                # has not set yet (AttributeError then); other threads wait for it
                object.__setattr__(self, "_statekit_init_lock", threading.RLock())
                reset_in_child(self)

            def reset_after_fork(self) -> None:
                """In a forked child: a new lock, and a first connect a parent thread
                had under way at fork time started over by the child's first command
                (that thread is not in the child: its lock was never released there)."""
                state = self.__dict__
                state["_statekit_init_lock"] = threading.RLock()
                if state.get("_statekit_started") and not state.get("_statekit_ready"):
                    for key in [k for k in state if not k.startswith("_statekit_")]:
                        del state[key]
                    state["_statekit_started"] = False

            def __getattr__(self, name: str) -> Any:
                # only reached for attributes the real constructor would have set
                state = self.__dict__
                if name.startswith("_statekit_") or state.get("_statekit_ready"):
                    raise AttributeError(name)
                with state["_statekit_init_lock"]:
                    if not state.get("_statekit_ready"):
                        if state.get("_statekit_started"):  # inside the constructor, this thread
                            raise AttributeError(name)
                        state["_statekit_started"] = True
                        try:
                            with translate_errors("connecting to the Redis Cluster"):
                                RedisCluster.__init__(self, **state["_statekit_kwargs"])
                                _adopt_cluster(self)
                        except BaseException:  # start over on the next use
                            for key in [k for k in state if not k.startswith("_statekit_")]:
                                del state[key]
                            state["_statekit_started"] = False
                            raise
                        state["_statekit_ready"] = True
                return object.__getattribute__(self, name)

            def close(self) -> None:
                if self.__dict__.get("_statekit_started"):
                    super().close()

        _lazy_cluster_class = LazyRedisCluster
    if gate is None:
        client: RedisClient = _lazy_cluster_class(**kwargs)
        return client
    if _gated_cluster_class is None:
        from redis.cluster import ClusterPipeline

        class GatedClusterPipeline(ClusterPipeline):  # type: ignore[misc]
            """A pipeline whose ``execute`` takes a turn of its client's gate. A
            transaction's ``WATCH`` runs at once, on a connection of its node the
            pipeline keeps until its ``reset()`` (``execute()`` ends in one): it takes
            a turn kept as long. Taken at ``execute()`` only, it let a pipeline hold
            that connection while it waited for a turn, and a caller in a turn wait in
            that node's pool for it."""

            _statekit_gate: ClusterGate
            _statekit_watch: tuple[int, bool] | None = None  # the turn a WATCH took

            def execute(self, raise_on_error: bool = True) -> Any:
                with self._statekit_gate:
                    return super().execute(raise_on_error)

            def watch(self, *names: Any) -> Any:
                return self._statekit_watching(super().watch, *names)

            def execute_command(self, *args: Any, **kwargs: Any) -> Any:
                if args and args[0] in _WATCH:  # (a WATCH sent by name, not by watch())
                    return self._statekit_watching(super().execute_command, *args, **kwargs)
                return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]

            def _statekit_watching(self, call: Any, *args: Any, **kwargs: Any) -> Any:
                """*call* (a ``WATCH``) in the turn the pipeline keeps until its reset;
                given back at once if it failed holding no connection (not a
                transaction's pipeline, or its node unreachable)."""
                if self._statekit_watch is None:
                    self._statekit_watch = self._statekit_gate.hold()
                try:
                    return call(*args, **kwargs)
                except BaseException:
                    if getattr(self._execution_strategy, "_transaction_connection", None) is None:
                        self._statekit_let_go()
                    raise

            def _statekit_let_go(self) -> None:
                token, self._statekit_watch = self._statekit_watch, None
                if token is not None:
                    self._statekit_gate.give_back(token)

            def reset(self) -> None:  # type: ignore[override]
                try:
                    super().reset()  # type: ignore[no-untyped-call]
                finally:
                    self._statekit_let_go()

        class GatedRedisCluster(_lazy_cluster_class):  # type: ignore[misc,valid-type]
            """A lazy ``RedisCluster`` whose commands and pipelines take turns."""

            @property
            def statekit_gate(self) -> ClusterGate:
                gate: ClusterGate = self.__dict__["_statekit_gate"]
                return gate

            def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
                pipe = super().pipeline(transaction, shard_hint)
                pipe.__class__ = GatedClusterPipeline  # (redis-py made it; execute() takes a turn)
                pipe._statekit_gate = self.__dict__["_statekit_gate"]
                return pipe

            def pubsub(self, node: Any = None, host: Any = None, port: Any = None, **kwargs: Any) -> Any:
                """redis-py's ``ClusterPubSub``, listening on connections of its own (as its
                node's pool makes them), beside each node's ``max_connections``
                (:mod:`statekit.redis.pubsub`): from the pool, one held it as long as it
                listened, outside the turns, and a command for that node waited for it."""
                from .pubsub import cluster_pubsub, pool_like

                return cluster_pubsub(self, lambda of: pool_like(of.connection_pool),
                                      node=node, host=host, port=port, **kwargs)

        # the turn is taken under execute_command (redis-py's retries within it), which
        # OpenTelemetry's instrumentation wraps: the transport looks for its wrapper there
        # to drive its direct commands through redis-py (module docstring of .transport)
        name = "_internal_execute_command" if hasattr(GatedRedisCluster, "_internal_execute_command") \
            else "execute_command"  # (older redis-py)
        inner = getattr(GatedRedisCluster, name)

        def execute_command(self: Any, *args: Any, **kwargs: Any) -> Any:
            with self.__dict__["_statekit_gate"]:
                return inner(self, *args, **kwargs)

        setattr(GatedRedisCluster, name, execute_command)
        _gated_cluster_class = GatedRedisCluster
    client = _gated_cluster_class(**kwargs)
    object.__setattr__(client, "_statekit_gate", gate)
    return client


def get_client(url: str, **overrides: Any) -> RedisClient:
    """Return this process's shared client for *url* (one pool per URL and options),
    creating it on first use. Safe to call from many threads; a forked child gets
    its own client. Surrounding white space (an env file's) is not part of the URL."""
    url = url.strip()
    key = (os.getpid(), url, tuple(sorted(overrides.items())))
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = create_client(url, **overrides)
    return client


_memory_servers: dict[str, Any] = {}


def memory_client(name: str = "") -> RedisClient:
    """A client of the in-process Redis named *name* (``memory://name``): fakeredis
    with Lua, so ``memory://`` backends run the very scripts and commands the Redis
    backends run (one implementation of each atomic operation). Clients of the same
    name share one server for the life of the process; :func:`reset_memory` empties
    them (between tests).

    :raises ConfigError: the ``memory`` extra (fakeredis with Lua) is not installed.
    """
    server = memory_server(name)  # first: it names the extra when fakeredis is missing
    import fakeredis

    client: RedisClient = fakeredis.FakeRedis(server=server)
    return client


def memory_server(name: str = "") -> Any:
    """The in-process fakeredis server named *name* (created on first use): sync
    clients (:func:`memory_client`) and asyncio ones
    (:func:`statekit.redis.aio.memory_async_client`) of one name share it."""
    server = _memory_servers.get(name)
    if server is None:
        fakeredis = require("fakeredis", feature="memory:// URLs")
        require("lupa", feature="memory:// URLs (Lua scripts)")
        with _clients_lock:
            server = _memory_servers.setdefault(name, fakeredis.FakeServer())
    return server


def reset_memory() -> None:
    """Empty every ``memory://`` server of this process."""
    if _memory_servers:
        import fakeredis

        for server in list(_memory_servers.values()):
            fakeredis.FakeRedis(server=server).flushall()


def is_cluster(client: Any) -> bool:
    """Whether *client* is a ``RedisCluster`` (multi-key commands need hash tags)."""
    try:
        from redis.cluster import RedisCluster
    except ImportError:  # pragma: no cover - redis not installed
        return False
    return isinstance(client, RedisCluster)


class translate_errors:
    """Context manager: the error map for redis-py calls. Connection errors, timeouts,
    wrong-node and not-now replies and authentication failures become
    :class:`~statekit.errors.BackendUnavailable` (keeping the original as the
    cause); other errors pass through.

    Usage: ``with translate_errors("cache get"): client.get(key)``; *client*, if
    given, is the redis-py client whose ACL user a permission refusal names.
    """

    __slots__ = ("client", "what")

    def __init__(self, what: str, client: Any = None) -> None:
        self.what = what
        self.client = client

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None or not isinstance(exc, Exception):
            return False
        import redis

        if isinstance(exc, AttributeError) and _in_cluster_client(exc):
            sent = _sent_before(exc)
            if sent is not None:  # raised by redis-py's handling of a failure after sending
                raise unavailable(self.what, f"{sent}; then redis-py's cluster client failed: {exc}",
                                  None) from sent
            raise unavailable(self.what, f"{exc} (redis-py's cluster client, while the cluster's "
                              "topology changed; nothing sent)", "not now") from exc
        problem = _problem_of(exc)
        # CLUSTERDOWN / TRYAGAIN (a cluster that lost a master, or is resharding) and
        # READONLY (a failed-over master) are replies, not connection errors, but
        # they say the same thing: the backend cannot serve this call right now.
        # ClusterError: redis-py's cluster client gave up redirecting and retrying
        # ("TTL exhausted."), the cluster in flux
        if problem is not None or isinstance(
            exc, (redis.ConnectionError, redis.TimeoutError, redis.exceptions.RedisClusterException,
                  redis.exceptions.ClusterError)
        ):
            if problem is None and isinstance(exc.__cause__, Exception):
                problem = _problem_of(exc.__cause__)  # a NotApplied of a READONLY reply
            user = acl_user(self.client) if problem == "permission" else None
            raise unavailable(self.what, str(exc), problem, user) from exc
        return False
