"""Configuration reviewed as a hostile user would write it (review 14): URLs pasted
from a provider's console or an env file, each bad one a ConfigError at startup that
names the setting and never echoes a password; each good one works on a real server."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from statekit.cache import Cache
from statekit.config import Settings, parse_url
from statekit.errors import ConfigError
from statekit.redis import create_client

# -- a raw '?' or '#' in a password ---------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://:pa55?w0rd@h:6379/0",
        "redis://alice:pa55?w0rd@h/0",
        "rediss://default:pa55?w0rd@h:6380",
        "redis://:pa55?w0rd=x@h",  # the rest of the password reads as an option
        "redis+sentinel://:pa55?w0rd@h1,h2/svc",
        "unix://:pa55?w0rd@/run/redis.sock",
        "s3://AKIA:pa55?w0rd@bucket/up",
        "redis://:pa55#w0rd@h/0",
    ],
)
def test_a_raw_question_mark_or_hash_in_a_password_is_never_echoed(url: str) -> None:
    """The URL is cut at the first '?' (or '#'), so the password's tail landed in the
    query: the error quoted it ('malformed query string 'w0rd@h...''). It says how to
    write the character now, and shows no part of the password."""
    with pytest.raises(ConfigError) as e:
        parse_url(url)
    text = str(e.value)
    assert "pa55" not in text and "w0rd" not in text
    assert "%3F" in text and "%23" in text


def test_the_same_passwords_percent_encoded_work_on_a_real_server(redis_url: str) -> None:
    """The form the error asks for: the server's password set to 'pa55?w0rd#1', the URL
    with %3F and %23 authenticates (a wrong one is refused, so AUTH really ran)."""
    admin = create_client(redis_url)
    admin.config_set("requirepass", "pa55?w0rd#1")
    try:
        host = redis_url.split("://", 1)[1]
        client = create_client(f"redis://:pa55%3Fw0rd%231@{host}")
        client.set("k", b"v")
        assert client.get("k") == b"v"
        client.close()
    finally:
        fresh = create_client(f"redis://:pa55%3Fw0rd%231@{redis_url.split('://', 1)[1]}")
        fresh.config_set("requirepass", "")
        fresh.close()
        admin.close()


def test_an_at_sign_in_an_option_value_is_not_taken_for_a_password() -> None:
    parsed = parse_url("redis://h?client_name=me@work")
    assert parsed.options["client_name"] == "me@work" and parsed.password is None
    with pytest.raises(ConfigError, match=r"port 'x' of host 'h'"):  # its own error, as before
        parse_url("redis://h:x/0")


# -- values that parsed but failed at the first request --------------------------------


@pytest.mark.parametrize("option", ["socket_timeout", "socket_connect_timeout", "retry_backoff_cap"])
def test_a_huge_timeout_is_refused_at_startup(redis_url: str, option: str) -> None:
    """socket_timeout=1e300 parsed and then raised OverflowError ('timestamp out of
    range for platform time_t') from inside redis-py at the first command."""
    with pytest.raises(ConfigError, match=rf"option {option}='1e300' must be .* at most 86400"):
        create_client(f"{redis_url}?{option}=1e300")


@pytest.mark.parametrize("option", ["connect_timeout", "read_timeout"])
def test_a_huge_s3_timeout_is_refused(option: str) -> None:
    with pytest.raises(ConfigError, match=rf"option {option}='1e300' must be .* at most 86400"):
        parse_url(f"s3://bucket?{option}=1e300")


def test_the_largest_timeout_allowed_works_on_a_real_server(redis_url: str) -> None:
    client = create_client(f"{redis_url}?socket_timeout=86400&socket_connect_timeout=86400"
                           "&retry_backoff_cap=86400")
    client.set("k", b"v")
    assert client.get("k") == b"v"
    client.close()


@pytest.mark.parametrize("name", ["my%20app", "a+b", "tab%09", "caf%C3%A9", "new%0Aline"])
def test_a_client_name_redis_refuses_is_a_config_error(redis_url: str, name: str) -> None:
    """Redis refuses CLIENT SETNAME with a space, a control or a non-ASCII character:
    the first command raised redis-py's ResponseError ('Client names cannot contain
    spaces, newlines or special characters.'), every request after it too."""
    with pytest.raises(ConfigError, match=r"option client_name=.* must be printable ASCII without spaces"):
        create_client(f"{redis_url}?client_name={name}")


def test_a_client_name_redis_accepts_is_set(redis_url: str) -> None:
    client = create_client(f"{redis_url}?client_name=web-1:pod/a@b")
    assert client.client_getname() == "web-1:pod/a@b"
    client.close()


# -- settings from an env file ----------------------------------------------------------


def test_urls_from_an_env_file_with_spaces_and_newlines_work(redis_url: str, tmp_path: Path) -> None:
    """Settings accepted ' redis://...\\n' (validated stripped) but kept it as given:
    Cache(settings.cache_url) then said 'no cache backend for  redis:// URLs'."""
    settings = Settings.from_env({
        "STATEKIT_REDIS_URL": f"  {redis_url}\r\n",
        "STATEKIT_BLOBS_URL": f"\tfile://{tmp_path}\n",
        "STATEKIT_KEY_PREFIX": " app1\n",
    })
    assert settings.cache_url == redis_url and settings.blobs_url == f"file://{tmp_path}"
    assert settings.key_prefix == "app1"
    cache = Cache(settings.cache_url)
    cache.set("k", "v")
    assert cache.get("k") == "v"
    from statekit.blobs import BlobStore

    store = BlobStore(settings.blobs_url)
    blob = store.put(io.BytesIO(b"hello"), filename="a.txt")
    with store.open(blob.key) as f:
        assert f.read() == b"hello"


def test_a_url_given_in_code_with_spaces_is_kept_as_parse_url_reads_it(redis_url: str) -> None:
    """The adapters build Settings(...) from their frameworks' settings."""
    settings = Settings(redis_url=f" {redis_url}\n", cache_url=f"{redis_url}\n")
    assert (settings.redis_url, settings.cache_url) == (redis_url, redis_url)
    Cache(settings.cache_url).set("k", 1)


def test_a_bad_key_prefix_names_its_variable() -> None:
    with pytest.raises(ConfigError, match=r"^key_prefix \(STATEKIT_KEY_PREFIX\): key prefix 'has space'"):
        Settings.from_env({"STATEKIT_KEY_PREFIX": "has space"})


# -- options that do nothing for their scheme ---------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h?sentinel_password=hunter2", r"'sentinel_password' needs a redis\+sentinel:// URL, not redis://"),
        ("rediss://h?sentinel_password=hunter2", r"'sentinel_password' needs a redis\+sentinel:// URL"),
        ("redis+cluster://h1,h2?sentinel_password=hunter2", r"'sentinel_password' needs a redis\+sentinel://"),
        ("unix:///s.sock?sentinel_password=hunter2", r"'sentinel_password' needs a redis\+sentinel://"),
        ("redis+cluster://h1,h2?health_check_interval=10",
         r"'health_check_interval' does nothing for redis\+cluster:// URLs"),
    ],
)
def test_an_option_its_scheme_ignores_is_refused(url: str, message: str) -> None:
    """The client dropped them without a word (create_client popped sentinel_password
    for every other scheme, health_check_interval for Cluster: redis-py's cluster
    client has no health checks), as ssl_* on redis:// is refused already."""
    with pytest.raises(ConfigError, match=message) as e:
        parse_url(url)
    assert "hunter2" not in str(e.value)


def test_the_options_keep_working_where_they_apply() -> None:
    assert parse_url("redis+sentinel://h/svc?sentinel_password=spw").options["sentinel_password"] == "spw"
    assert parse_url("redis://h?health_check_interval=10").options["health_check_interval"] == 10
    assert parse_url("rediss://h?health_check_interval=0").options["health_check_interval"] == 0


# -- TLS files ----------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["ssl_ca_certs", "ssl_certfile", "ssl_keyfile"])
def test_a_missing_tls_file_is_a_config_error_when_the_client_is_made(
    redis_server: object, tmp_path: Path, option: str
) -> None:
    """A CA file that is not there was found at every command, as an outage:
    BackendUnavailable 'Error 2 connecting to 127.0.0.1:port. No such file or
    directory.', naming neither the option nor the file."""
    from statekit.redis.aio import create_async_client

    port = redis_server.port  # type: ignore[attr-defined]
    missing = tmp_path / "missing.pem"
    url = f"rediss://127.0.0.1:{port}/0?{option}={missing}"
    for create in (create_client, create_async_client):
        with pytest.raises(ConfigError, match=rf"option {option}='{missing}': no such file"):
            create(url)
    with pytest.raises(ConfigError, match=rf"option {option}='{tmp_path}': no such file"):
        create_client(f"rediss://127.0.0.1:{port}/0?{option}={tmp_path}")  # a directory


def test_a_rediss_url_with_its_ca_file_works_through_tls(redis_server: object, tmp_path: Path) -> None:
    """The real thing: a TLS proxy with a self-signed certificate in front of the
    server, the URL naming its CA file (and ssl_cert_reqs=required)."""
    from test_redis_helpers import tls_url

    with tls_url(redis_server, tmp_path, "ssl_cert_reqs=required") as url:  # type: ignore[arg-type]
        client = create_client(url)
        client.set("k", b"v")
        assert client.get("k") == b"v"
        client.close()


# -- s3:// credentials and region ---------------------------------------------------------


def _s3_variant(s3_url: str, userinfo: str | None = None, query: str = "") -> str:
    """*s3_url* (moto's endpoint, a fresh bucket) with other credentials or options."""
    head, _, opts = s3_url.partition("?")
    if userinfo is not None:
        head = "s3://" + userinfo + head.rpartition("@")[2]
    return f"{head}?{opts}{query}"


@pytest.mark.parametrize("userinfo", ["ONLYKEY@", ":hunter2@", "AKIAKEY:@", ":@"])
def test_half_of_the_s3_credentials_is_a_config_error(s3_url: str, userinfo: str) -> None:
    """A key without its secret (or a secret without its key) made the store, then its
    first put raised TypeError ('sequence item 0: expected str instance, NoneType
    found') from inside botocore; an empty secret was sent as is."""
    from statekit.blobs import BlobStore

    with pytest.raises(ConfigError, match=r"both the access key and the secret") as e:
        BlobStore(_s3_variant(s3_url, userinfo))
    assert "hunter2" not in str(e.value)


def test_s3_credentials_in_the_url_work_on_moto(s3_url: str) -> None:
    from statekit.blobs import BlobStore

    store = BlobStore(s3_url)  # the fixture's URL carries its key:secret
    assert "@" in s3_url
    blob = store.put(io.BytesIO(b"x"), filename="a.txt")
    with store.open(blob.key) as f:
        assert f.read() == b"x"


@pytest.mark.parametrize("region", ["eu%20west", "-eu-west-1", "eu_west_1", "1234", "a" * 64])
def test_a_region_botocore_refuses_is_a_config_error(s3_url: str, region: str) -> None:
    """BlobStore raised botocore's InvalidRegionError ('Provided region_name 'eu west'
    doesn't match a supported format.'), not a ConfigError naming the option."""
    from statekit.blobs import BlobStore

    url = _s3_variant(s3_url.replace("&region=us-east-1", ""), query=f"&region={region}")
    with pytest.raises(ConfigError, match=r"option region=.* is not a region name"):
        BlobStore(url)


def test_a_region_name_works_on_moto(s3_url: str) -> None:
    from statekit.blobs import BlobStore

    store = BlobStore(_s3_variant(s3_url.replace("&region=us-east-1", ""), query="&region=eu-west-1"))
    assert store.put(io.BytesIO(b"x"), filename="a.txt").key


# -- a raw '&' in a password given as an option --------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://h?password=pa55&w0rd",  # 'w0rd' alone: a malformed query
        "redis://h?db=1&password=pa55&w0rd=x",  # 'w0rd': an unknown option
        "redis+sentinel://h/svc?sentinel_password=pa55&w0rd=x&db=1",
        "redis://h?username=u&password=pa55&w0rd",
    ],
)
def test_a_raw_ampersand_in_a_password_option_is_never_echoed(url: str) -> None:
    """The query is split at every '&': the password's tail became a pair of its own,
    quoted by the error ('malformed query string ...&w0rd', 'unknown option 'w0rd'')."""
    with pytest.raises(ConfigError) as e:
        parse_url(url)
    text = str(e.value)
    assert "pa55" not in text and "w0rd" not in text
    assert "%26" in text


def test_the_ampersand_percent_encoded_works_on_a_real_server(redis_url: str) -> None:
    admin = create_client(redis_url)
    admin.execute_command("ACL", "SETUSER", "amp", "reset", "on", ">pa55&w0rd", "~*", "+@all")
    try:
        client = create_client(f"{redis_url}?username=amp&password=pa55%26w0rd")
        client.set("k", b"v")
        assert client.get("k") == b"v"
        client.close()
    finally:
        admin.execute_command("ACL", "DELUSER", "amp")
        admin.close()


def test_options_after_a_password_keep_their_own_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown option 'bogus' for redis:// URLs"):
        parse_url("redis://h?bogus=1&password=pw")
    with pytest.raises(ConfigError, match=r"option db='x' is not a whole number"):
        parse_url("redis://h?password=pw&db=x")


# -- rediss:// as providers hand it out (not a defect: pinned) ---------------------------


def test_rediss_with_ssl_cert_reqs_none_works_and_the_default_verifies(
    redis_server: object, tmp_path: Path
) -> None:
    """A provider's self-signed endpoint with ?ssl_cert_reqs=none works, sync and asyncio;
    without it (and without the CA) the certificate is verified and refused."""
    import asyncio

    from test_redis_helpers import tls_url

    from statekit.errors import BackendUnavailable
    from statekit.redis.aio import create_async_client

    with tls_url(redis_server, tmp_path) as url:  # type: ignore[arg-type]
        base = url.partition("?")[0].replace("127.0.0.1", "localhost")  # no name in the certificate
        client = create_client(f"{base}?ssl_cert_reqs=none")
        client.set("k", b"v")
        assert client.get("k") == b"v"
        client.close()

        async def get() -> bytes:
            aclient = create_async_client(f"{base}?ssl_cert_reqs=none")
            try:
                return await aclient.get("k")  # type: ignore[no-any-return]
            finally:
                await aclient.aclose()

        assert asyncio.run(get()) == b"v"
        with pytest.raises(BackendUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            Cache(base).get("k")


# -- a host no resolver can find -------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1 ", "my host", "h\tx", "a\nb", "h<x>", "h\\x", "h|x"])
def test_a_host_with_a_space_or_a_control_character_is_a_config_error(
    redis_server: object, host: str
) -> None:
    """A URL wrapped or pasted with a space inside ('redis://127.0.0.1 :6379') made a
    Cache whose every call failed (BackendUnavailable: 'Name or service not known')."""
    port = redis_server.port  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"is not a host name") as e:
        Cache(f"redis://:hunter2@{host}:{port}/0")
    assert "hunter2" not in str(e.value)
    with pytest.raises(ConfigError, match=r"is not a host name"):
        parse_url(f"redis+cluster://127.0.0.1:7000,{host}:7001")
    with pytest.raises(ConfigError, match=r"endpoint_url=.* must be an http\(s\):// URL with a host"):
        parse_url(f"s3://bucket?endpoint_url=http://{host}:9000")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "redis_1", "[::1]", "Redis-Primary.example.COM"])
def test_host_names_resolvers_take_are_accepted(host: str) -> None:
    assert parse_url(f"redis://{host}:6379/0").hosts[0][1] == 6379


# -- sizes --------------------------------------------------------------------------------


def test_a_size_too_large_for_a_float_is_exact_not_an_overflow() -> None:
    """int(float('9' * 400)) raised OverflowError ('cannot convert float infinity to
    integer') from parse_size, for STATEKIT_BLOBS_MAX_SIZE or ?part_size= alike, and
    a 17-digit count lost its last digit to the float."""
    from statekit.config import parse_size

    assert parse_size("9" * 400) == int("9" * 400)
    assert parse_size("9007199254740993") == 9007199254740993
    assert parse_size("1.5KiB") == 1536 and parse_size("10 MB") == 10_000_000
    assert parse_url("s3://bucket?part_size=" + "9" * 400).options["part_size"] == int("9" * 400)
    for bad in ("1e3", "-1", "10 M B", "nan", "inf"):
        with pytest.raises(ConfigError, match="is not a size"):
            parse_size(bad)


# --- boolean settings: one parser for statekit and the three adapters -------------


@pytest.mark.parametrize("raw, expected", [
    (True, True), (False, False), (None, False), (1, True), (0, False),
    ("1", True), (" TRUE ", True), ("Yes", True), ("on", True),
    ("0", False), ("false", False), ("NO", False), ("off\n", False),
])
def test_a_boolean_setting_reads_the_usual_spellings(raw: object, expected: bool) -> None:
    from statekit.config import flag

    assert flag(raw, "STATEKIT_X") is expected


@pytest.mark.parametrize("raw", ["maybe", "ture", "", "2", 2, "enabled"])
def test_a_boolean_setting_that_is_neither_is_an_error_naming_it(raw: object) -> None:
    """A typo (``STATEKIT_SESSION_COOKIE_SECURE=ture``) read as false switched a
    security option off in silence: the adapters read any other text as false."""
    from statekit.config import flag

    with pytest.raises(ConfigError, match=r"STATEKIT_SESSION_COOKIE_SECURE=.* must be true or false"):
        flag(raw, "STATEKIT_SESSION_COOKIE_SECURE")


def test_an_adapters_feature_switch_that_is_neither_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """``STATEKIT_CACHE_ENABLED=maybe`` switched the cache off (Flask, Starlette): now
    the app refuses to start, naming the setting."""
    from flask import Flask
    from starlette.applications import Starlette

    from flask_statekit import StateKit as FlaskStateKit
    from starlette_statekit import StateKit as StarletteStateKit

    monkeypatch.setenv("STATEKIT_CACHE_ENABLED", "maybe")
    app = Flask(__name__)
    app.config.update(SECRET_KEY="k")
    with pytest.raises(ConfigError, match="STATEKIT_CACHE_ENABLED='maybe' must be true or false"):
        FlaskStateKit(app)
    with pytest.raises(ConfigError, match="STATEKIT_CACHE_ENABLED='maybe' must be true or false"):
        StarletteStateKit(Starlette(), secret_key="k")


@pytest.mark.parametrize("raw, expected", [(5, 5.0), ("0.5", 0.5), (" 10 ", 10.0), (0, 0.0)])
def test_a_numeric_setting_reads_numbers(raw: object, expected: float) -> None:
    from statekit.config import number

    assert number(raw, "STATEKIT_RETRY_AFTER") == expected


@pytest.mark.parametrize("raw", ["nan", "inf", "-1", -0.5, float("inf"), "abc", None, ""])
def test_a_numeric_setting_that_is_not_finite_or_is_negative_is_an_error_naming_it(raw: object) -> None:
    from statekit.config import number

    with pytest.raises(ConfigError, match="STATEKIT_RETRY_AFTER="):
        number(raw, "STATEKIT_RETRY_AFTER")


@pytest.mark.parametrize("name, raw", [("STATEKIT_RETRY_AFTER", "inf"), ("STATEKIT_READY_BUDGET", "nan")])
def test_the_adapters_lifecycle_numbers_are_checked_at_start(monkeypatch: pytest.MonkeyPatch, name: str,
                                                             raw: str) -> None:
    """``STATEKIT_RETRY_AFTER=inf`` raised ``OverflowError`` from ``int()`` in Flask and
    Starlette (a 500 instead of a named setting); ``nan`` budgets got through Starlette."""
    from flask import Flask
    from starlette.applications import Starlette

    from flask_statekit import StateKit as FlaskStateKit
    from starlette_statekit import StateKit as StarletteStateKit

    monkeypatch.setenv(name, raw)
    for feature in ("CACHE", "SESSIONS", "BROADCAST", "BLOBS"):
        monkeypatch.setenv(f"STATEKIT_{feature}_ENABLED", "off")
    app = Flask(__name__)
    with pytest.raises(ConfigError, match=f"{name}='{raw}' must be a finite number"):
        FlaskStateKit(app)
    with pytest.raises(ConfigError, match=f"{name}='{raw}' must be a finite number"):
        StarletteStateKit(Starlette())


@pytest.mark.parametrize("name, raw, message", [
    ("STATEKIT_SESSION_COOKIE_SECURE", "ture", "must be true or false"),
    ("STATEKIT_SESSION_IDLE_TIMEOUT", "abc", "is not a number"),
    ("STATEKIT_SESSION_RETRY_AFTER", "inf", "must be a finite number"),
])
def test_flask_session_settings_are_checked_at_start(name: str, raw: str, message: str) -> None:
    """Flask's session settings go through the same parsers: a typo in the cookie's
    Secure flag read as off before, an infinite Retry-After raised ``OverflowError``."""
    from flask import Flask

    from flask_statekit import StateKit

    app = Flask(__name__)
    app.config.update(SECRET_KEY="k", STATEKIT_SESSION_URL="memory://flask-settings",
                      STATEKIT_CACHE_ENABLED=False, STATEKIT_BROADCAST_ENABLED=False,
                      STATEKIT_BLOBS_ENABLED=False, **{name: raw})
    with pytest.raises(ConfigError, match=f"{name}='{raw}' {message}"):
        StateKit(app)


def test_an_empty_boolean_setting_is_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """``STATEKIT_CACHE_ENABLED=`` (an env file's empty line, compose's ``${VAR}`` of an
    unset variable) means "not set": the default, not an error and not "off"."""
    from flask import Flask
    from starlette.applications import Starlette

    from flask_statekit import StateKit as FlaskStateKit
    from flask_statekit import get_state
    from starlette_statekit import StateKit as StarletteStateKit
    from statekit.config import flag

    assert flag(" ", "X", default=True) is True and flag("", "X", default=False) is False
    with pytest.raises(ConfigError, match="X='' must be true or false"):
        flag("", "X")  # no default given: an error
    for feature in ("CACHE", "SESSIONS", "BROADCAST", "BLOBS"):
        monkeypatch.setenv(f"STATEKIT_{feature}_ENABLED", "")
    monkeypatch.setenv("STATEKIT_REDIS_URL", "memory://empty-flags")
    monkeypatch.setenv("STATEKIT_BLOBS_URL", "memory://empty-flags")
    app = Flask(__name__)
    app.config.update(SECRET_KEY="k")
    FlaskStateKit(app)
    assert {"cache", "sessions", "broadcast", "blobs"} <= set(get_state(app).features)
    monkeypatch.setenv("STATEKIT_SECRET_KEYS", "k")
    starlette_app = Starlette()
    StarletteStateKit(starlette_app)
    assert {"cache", "sessions", "broadcast", "blobs"} <= set(starlette_app.state.statekit.features)
