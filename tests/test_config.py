"""statekit.config: every URL form parses, every bad form is a ConfigError naming
what is wrong, settings come from the environment."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statekit.config import BackendURL, Settings, parse_size, parse_url
from statekit.errors import ConfigError

# -- good URLs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost", dict(scheme="redis", hosts=(("localhost", 6379),), db=0)),
        ("redis://127.0.0.1:6380/2", dict(hosts=(("127.0.0.1", 6380),), db=2)),
        ("REDIS://h", dict(scheme="redis", hosts=(("h", 6379),))),
        ("redis://h?db=5", dict(db=5, options={})),
        ("redis://[::1]:6390/1", dict(hosts=(("::1", 6390),), db=1)),
        ("redis://[::1]", dict(hosts=(("::1", 6379),))),
        ("redis://:s3cret@h/0", dict(username=None, password="s3cret")),
        ("redis://secret@h", dict(username=None, password="secret")),
        ("redis://alice:p%40ss@h", dict(username="alice", password="p@ss")),
        ("redis://h?username=bob&password=pw", dict(username="bob", password="pw", options={})),
        (
            "redis://h?socket_timeout=0.5&socket_connect_timeout=0.25&max_connections=50"
            "&retries=3&retry_backoff_cap=1.5&health_check_interval=10&client_name=web&protocol=3",
            dict(options=dict(socket_timeout=0.5, socket_connect_timeout=0.25, max_connections=50,
                              retries=3, retry_backoff_cap=1.5, health_check_interval=10,
                              client_name="web", protocol=3)),
        ),
        ("rediss://h:6380/1", dict(scheme="rediss", hosts=(("h", 6380),), db=1)),
        (
            "rediss://h?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
            "&ssl_certfile=/etc/c.pem&ssl_keyfile=/etc/k.pem",
            dict(options=dict(ssl_cert_reqs="required", ssl_ca_certs="/etc/ca.pem",
                              ssl_certfile="/etc/c.pem", ssl_keyfile="/etc/k.pem")),
        ),
        ("rediss://h?ssl_cert_reqs=none", dict(options=dict(ssl_cert_reqs="none"))),
        ("unix:///run/redis/redis.sock", dict(scheme="unix", path="/run/redis/redis.sock", db=0)),
        ("unix:///run/redis.sock?db=3", dict(path="/run/redis.sock", db=3)),
        ("unix://:pw@/run/redis.sock", dict(path="/run/redis.sock", password="pw")),
        (
            "redis+sentinel://h1:26379,h2:26380/mymaster/4",
            dict(scheme="redis+sentinel", hosts=(("h1", 26379), ("h2", 26380)), service="mymaster", db=4),
        ),
        ("redis+sentinel://h1/svc", dict(hosts=(("h1", 26379),), service="svc", db=0)),
        (
            "redis+sentinel://:pw@h1:1,h2:2/svc?sentinel_password=spw",
            dict(password="pw", options=dict(sentinel_password="spw")),
        ),
        (
            "redis+cluster://h1:7000,h2:7001,h3:7002",
            dict(scheme="redis+cluster", hosts=(("h1", 7000), ("h2", 7001), ("h3", 7002)), db=0),
        ),
        ("redis+cluster://h1", dict(hosts=(("h1", 6379),))),
        ("redis+cluster://h1:7000/0", dict(db=0)),
        ("memory://", dict(scheme="memory", name="default")),
        ("memory://sessions", dict(name="sessions")),
        ("memory://a/b", dict(name="a/b")),
        (
            "s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000&region=eu-west-1",
            dict(scheme="s3", bucket="bucket", prefix="prefix",
                 options=dict(endpoint_url="http://127.0.0.1:9000", region="eu-west-1")),
        ),
        ("s3://my.bucket-1/a/b/c/", dict(bucket="my.bucket-1", prefix="a/b/c")),
        ("s3://bucket", dict(bucket="bucket", prefix="")),
        (
            "s3://AKIAKEY:sec%2Fret@bucket/up?endpoint_url=https://s3.example.com",
            dict(username="AKIAKEY", password="sec/ret", bucket="bucket", prefix="up"),
        ),
        (
            "s3://bucket?addressing_style=path&connect_timeout=2&read_timeout=30&retries=4"
            "&multipart_threshold=8MiB&part_size=5MB&max_concurrency=4&profile=p"
            "&checksum=sha256&conditional_writes=false",
            dict(options=dict(addressing_style="path", connect_timeout=2.0, read_timeout=30.0,
                              retries=4, multipart_threshold=8 * 1024**2, part_size=5_000_000,
                              max_concurrency=4, profile="p", checksum="sha256",
                              conditional_writes=False)),
        ),
        ("file:///srv/uploads", dict(scheme="file", path="/srv/uploads")),
        ("file:///srv/uploads/", dict(path="/srv/uploads")),
        ("file://localhost/srv/x", dict(path="/srv/x")),
        (
            "file:///srv/a%20b?fsync=yes&file_mode=0640",
            dict(path="/srv/a b", options=dict(fsync=True, file_mode=0o640)),
        ),
    ],
)
def test_parse_good_url(url: str, expected: dict[str, Any]) -> None:
    parsed = parse_url(url)
    assert isinstance(parsed, BackendURL)
    for attr, value in expected.items():
        got = dict(parsed.options) if attr == "options" else getattr(parsed, attr)
        assert got == value, attr


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://h", "redis"), ("rediss://h", "redis"), ("unix:///s", "redis"),
        ("redis+sentinel://h/s", "redis"), ("redis+cluster://h", "redis"),
        ("memory://", "memory"), ("s3://bucket", "s3"), ("file:///d", "file"),
    ],
)
def test_kind(url: str, kind: str) -> None:
    assert parse_url(url).kind == kind


def test_password_is_redacted() -> None:
    parsed = parse_url("redis://alice:hunter2@h:6379/0")
    assert "hunter2" not in repr(parsed)
    assert parsed.redacted() == "redis://alice:***@h:6379/0"
    with pytest.raises(ConfigError) as e:
        parse_url("redis://alice:hunter2@h:6379/x")
    assert "hunter2" not in str(e.value)


@pytest.mark.parametrize(
    "url",
    [
        "unix://:hunter2@host/sock", "unix://:hunter2@", "file://u:hunter2@/",
        "redis://h?password=hunter2&db=1&db=2", "redis://h?sentinel_password=hunter2&x",
        "redis://:hunter2@h/x", "redis+sentinel://:hunter2@h", "rediss://u:hunter2@h1,h2",
        "s3://key:hunter2@Bad", "redis://u:hunter2@h?bogus=1", "redis://:hunter2@h#frag",
    ],
)
def test_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_url(url)
    assert "hunter2" not in str(e.value)


def test_redacted_hides_query_passwords() -> None:
    parsed = parse_url("redis+sentinel://:pw1@h/svc?sentinel_password=pw2&password=pw3&db=1")
    text = parsed.redacted()
    assert not any(p in text for p in ("pw1", "pw2", "pw3"))
    assert parsed.password == "pw3"  # the query option wins over the userinfo


def test_kinds_restricts_the_backend() -> None:
    assert parse_url("s3://bucket", kinds=("s3", "file")).bucket == "bucket"
    with pytest.raises(ConfigError, match=r"redis:// URL cannot be used here; expected one of: s3, file"):
        parse_url("redis://h", kinds=("s3", "file"))


# -- bad URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", r"backend URL is empty"),
        ("   ", r"backend URL is empty"),
        ("localhost:6379", r"is not a URL: expected scheme://"),
        ("file:relative/dir", r"is not a URL"),
        ("ftp://h", r"unknown URL scheme 'ftp'.*known: file, memory, redis"),
        ("http://h", r"unknown URL scheme 'http'"),
        ("redis://", r"names no host"),
        ("redis://h:0", r"port '0' of host 'h' is not a port number"),
        ("redis://h:65536", r"port '65536' of host 'h'"),
        ("redis://h:-1", r"port '-1'"),
        ("redis://h:abc", r"port 'abc'"),
        ("redis://h:²", r"port '²'"),
        ("redis://h:1:2", r"port '1:2'"),
        ("redis://:6379", r"empty host"),
        ("redis://[::1", r"unclosed IPv6 bracket"),
        ("redis://[::1]x", r"bad host"),
        ("redis://h/x", r"database 'x' .* is not a number"),
        ("redis://h/1/2", r"database '1/2'"),
        ("redis://h/²", r"database '²'"),
        ("redis://h/99999999999", r"database '99999999999' .* must be between 0 and"),
        ("redis://h/1?db=2", r"database given twice"),
        ("redis://h?db=x", r"option db='x' is not a whole number"),
        ("redis://h?db=-1", r"option db='-1' must be between 0 and"),
        ("redis://h1:1,h2:2", r"lists several hosts; use redis\+cluster:// or redis\+sentinel://"),
        ("rediss://h1,h2", r"lists several hosts"),
        ("redis://h1,", r"empty host"),
        ("redis+sentinel://h1:26379,h2:26380", r"names no service"),
        ("redis+sentinel://h1/svc/x", r"database 'x'"),
        ("redis+cluster://h1:7000/1", r"Redis Cluster has only database 0"),
        ("redis://h?bogus=1", r"unknown option 'bogus' for redis:// URLs \(known: client_name"),
        ("redis://h?ssl=true", r"unknown option 'ssl'"),
        ("redis://h?socket_timeout=abc", r"option socket_timeout='abc' is not a number"),
        ("redis://h?socket_timeout=0", r"socket_timeout='0' must be a positive number"),
        ("redis://h?socket_timeout=-1", r"socket_timeout='-1' must be a positive number"),
        ("redis://h?socket_timeout=nan", r"socket_timeout='nan' must be a positive number"),
        ("redis://h?socket_timeout=inf", r"socket_timeout='inf' must be a positive number"),
        ("redis://h?socket_connect_timeout=", r"socket_connect_timeout='' is not a number"),
        ("redis://h?max_connections=0", r"max_connections='0' must be between 1 and"),
        ("redis://h?retries=101", r"retries='101' must be between 0 and 100"),
        ("redis://h?protocol=4", r"option protocol='4' must be one of 2, 3"),
        ("redis://h?client_name=", r"option client_name is empty"),
        ("redis://h?db=1&db=2", r"option 'db' given twice"),
        ("redis://h?socket_timeout", r"malformed query string 'socket_timeout'"),
        ("redis://h?ssl_cert_reqs=none", r"option 'ssl_cert_reqs' needs a rediss:// URL, not redis://"),
        ("redis://h?ssl_ca_certs=/ca.pem", r"option 'ssl_ca_certs' needs a rediss:// URL"),
        ("unix:///s.sock?ssl_certfile=/c", r"'ssl_certfile' needs a rediss:// URL, not unix://"),
        ("redis+cluster://h?ssl_keyfile=/k", r"'ssl_keyfile' needs a rediss:// URL"),
        ("rediss://h?ssl_cert_reqs=maybe", r"ssl_cert_reqs='maybe' must be one of none, optional, required"),
        ("redis://h#frag", r"fragments \('#...'\) are not allowed"),
        ("s3://bucket#x", r"fragments"),
        ("unix://host/run/redis.sock", r"must be unix:///path/to/socket \(three slashes\)"),
        ("unix:///", r"names no socket path"),
        ("s3://", r"names no bucket"),
        ("s3:///prefix", r"names no bucket"),
        ("s3://ab", r"'ab' is not a valid S3 bucket name"),
        ("s3://Bucket", r"'Bucket' is not a valid S3 bucket name"),
        ("s3://bucket_x", r"'bucket_x' is not a valid S3 bucket name"),
        ("s3://-bucket", r"not a valid S3 bucket name"),
        ("s3://my..bucket", r"'my..bucket' is not a valid S3 bucket name"),
        ("s3://" + "b" * 64, r"is not a valid S3 bucket name"),
        ("s3://bucket/../x", r"S3 prefix '../x' has an empty, '.' or '..' segment"),
        ("s3://bucket/a/../b", r"S3 prefix 'a/../b'"),
        ("s3://bucket/%2e%2e/x", r"S3 prefix '../x'"),
        ("s3://bucket/a//b", r"S3 prefix 'a//b'"),
        ("s3://bucket/./b", r"S3 prefix './b'"),
        ("s3://bucket/a\\b", r"S3 prefix"),
        ("s3://bucket?endpoint_url=ftp://h", r"endpoint_url='ftp://h' must be an http\(s\):// URL"),
        ("s3://bucket?endpoint_url=localhost:9000", r"endpoint_url='localhost:9000' must be an http"),
        ("s3://bucket?endpoint_url=http://[::1", r"endpoint_url='http://\[::1' must be an http"),
        ("s3://bucket?endpoint_url=http://h:99999", r"endpoint_url='http://h:99999' must be an http"),
        ("s3://bucket?region=", r"option region is empty"),
        ("s3://bucket?bogus=1", r"unknown option 'bogus' for s3:// URLs \(known: addressing_style"),
        ("s3://bucket?addressing_style=odd", r"addressing_style='odd' must be one of auto, path, virtual"),
        ("s3://bucket?part_size=lots", r"option part_size='lots' is not a size"),
        ("s3://bucket?max_concurrency=65", r"max_concurrency='65' must be between 1 and 64"),
        ("s3://bucket?conditional_writes=perhaps", r"conditional_writes='perhaps' must be true or false"),
        ("s3://bucket?db=1", r"unknown option 'db' for s3:// URLs"),
        ("file://rel/path", r"names host 'rel'; use file:///absolute/path"),
        ("file://", r"needs an absolute directory path other than /"),
        ("file:///", r"needs an absolute directory path other than /"),
        ("file:///a%00b", r"NUL byte"),
        ("file:///d?fsync=maybe", r"option fsync='maybe' must be true or false"),
        ("file:///d?file_mode=999", r"option file_mode='999' must be an octal mode"),
        ("file:///d?mode=0640", r"unknown option 'mode' for file:// URLs"),
        ("memory://x?size=1", r"unknown option 'size' for memory:// URLs \(known: none\)"),
    ],
)
def test_bad_url_names_the_problem(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_url(url)


def test_config_error_is_a_value_error() -> None:
    # callers that validate with `except ValueError` keep working
    with pytest.raises(ValueError):
        parse_url("nope://")


@pytest.mark.parametrize("value", [None, 42, b"redis://h"])
def test_non_string_url_is_a_config_error(value: Any) -> None:
    with pytest.raises(ConfigError):
        parse_url(value)


_PREFIXES = st.sampled_from(
    ["", "redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://",
     "memory://", "s3://", "file://", "s3://bucket/", "redis://h:", "redis://h/", "redis://h?"]
)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(prefix=_PREFIXES, rest=st.text())
def test_parse_url_raises_only_config_error(prefix: str, rest: str) -> None:
    try:
        parsed = parse_url(prefix + rest)
    except ConfigError as e:
        assert str(e)
    else:
        assert parsed.scheme in ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster",
                                 "memory", "s3", "file")


_query_pairs = st.lists(
    st.tuples(
        st.sampled_from(["db", "socket_timeout", "retries", "protocol", "ssl_cert_reqs", "endpoint_url",
                         "region", "part_size", "fsync", "file_mode", "x"]),
        st.text(alphabet="0123456789.-abcdefhnorstu:/[]%", max_size=12),
    ),
    max_size=4,
)


@settings(max_examples=800, deadline=None)
@given(scheme=st.sampled_from(["redis", "rediss", "s3", "file", "memory"]), pairs=_query_pairs)
def test_options_raise_only_config_error(scheme: str, pairs: list[tuple[str, str]]) -> None:
    base = {"redis": "redis://h", "rediss": "rediss://h", "s3": "s3://bucket",
            "file": "file:///d", "memory": "memory://m"}[scheme]
    query = "&".join(f"{k}={v}" for k, v in pairs)
    try:
        parse_url(f"{base}?{query}" if query else base)
    except ConfigError as e:
        assert str(e)


# -- sizes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1048576", 1048576), ("10MiB", 10 * 1024**2), ("5 MB", 5_000_000), ("1k", 1000),
     ("2KiB", 2048), ("1.5G", 1_500_000_000), ("7", 7), (3, 3), (0, 0), ("1tb", 10**12)],
)
def test_parse_size(raw: str | int, expected: int) -> None:
    assert parse_size(raw) == expected


@pytest.mark.parametrize("raw", ["", "ten", "5 parsecs", "-1", -1, "1.2.3MB", "MB"])
def test_parse_size_bad(raw: str | int) -> None:
    with pytest.raises(ConfigError, match="max_size"):
        parse_size(raw, name="max_size")


# -- settings -------------------------------------------------------------------------


def test_settings_from_env_defaults_to_redis_url() -> None:
    s = Settings.from_env({
        "STATEKIT_REDIS_URL": "redis://r:6379/0",
        "STATEKIT_BLOBS_URL": "s3://bucket/up",
        "STATEKIT_SECRET_KEYS": " new , old,,",
        "STATEKIT_KEY_PREFIX": "app1",
    })
    assert s.redis_url == s.cache_url == s.session_url == s.broadcast_url == "redis://r:6379/0"
    assert s.blobs_url == "s3://bucket/up"
    assert s.secret_keys == ("new", "old")
    assert s.key_prefix == "app1"


def test_settings_from_env_specific_urls_win() -> None:
    s = Settings.from_env({
        "STATEKIT_REDIS_URL": "redis://r",
        "STATEKIT_CACHE_URL": "memory://c",
        "STATEKIT_SESSION_URL": "redis+sentinel://s1,s2/svc",
        "STATEKIT_BROADCAST_URL": "redis+cluster://c1,c2",
    })
    assert (s.cache_url, s.session_url, s.broadcast_url) == (
        "memory://c", "redis+sentinel://s1,s2/svc", "redis+cluster://c1,c2")


def test_settings_from_env_empty() -> None:
    s = Settings.from_env({"STATEKIT_REDIS_URL": "", "STATEKIT_KEY_PREFIX": ""})
    assert s == Settings()
    assert s.key_prefix == "statekit"
    with pytest.raises(ConfigError, match="redis_url is not configured: set STATEKIT_REDIS_URL"):
        s.require("redis_url")


def test_settings_from_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATEKIT_REDIS_URL", "redis://from-env:6390/1")
    monkeypatch.delenv("STATEKIT_CACHE_URL", raising=False)
    s = Settings.from_env()
    assert s.cache_url == "redis://from-env:6390/1"
    assert s.require("cache_url") == "redis://from-env:6390/1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STATEKIT_REDIS_URL": "redis://h:99999"}, r"port '99999'"),
        ({"STATEKIT_REDIS_URL": "s3://bucket"}, r"s3:// URL cannot be used here"),
        ({"STATEKIT_CACHE_URL": "file:///tmp/x"}, r"file:// URL cannot be used here"),
        (
            {"STATEKIT_BLOBS_URL": "redis://h"},
            r"redis:// URL cannot be used here; expected one of: s3, file, memory",
        ),
        ({"STATEKIT_BLOBS_URL": "s3://Bad_Bucket"}, r"not a valid S3 bucket name"),
        ({"STATEKIT_KEY_PREFIX": "has space"}, r"key prefix 'has space' must be"),
        ({"STATEKIT_KEY_PREFIX": "x" * 65}, r"key prefix"),
    ],
)
def test_settings_from_env_validates(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_settings_error_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"^session_url \(STATEKIT_SESSION_URL\): port '0'"):
        Settings.from_env({"STATEKIT_REDIS_URL": "redis://h", "STATEKIT_SESSION_URL": "redis://h:0"})
    with pytest.raises(ConfigError, match=r"^blobs_url \(STATEKIT_BLOBS_URL\): unknown URL scheme"):
        Settings(blobs_url="ftp://x")


def test_settings_from_code() -> None:
    s = Settings(redis_url="redis://h", blobs_url="file:///srv/up", secret_keys=("k",))
    assert s.require("blobs_url") == "file:///srv/up"
    assert s.cache_url is None  # from code, nothing is defaulted behind your back


@pytest.mark.parametrize(
    "url",
    [
        "redis://hunter2@h:6379/x",  # a bare userinfo is the password
        "redis://:hun@ter2@h/x",  # an unencoded '@' in the password
        "redis://u:hun@ter2@h/x",
        "redis://:hun/ter2@h:6379/0",  # an unencoded '/' cuts the URL inside the password
        "redis://u:hun/ter2@h/0",
        "redis+sentinel://:hun/ter2@h1,h2/svc",
        "s3://AKIA:hun/ter2@bucket",
        "s3://AKIA:hunter2@bucket/pre/../x",
    ],
)
def test_odd_passwords_never_show_in_errors(url: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_url(url)
    assert "hun" not in str(e.value)
    assert "ter2" not in str(e.value)


def test_odd_passwords_are_redacted() -> None:
    assert parse_url("redis://hunter2@h/0").redacted() == "redis://***@h/0"
    parsed = parse_url("redis://u:hun@ter2@h/0")
    assert parsed.password == "hun@ter2"
    assert parsed.redacted() == "redis://u:***@h/0"
    # a path with '@' in a file:// URL or an S3 prefix is not a password
    assert parse_url("file:///srv/a@b").redacted() == "file:///srv/a@b"
    assert parse_url("s3://bucket/user@example.com").redacted() == "s3://bucket/user@example.com"


def test_repr_never_shows_secrets() -> None:
    settings = Settings(
        redis_url="redis://:hunter2@h/0",
        blobs_url="s3://key:hunter3@bucket",
        secret_keys=("hunter4",),
    )
    text = repr(settings)
    assert not any(s in text for s in ("hunter2", "hunter3", "hunter4"))
    assert "redis://:***@h/0" in text
    parsed = parse_url("redis+sentinel://h/svc?sentinel_password=hunter5&db=1")
    assert parsed.options["sentinel_password"] == "hunter5"
    assert "hunter5" not in repr(parsed)
    assert "service='svc'" in repr(parsed)


@pytest.fixture
def toy_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    """``toy://`` registered for sessions only, as another distribution would."""
    from importlib.metadata import EntryPoint

    import statekit.backends as backends

    ep = EntryPoint(name="toy", value="toy_sessions:Engine", group="statekit.sessions")
    monkeypatch.setattr(backends, "_entry_points", lambda cap: [ep] if cap == "sessions" else [])


def test_a_registered_third_party_scheme_is_accepted_for_its_capability_only(toy_sessions: None) -> None:
    assert Settings(session_url="toy://somewhere").session_url == "toy://somewhere"
    for name in ("cache_url", "broadcast_url", "blobs_url"):
        with pytest.raises(ConfigError, match=f"STATEKIT_{name.upper()}.*unknown URL scheme 'toy'"):
            Settings(**{name: "toy://somewhere"})
    with pytest.raises(ConfigError, match="unknown URL scheme 'nosuch'"):
        Settings(session_url="nosuch://x")


def test_a_registered_scheme_never_relaxes_a_builtin_ones_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    import statekit.backends as backends

    ep = EntryPoint(name="redis", value="takeover:Engine", group="statekit.sessions")
    monkeypatch.setattr(backends, "_entry_points", lambda cap: [ep])
    with pytest.raises(ConfigError, match="STATEKIT_SESSION_URL"):
        Settings(session_url="redis://host:notaport")


def test_redis_url_naming_a_sessions_only_scheme_says_which_variable(
    toy_sessions: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STATEKIT_REDIS_URL feeds the cache too: a scheme only a session engine serves
    is refused, and the message names the variable that was set."""
    with pytest.raises(ConfigError, match="STATEKIT_REDIS_URL"):
        Settings.from_env({"STATEKIT_REDIS_URL": "toy://somewhere"})
    settings = Settings.from_env({"STATEKIT_REDIS_URL": "redis://h", "STATEKIT_SESSION_URL": "toy://x"})
    assert settings.session_url == "toy://x" and settings.cache_url == "redis://h"
