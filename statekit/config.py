"""Settings from URLs and the environment (12-factor), validated with clear errors.

A backend is named by a URL; its scheme picks the backend and its query string sets
options, each checked against a typed table (the way redis-py's ``parse_url`` does)::

    redis://[[user]:password@]host[:port][/db][?socket_timeout=0.5&max_connections=50]
    rediss://...                              TLS; ssl_cert_reqs, ssl_check_hostname, ssl_ca_certs
    unix:///run/redis.sock[?db=0]
    redis+sentinel://[:password@]h1:p1,h2:p2/service[/db]
    redis+cluster://[:password@]h1:p1,h2:p2
    memory://[name]                           one process only: for your unit tests
    s3://[key:secret@]bucket[/prefix]?endpoint_url=http://127.0.0.1:9000&region=eu-west-1
    file:///shared/volume/path[?create=1]     create=1: make the directory if missing

:func:`parse_url` returns a :class:`BackendURL`; every malformed URL or option raises
:class:`~statekit.errors.ConfigError` naming the bad part, never a password. In a
password write ``?`` as ``%3F``, ``#`` as ``%23``, ``/`` as ``%2F`` (and ``&`` as ``%26``
in ``?password=``). An unknown option is an error, not ignored: the table is statekit's
own, nothing else is handed to redis-py, so a typo (``socket_timout``) or another
library's option would otherwise be dropped without a word; so is an option the URL's
client would drop (``sentinel_password`` outside ``redis+sentinel://``,
``health_check_interval`` on ``redis+cluster://``). Timeouts are at most a day.
:class:`Settings` reads the ``STATEKIT_*`` environment variables (their surrounding
spaces and line ends, from an env file, are not part of the value).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from fractions import Fraction
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import ConfigError

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_SOCKET_TIMEOUT",
    "BackendURL",
    "Settings",
    "check_bucket_name",
    "flag",
    "number",
    "parse_size",
    "parse_url",
    "url_and_scheme",
]

DEFAULT_CONNECT_TIMEOUT = 1.0
DEFAULT_SOCKET_TIMEOUT = 1.0

REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+sentinel", "redis+cluster"})
SCHEMES = REDIS_SCHEMES | {"memory", "s3", "file"}


#: the longest timeout (and backoff cap) a URL may set, in seconds: one day. Longer
#: ones are no timeout at all, and 1e300 made redis-py raise OverflowError (a time_t
#: out of range) at the first command instead of an error at startup
_MAX_SECONDS = 86_400


def _seconds(name: str) -> Callable[[str], float]:
    """A URL option's duration: more than 0 seconds, at most :data:`_MAX_SECONDS`."""
    return lambda raw: number(raw, f"option {name}", positive=True, maximum=_MAX_SECONDS)


def _int_range(name: str, lo: int, hi: int) -> Callable[[str], int]:
    def conv(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"option {name}={raw!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise ConfigError(f"option {name}={raw!r} must be between {lo} and {hi}")
        return value

    return conv


def _choice(name: str, *choices: str) -> Callable[[str], str]:
    def conv(raw: str) -> str:
        if raw not in choices:
            raise ConfigError(f"option {name}={raw!r} must be one of {', '.join(choices)}")
        return raw

    return conv


def flag(value: Any, name: str = "a boolean setting", *, default: bool | None = None) -> bool:
    """A boolean setting *name*: ``True``/``False`` (``None``, ``0`` and ``1`` too),
    or text ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off`` in any case,
    spaces around ignored (as from an environment variable); empty text is *default*
    when one is given (``VAR=`` in an env file, or compose's ``${VAR}`` of an unset
    variable, means "not set"). Anything else is a
    :class:`~statekit.errors.ConfigError` naming the setting: a typo such as
    ``STATEKIT_SESSION_COOKIE_SECURE=ture`` must not switch a security option off.
    The adapters read every boolean setting through it."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if not low and default is not None:
            return default
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
    raise ConfigError(f"{name}={value!r} must be true or false (1, true, yes, on or 0, false, no, off)")


def number(value: Any, name: str, *, minimum: float = 0.0, maximum: float = math.inf,
           positive: bool = False, text: bool = True, finite: bool = True, unit: str = "",
           why: str = "", error: type[Exception] = ConfigError) -> float:
    """A numeric setting, URL option or argument *name*: a number, or with *text* its
    text as from an environment variable or a query string (without it a ``str`` or a
    ``bool`` is refused: a per-call argument); finite (``inf`` allowed without
    *finite*: a wait for ever), at least *minimum* (more than 0 with *positive*) and at
    most *maximum*, else *error* naming it and the bounds (*unit*: ``"seconds"``, *why*:
    a reason added). ``nan`` compares false with every bound: refused (``nan``, ``inf``
    and a negative ``Retry-After`` got through, or failed at the first outage with
    ``OverflowError``). The one check of a duration or a count in seconds: the adapters'
    settings, :func:`parse_url`'s options, the cache's ttls, the scheduler's intervals,
    blobs' ``expires``, sessions' timeouts. With *unit* ``"seconds"`` a ``timedelta``
    is taken too (its seconds, then checked alike), as a cache's ``ttl`` is: Flask's
    ``PERMANENT_SESSION_LIFETIME = timedelta(days=14)`` habit, Django's settings."""
    unread = ""
    if unit == "seconds" and isinstance(value, dt.timedelta):
        value = value.total_seconds()
    try:
        if not text and (isinstance(value, (bool, str)) or not isinstance(value, (int, float))):
            result = math.nan  # no number: refused below, saying what is wanted
        else:
            result = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        result, unread = math.nan, "is not a number: it "
    except OverflowError:  # an int past a float's range
        result = math.inf
    if not ((math.isfinite(result) or (not finite and result == math.inf))
            and (result > 0 if positive else result >= minimum) and result <= maximum):
        kind = "positive" if positive else "finite" if finite else ""
        bounds = [f"a {kind}{' ' if kind else ''}number{f' of {unit}' if unit else ''}"]
        if not positive and minimum > -math.inf:
            bounds.append(f"at least {minimum:g}")
        if maximum < math.inf:
            bounds.append(f"at most {maximum:g}")
        raise error(f"{name}={value!r} {unread}must be {', '.join(bounds)}{why}")
    return result


def _boolean(name: str) -> Callable[[str], bool]:
    def conv(raw: str) -> bool:
        return flag(raw, f"option {name}")

    return conv


def _text(name: str) -> Callable[[str], str]:
    def conv(raw: str) -> str:
        if not raw:
            raise ConfigError(f"option {name} is empty")
        return raw

    return conv


def _client_name(raw: str) -> str:
    """Redis refuses (``CLIENT SETNAME``, sent with every new connection) a name with a
    space, a control or a non-ASCII character: every command would fail."""
    if raw and not all("!" <= c <= "~" for c in raw):
        raise ConfigError(f"option client_name={raw!r} must be printable ASCII without spaces "
                          "(Redis refuses other client names)")
    return _text("client_name")(raw)


def _region(raw: str) -> str:
    """A region as botocore takes it (a host label, not all digits): else boto3 raised
    its own InvalidRegionError when the store was made."""
    if raw and not re.fullmatch(r"(?![0-9]+$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)", raw):
        raise ConfigError(f"option region={raw!r} is not a region name (letters, digits and '-', "
                          "such as eu-west-1)")
    return _text("region")(raw)


#: what no host name holds (a URL wrapped or pasted with a space inside): the resolver
#: would fail at every call
_NOT_IN_HOST = re.compile(r'[\s\x00-\x1f\x7f"<>\\^`{|}]')


def _http_url(name: str) -> Callable[[str], str]:
    def conv(raw: str) -> str:
        try:
            parts = urlsplit(raw)
            ok = (parts.scheme in ("http", "https") and bool(parts.hostname)
                  and not _NOT_IN_HOST.search(raw))  # nor anywhere in a URL
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"option {name}={raw!r} must be an http(s):// URL with a host")
        return raw

    return conv


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024,
               "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "mi": 1024**2,
               "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
               "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4}


def parse_size(raw: str | int, *, name: str = "size", text: bool = True) -> int:
    """Parse ``"10MiB"``, ``"5 MB"``, ``"1048576"`` or an int into a byte count; without
    *text* only an int (a per-call argument, as ``put(max_size=)``). The one check of a
    byte count: the adapters' size settings, the URL's size options, blob limits.

    :raises ConfigError: not a size, or a negative one (a bool, a float: no byte count)."""
    if isinstance(raw, bool) or not isinstance(raw, int) and (not text or not isinstance(raw, str)):
        raise ConfigError(f"{name}={raw!r} must be a whole number of bytes, 0 or more"
                          + (" (or a size as text: 10MiB)" if text else ""))
    if isinstance(raw, int):
        if raw < 0:
            raise ConfigError(f"{name}={raw!r} must not be negative")
        return raw
    m = _SIZE_RE.match(raw)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ConfigError(f"{name}={raw!r} is not a size (examples: 1048576, 10MiB, 5MB)")
    # exact: a float lost digits past 2**53 and overflowed to inf (OverflowError) at 309
    return int(Fraction(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def _size(name: str) -> Callable[[str], int]:
    return lambda raw: parse_size(raw, name=f"option {name}")


_MAX_DB = 1_000_000

_REDIS_OPTIONS: dict[str, Callable[[str], Any]] = {
    "db": _int_range("db", 0, _MAX_DB),
    "socket_timeout": _seconds("socket_timeout"),
    "socket_connect_timeout": _seconds("socket_connect_timeout"),
    "health_check_interval": _int_range("health_check_interval", 0, 86_400),
    "max_connections": _int_range("max_connections", 1, 1_000_000),
    "retries": _int_range("retries", 0, 100),
    "retry_backoff_cap": _seconds("retry_backoff_cap"),
    "client_name": _client_name,
    "protocol": lambda raw: int(_choice("protocol", "2", "3")(raw)),
    "ssl_cert_reqs": _choice("ssl_cert_reqs", "none", "optional", "required"),
    "ssl_check_hostname": _boolean("ssl_check_hostname"),
    "ssl_ca_certs": _text("ssl_ca_certs"),
    "ssl_certfile": _text("ssl_certfile"),
    "ssl_keyfile": _text("ssl_keyfile"),
    "sentinel_password": _text("sentinel_password"),
    "username": _text("username"),
    "password": _text("password"),
}
#: options that only one scheme uses (the others' clients would drop them unsaid)
_SCHEME_ONLY = {
    **dict.fromkeys(("ssl_cert_reqs", "ssl_check_hostname", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"),
                    "rediss"),
    "sentinel_password": "redis+sentinel",
}
#: options a scheme's client has no use for (redis-py's cluster client: no health checks)
_IGNORED_BY = {"health_check_interval": "redis+cluster"}

_S3_OPTIONS: dict[str, Callable[[str], Any]] = {
    "endpoint_url": _http_url("endpoint_url"),
    "public_endpoint_url": _http_url("public_endpoint_url"),
    "region": _region,
    "addressing_style": _choice("addressing_style", "auto", "path", "virtual"),
    "connect_timeout": _seconds("connect_timeout"),
    "read_timeout": _seconds("read_timeout"),
    "retries": _int_range("retries", 0, 20),
    "multipart_threshold": _size("multipart_threshold"),
    "part_size": _size("part_size"),
    "max_concurrency": _int_range("max_concurrency", 1, 64),
    "concurrent_puts": _int_range("concurrent_puts", 1, 1024),
    "profile": _text("profile"),
    "checksum": _choice("checksum", "sha256", "none"),
    "conditional_writes": _boolean("conditional_writes"),
    "request_checksum_calculation": _choice("request_checksum_calculation", "when_supported",
                                            "when_required"),
    "response_checksum_validation": _choice("response_checksum_validation", "when_supported",
                                            "when_required"),
}

_FILE_OPTIONS: dict[str, Callable[[str], Any]] = {
    "fsync": _boolean("fsync"),
    "create": _boolean("create"),
    "file_mode": lambda raw: int(raw, 8) if re.fullmatch(r"0?[0-7]{3}", raw) else _bad_mode(raw),
}


def _bad_mode(raw: str) -> int:
    raise ConfigError(f"option file_mode={raw!r} must be an octal mode such as 0640")


_MEMORY_OPTIONS: dict[str, Callable[[str], Any]] = {}

_OPTION_TABLES = {
    "redis": _REDIS_OPTIONS, "rediss": _REDIS_OPTIONS, "unix": _REDIS_OPTIONS,
    "redis+sentinel": _REDIS_OPTIONS, "redis+cluster": _REDIS_OPTIONS,
    "s3": _S3_OPTIONS, "file": _FILE_OPTIONS, "memory": _MEMORY_OPTIONS,
}

#: what a URL of each kind looks like, for the error of a text without a scheme
_EXAMPLES = {"redis": "redis://127.0.0.1:6379/0", "file": "file:///srv/uploads", "s3": "s3://bucket/prefix",
             "memory": "memory://"}

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def check_bucket_name(name: str) -> str:
    """*name* if it is a valid S3 bucket name, else a :class:`ConfigError`."""
    if not _BUCKET_RE.match(name) or ".." in name:
        raise ConfigError(f"{name!r} is not a valid S3 bucket name (3-63 chars: a-z 0-9 . -)")
    return name


@dataclass(frozen=True)
class BackendURL:
    """A parsed, validated backend URL.

    ``kind`` is ``"redis"`` for every Redis scheme, else the scheme itself.
    ``hosts`` lists ``(host, port)`` pairs (several for sentinel and cluster);
    ``path`` is the socket path (``unix``) or directory (``file``); ``bucket`` and
    ``prefix`` are set for ``s3``; ``name`` for ``memory``; ``service`` for
    sentinel. ``options`` holds the typed query options.
    """

    scheme: str
    raw: str = field(repr=False)
    hosts: tuple[tuple[str, int], ...] = ()
    db: int = 0
    path: str = ""
    service: str = ""
    bucket: str = ""
    prefix: str = ""
    name: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "redis" if self.scheme in REDIS_SCHEMES else self.scheme

    def redacted(self) -> str:
        """The URL with any password replaced by ``***`` (for logs and errors)."""
        return _redact(self.raw)

    def __repr__(self) -> str:
        shown = {k: "***" if "password" in k else v for k, v in self.options.items()}
        parts = (f"{f.name}={shown if f.name == 'options' else getattr(self, f.name)!r}"
                 for f in fields(self) if f.repr)
        return f"BackendURL({', '.join(parts)})"


def _redact(url: str) -> str:
    if "://" not in url:  # not a URL: what comes before an '@' may be a password all the same
        return "***" + url[url.rfind("@"):] if "@" in url else url
    url = re.sub(r"((?:^|[?&])(?:sentinel_)?password=)[^&#]*", r"\1***", url)
    head, sep, _ = _redact_userinfo(url).partition("#")
    # a fragment is never valid: a '#' left here was written in a password option
    return head + (sep and "#***")


def _redact_userinfo(url: str) -> str:
    head, sep, query = url.partition("?")
    start, at = head.find("://") + 3, head.rfind("@")
    userinfo = head[start:at]
    if start > 2 and at > start and not userinfo.startswith("/"):
        # the userinfo runs to the last '@': a password may hold a raw '@', or a raw
        # '/' that cut it short of the host (a path may hold '@' too, a user not '/')
        user, colon, _ = userinfo.partition(":")
        if "/" not in user:
            head = head[:start] + (f"{user}:***" if colon else "***") + head[at:]
        elif head[: start - 3].lower() in REDIS_SCHEMES:
            head = head[:start] + "***" + head[at:]
    return head + sep + re.sub(r"(//[^/@]*?:)[^/@]*@", r"\1***@", query)


def _is_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts '²' and other digits int() refuses."""
    return text.isascii() and text.isdigit()


def _parse_hosts(netloc: str, default_port: int, url: str) -> tuple[tuple[str, int], ...]:
    hosts: list[tuple[str, int]] = []
    for part in netloc.split(","):
        part = part.strip()
        if not part:
            raise ConfigError(f"empty host in {_redact(url)!r}")
        if part.startswith("["):
            end = part.find("]")
            if end < 0:
                raise ConfigError(f"unclosed IPv6 bracket in host {part!r} of {_redact(url)!r}")
            host, rest = part[1:end], part[end + 1 :]
            port_text = rest[1:] if rest.startswith(":") else ""
            if rest and not rest.startswith(":"):
                raise ConfigError(f"bad host {part!r} in {_redact(url)!r}")
        else:
            host, _, port_text = part.partition(":")
        if not host:
            raise ConfigError(f"empty host in {_redact(url)!r}")
        if _NOT_IN_HOST.search(host):
            raise ConfigError(f"host {host!r} in {_redact(url)!r} is not a host name "
                              "(a space, a control character or one of \"<>\\^`{|})")
        if port_text:
            if not _is_number(port_text) or not 0 < int(port_text) < 65536:
                raise ConfigError(f"port {port_text!r} of host {host!r} is not a port number (1-65535)")
            port = int(port_text)
        else:
            port = default_port
        hosts.append((host, port))
    return tuple(hosts)


def _parse_options(scheme: str, query: str, url: str) -> dict[str, Any]:
    table = _OPTION_TABLES[scheme]
    options: dict[str, Any] = {}
    # a raw '&' in a password option split it: its tail is a pair of its own, not to be shown
    amp = "(a '&' in a password is written %26; the rest of the query is not shown)"
    head = _redact(url.partition("?")[0])
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        if re.search(r"(?:^|&)(?:sentinel_)?password=", query):
            raise ConfigError(f"malformed query string in {head!r} {amp}") from None
        raise ConfigError(f"malformed query string {_redact(query)!r} in {_redact(url)!r}") from None
    after_secret = False
    for key, value in pairs:
        if key not in table:
            if after_secret:
                raise ConfigError(f"unknown option after a password in {head!r} {amp}")
            known = ", ".join(sorted(k for k in table if _SCHEME_ONLY.get(k, scheme) == scheme
                                     and _IGNORED_BY.get(k) != scheme)) or "none"
            raise ConfigError(f"unknown option {key!r} for {scheme}:// URLs (known: {known})")
        after_secret = key.endswith("password")
        if key in options:
            raise ConfigError(f"option {key!r} given twice in {_redact(url)!r}")
        only = _SCHEME_ONLY.get(key)
        if only is not None and scheme != only:
            raise ConfigError(f"option {key!r} needs a {only}:// URL, not {scheme}://")
        if _IGNORED_BY.get(key) == scheme:
            raise ConfigError(f"option {key!r} does nothing for {scheme}:// URLs")
        options[key] = table[key](value)
    return options


def url_and_scheme(url: str) -> tuple[str, str]:
    """``(url, scheme)``: *url* without the spaces and line ends around it (as pasted
    from an env file; :func:`parse_url` reads it so) and its scheme, the text before
    ``://`` in lower case (``""`` without one). What each capability picks its backend
    by, and passes on: a backend registered by another distribution gets the stripped
    URL too. Not text: returned as it is, scheme ``""`` (:func:`parse_url` names the
    error).

    :raises ConfigError: the URL begins with a quote (``"redis://..."``: docker's
        ``--env-file`` and systemd's ``EnvironmentFile`` keep the quotes of
        ``KEY="value"`` in the value). Not stripped: no URL begins with one, but a
        password may end with one."""
    if not isinstance(url, str):
        return url, ""
    url = url.strip()
    if url[:1] in ('"', "'"):
        raise ConfigError(
            f"{_redact(url)!r} is in quotes: remove them (docker's --env-file and systemd's "
            "EnvironmentFile keep the quotes of KEY=\"value\" as part of the value: write KEY=value)"
        )
    scheme, sep, _ = url.partition("://")
    return url, scheme.lower() if sep else ""


def parse_url(url: str, *, kinds: tuple[str, ...] | None = None) -> BackendURL:
    """Parse and validate a backend URL.

    :param kinds: the backend kinds the caller accepts (``"redis"``, ``"s3"``,
        ``"file"``, ``"memory"``); another kind is a :class:`ConfigError`.
    """
    try:
        return _parse_url(url, kinds)
    except ConfigError:
        shown = _cut_in_userinfo(url)
        if shown is None:
            raise
        # the URL was cut at a '?' or '#' inside its password: the error would quote
        # the password's tail as a query string, an option or a host
        raise ConfigError(
            f"{shown!r} is not a valid URL: an '@' comes after a '?' or '#', which cut the URL "
            "inside the part before the '@' (in a password write '?' as %3F, '#' as %23, "
            "'/' as %2F)"
        ) from None


def _cut_in_userinfo(url: Any) -> str | None:
    """*url* with all before its last '@' hidden, when a '?' or '#' comes before that
    '@' and no '@' before them (a raw '?' or '#' in a password); else ``None``. Not
    when the '?' begins a query whose options come before the '@': that '@' is in an
    option's value (``?password=s3cr@t``, legal in a query), whose tail must not be
    shown nor its URL's own error hidden."""
    if not isinstance(url, str):
        return None
    scheme, sep, rest = url.strip().partition("://")
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    at = rest.rfind("@")
    if not sep or cut < 0 or at < cut or "@" in rest[:cut]:
        return None
    if rest[cut] == "?" and _at_in_option(scheme.lower(), rest[:cut], rest[cut + 1:at].split("&")):
        return None
    return _redact(f"{scheme}://***@{rest[at + 1:]}")


#: options whose values may hold an '@' (text, paths, URLs), and those that hold a
#: password (a raw '&' in one makes its tail a pair of its own)
_MAY_HOLD_AT = frozenset({"password", "sentinel_password", "username", "client_name", "ssl_ca_certs",
                          "ssl_certfile", "ssl_keyfile", "profile", "endpoint_url", "public_endpoint_url"})
_SECRETS = frozenset({"password", "sentinel_password"})


def _at_in_option(scheme: str, before: str, pairs: list[str]) -> bool:
    """Whether the URL's last '@', in its query after *before* (the text between
    '://' and the '?') and the query *pairs* up to that '@', reads as part of an
    option's value (``?password=s3cr@t``, or a password option's tail after a raw
    '&'), not as the end of a password cut by a raw '?': the option may hold an '@'
    and *before* is a valid host part (``:pa``, ``user:pa``, ``AK:pa`` are not)."""
    known = _OPTION_TABLES.get(scheme, {})
    *earlier, last = pairs
    key, eq, _ = last.partition("=")
    in_value = (eq and key in known and key in _MAY_HOLD_AT) or any(
        p.partition("=")[1] and p.partition("=")[0] in _SECRETS for p in earlier)
    if not in_value:
        return False
    netloc = before.partition("/")[0]
    if scheme in ("unix", "file"):
        return before.startswith("/") or netloc == "localhost"
    if scheme == "s3":
        return bool(_BUCKET_RE.match(netloc))
    try:
        _parse_hosts(netloc, 6379, "")
    except ConfigError:
        return False
    return bool(netloc)


def _parse_url(url: str, kinds: tuple[str, ...] | None) -> BackendURL:
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("backend URL is empty")
    url, scheme = url_and_scheme(url)
    if "://" not in url:
        shown = [k for k in kinds or ("redis",) if k != "memory"] or ["memory"]  # memory://: for tests
        examples = " or ".join(_EXAMPLES[k] for k in shown if k in _EXAMPLES)
        raise ConfigError(f"{_redact(url)!r} is not a URL: expected scheme://..., e.g. {examples}")
    if scheme not in SCHEMES:
        raise ConfigError(
            f"unknown URL scheme {scheme!r} in {_redact(url)!r}; known: {', '.join(sorted(SCHEMES))}"
        )
    kind = "redis" if scheme in REDIS_SCHEMES else scheme
    if kinds is not None and kind not in kinds:
        raise ConfigError(f"a {scheme}:// URL cannot be used here; expected one of: {', '.join(kinds)}")
    rest, _, query = url.split("://", 1)[1].partition("?")
    netloc, _, tail = rest.partition("/")
    path_part = "/" + tail
    if "#" in url:
        raise ConfigError(f"fragments ('#...') are not allowed in {_redact(url)!r} (in a password "
                          "write '#' as %23)")
    options = _parse_options(scheme, query, url)

    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, sep, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if sep else None
        if not sep and username is not None:  # redis://secret@host means a password
            username, password = None, username
    # a raw '/' in a password cut the URL short: say so without echoing the parts
    if (kind == "redis" and scheme != "unix" and "@" in path_part) or (scheme == "s3" and ":" in netloc):
        raise ConfigError(
            f"{_redact(url)!r} has a ':' or '@' where none belongs (write a '/' in a password as %2F)"
        )
    username = options.pop("username", username)
    password = options.pop("password", password)

    if kind == "redis":
        return _parse_redis(scheme, url, netloc, path_part, options, username, password)
    if scheme == "s3":
        if not netloc:
            raise ConfigError(f"s3 URL {_redact(url)!r} names no bucket: s3://bucket/prefix")
        check_bucket_name(netloc)
        if (username, password) != (None, None) and not (username and password):
            # botocore signed with None: a TypeError at the first request
            raise ConfigError(
                f"s3 URL {_redact(url)!r} needs both the access key and the secret "
                "(s3://KEY:SECRET@bucket, a '/' in the secret as %2F), or neither to use "
                "the environment's credentials"
            )
        prefix = unquote(path_part.strip("/"))
        if prefix and (any(seg in ("", ".", "..") for seg in prefix.split("/")) or "\\" in prefix):
            raise ConfigError(f"S3 prefix {prefix!r} has an empty, '.' or '..' segment")
        return BackendURL(scheme, url, bucket=netloc, prefix=prefix, username=username,
                          password=password, options=options)
    if scheme == "file":
        if netloc and netloc != "localhost":
            named = "a host" if "@" in url else f"host {netloc!r}"  # else a password's head, cut by a '/'
            raise ConfigError(f"file URL {_redact(url)!r} names {named}; use file:///absolute/path")
        path = unquote(path_part)
        if not path.startswith("/") or path == "/":
            raise ConfigError(f"file URL {_redact(url)!r} needs an absolute directory path other than /")
        if "\x00" in path:
            raise ConfigError("file URL path contains a NUL byte")
        return BackendURL(scheme, url, path=os.path.normpath(path), options=options)
    # memory
    name = unquote(netloc + path_part.rstrip("/"))
    return BackendURL(scheme, url, name=name.strip("/") or "default", options=options)


def _parse_redis(
    scheme: str,
    url: str,
    netloc: str,
    path_part: str,
    options: dict[str, Any],
    username: str | None,
    password: str | None,
) -> BackendURL:
    db = options.pop("db", None)
    segments = [s for s in path_part.split("/") if s]
    service = ""
    if scheme == "unix":
        if netloc:
            raise ConfigError(f"unix URL {_redact(url)!r} must be unix:///path/to/socket (three slashes)")
        path = unquote(path_part)
        if path in ("", "/"):
            raise ConfigError(f"unix URL {_redact(url)!r} names no socket path")
        return BackendURL(scheme, url, path=path, db=db or 0, username=username,
                          password=password, options=options)
    if not netloc:
        raise ConfigError(f"{scheme} URL {_redact(url)!r} names no host")
    hosts = _parse_hosts(netloc, 26379 if scheme == "redis+sentinel" else 6379, url)
    if scheme == "redis+sentinel":
        if not segments:
            raise ConfigError(
                f"sentinel URL {_redact(url)!r} names no service: redis+sentinel://h1:p1,h2:p2/service/db"
            )
        service = unquote(segments.pop(0))
    elif scheme in ("redis", "rediss") and len(hosts) > 1:
        raise ConfigError(
            f"{scheme} URL {_redact(url)!r} lists several hosts; use redis+cluster:// or redis+sentinel://"
        )
    if segments:
        if len(segments) > 1 or not _is_number(segments[0]):
            raise ConfigError(f"database {'/'.join(segments)!r} in {_redact(url)!r} is not a number")
        if int(segments[0]) > _MAX_DB:
            raise ConfigError(f"database {segments[0]!r} in {_redact(url)!r} must be between 0 and {_MAX_DB}")
        if db is not None:
            raise ConfigError(f"database given twice (path and ?db=) in {_redact(url)!r}")
        db = int(segments[0])
    if scheme == "redis+cluster" and db:
        raise ConfigError("Redis Cluster has only database 0")
    if options.get("ssl_check_hostname") and options.get("ssl_cert_reqs") == "none":
        # redis-py drops the check then: no certificate is verified at all
        raise ConfigError("option ssl_check_hostname=true checks the certificate's host name, which "
                          "ssl_cert_reqs=none does not verify: drop one of them")
    return BackendURL(scheme, url, hosts=hosts, db=db or 0, service=service,
                      username=username, password=password, options=options)


def _env_list(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


#: the capabilities a URL setting configures (entry point groups ``statekit.<capability>``)
_CAPABILITIES = {
    "redis_url": ("cache", "sessions", "broadcast"), "cache_url": ("cache",),
    "session_url": ("sessions",), "broadcast_url": ("broadcast",), "blobs_url": ("blobs",),
}


def _third_party(name: str, url: str) -> bool:
    """Whether *url*'s scheme is not built in but a backend registered by another
    distribution serves it for the setting *name* (an entry point in
    ``statekit.<capability>``, see :func:`statekit.backends.load_backend`)."""
    scheme = url_and_scheme(url)[1]
    if not scheme or scheme in SCHEMES:
        return False
    from .backends import _entry_points

    return any(ep.name == scheme for cap in _CAPABILITIES[name] for ep in _entry_points(cap))


@dataclass(frozen=True)
class Settings:
    """statekit's settings, most often read from the environment.

    ===========================  =====================================================
    ``STATEKIT_REDIS_URL``       Redis for cache, sessions and broadcast
    ``STATEKIT_CACHE_URL``       cache backend (defaults to ``STATEKIT_REDIS_URL``)
    ``STATEKIT_SESSION_URL``     session backend (defaults to ``STATEKIT_REDIS_URL``)
    ``STATEKIT_BROADCAST_URL``   broadcast backend (defaults to ``STATEKIT_REDIS_URL``)
    ``STATEKIT_BLOBS_URL``       ``s3://``, ``file://`` or ``memory://`` blob store
    ``STATEKIT_SECRET_KEYS``     comma-separated signing keys, newest first
    ``STATEKIT_KEY_PREFIX``      prefix of every Redis key statekit writes
    ===========================  =====================================================
    """

    redis_url: str | None = None
    cache_url: str | None = None
    session_url: str | None = None
    broadcast_url: str | None = None
    blobs_url: str | None = None
    secret_keys: tuple[str, ...] = ()
    key_prefix: str = "statekit"

    def __repr__(self) -> str:  # never the passwords in the URLs, nor the keys
        parts = (f"{f.name}={_redact(v) if f.name.endswith('_url') else v!r}" for f in fields(self)
                 if (v := getattr(self, f.name)) is not None and f.name != "secret_keys")
        return f"Settings({', '.join(parts)}, secret_keys=<{len(self.secret_keys)} keys>)"

    def __post_init__(self) -> None:
        for name in ("redis_url", "cache_url", "session_url", "broadcast_url", "blobs_url"):
            value = getattr(self, name)
            if isinstance(value, str) and value != value.strip():
                # as parse_url reads it: the backends pick theirs by the text's scheme
                value = value.strip()
                object.__setattr__(self, name, value)
            if value is not None:
                kinds = ("s3", "file", "memory") if name == "blobs_url" else ("redis", "memory")
                try:
                    if _third_party(name, value):  # a quoted URL: a ConfigError naming the setting
                        continue  # its backend's own from_url checks it
                    parse_url(value, kinds=kinds)
                except ConfigError as e:  # say which setting, not only what is wrong
                    where = f"STATEKIT_{name.upper()}"
                    if name != "redis_url" and value == self.redis_url:  # from_env's default
                        where += " or STATEKIT_REDIS_URL, its default"
                    raise ConfigError(f"{name} ({where}): {e}") from None
        if not re.fullmatch(r"[A-Za-z0-9_.:\-]{1,64}", self.key_prefix):
            raise ConfigError(
                f"key_prefix (STATEKIT_KEY_PREFIX): key prefix {self.key_prefix!r} must be 1-64 "
                "chars of letters, digits, _ . : -"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``STATEKIT_*`` variables; unset ones keep their defaults."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:  # an env file's spaces and line ends are not the value
            return (env.get(f"STATEKIT_{name}") or "").strip() or None

        redis_url = get("REDIS_URL")
        return cls(
            redis_url=redis_url,
            cache_url=get("CACHE_URL") or redis_url,
            session_url=get("SESSION_URL") or redis_url,
            broadcast_url=get("BROADCAST_URL") or redis_url,
            blobs_url=get("BLOBS_URL"),
            secret_keys=_env_list(get("SECRET_KEYS")),
            key_prefix=get("KEY_PREFIX") or "statekit",
        )

    def require(self, name: str) -> str:
        """Return the setting *name* or raise a :class:`ConfigError` naming the
        environment variable that sets it."""
        value = getattr(self, name)
        if not value:
            raise ConfigError(f"{name} is not configured: set STATEKIT_{name.upper()}")
        return str(value)
